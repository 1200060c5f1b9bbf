"""The fused CUDA head kernel (ssm_head.cu), its host-side layout, launchers and offline build.

Importing this package needs neither CUDA nor a GPU; the launchers import
pycuda / CuPy only when constructed.
"""
