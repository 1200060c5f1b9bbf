"""Workstation pipeline: SSM teacher, quantization-aware distillation, export to edge bundles."""

__version__ = "0.2.0"
