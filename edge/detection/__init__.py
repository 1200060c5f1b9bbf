"""Face detection with five landmarks, on the CPU through onnxruntime (no torch, no downloads)."""

from edge.detection.blazeface import FULL_RANGE, SHORT_RANGE, BlazeFaceDetector, BlazeFaceNet, default_model_path
from edge.detection.faces import Detection, FaceGate, GateStats
from edge.detection.retinaface import RETINAFACE, RetinaFaceNet
from edge.detection.scan import MultiScaleDetector

__all__ = ["FULL_RANGE", "RETINAFACE", "SHORT_RANGE", "BlazeFaceDetector", "BlazeFaceNet", "Detection", "FaceGate",
           "GateStats", "MultiScaleDetector", "RetinaFaceNet", "default_model_path"]
