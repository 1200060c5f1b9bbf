"""Quantization-aware distillation of the SSM teacher into the INT8 student."""
