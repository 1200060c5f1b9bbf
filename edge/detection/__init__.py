"""Face detection with five landmarks, on the CPU through onnxruntime (no torch, no downloads)."""

from edge.detection.blazeface import BlazeFaceDetector, default_model_path
from edge.detection.faces import Detection, FaceGate, GateStats

__all__ = ["BlazeFaceDetector", "Detection", "FaceGate", "GateStats", "default_model_path"]
