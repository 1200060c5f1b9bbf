"""The fused CUDA head kernel (ssm_head.cu), its host-side layout, launchers and offline build.

Importing this package needs neither CUDA nor a GPU; the launchers import
cuda-python only when constructed (edge/runtime/cuda_binding.py).
"""
