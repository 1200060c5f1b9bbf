"""Quantization-aware training in the TensorRT convention (docs/quantization.md)."""
