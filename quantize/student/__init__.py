"""The INT8 student: a small CNN built for TensorRT explicit quantization."""
