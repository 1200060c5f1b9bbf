"""Inference backends (onnxruntime, TensorRT), preprocessing, engine cache and the golden self-test."""
