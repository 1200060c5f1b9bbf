"""The semantic head on the device: parameters, NumPy reference, smoothing, backend choice.

docs/head.md is the specification; edge/kernels holds the fused CUDA version.
Never imports torch (the device runtime must not).
"""

from edge.head.params import HeadParams, HeadParamsError, head_params_from_arrays, load_head_params
from edge.head.reference import HeadLogits, head_forward
from edge.head.runner import HeadBatch, HeadSelection, NumpyHead, select_head
from edge.head.smoothing import SlotsExhaustedError, SmoothingSpec, TrackSlots, TrackSmoother

__all__ = [
    "HeadBatch",
    "HeadLogits",
    "HeadParams",
    "HeadParamsError",
    "HeadSelection",
    "NumpyHead",
    "SlotsExhaustedError",
    "SmoothingSpec",
    "TrackSlots",
    "TrackSmoother",
    "head_forward",
    "head_params_from_arrays",
    "load_head_params",
    "select_head",
]
