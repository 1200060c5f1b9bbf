"""Post-training calibration of activation ranges, the starting point of QAT."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from quantize.qat.layers import quantizers, set_mode


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Record per-tensor activation amax over `batches`, then switch the model to fake quantization."""
    for _, quant in quantizers(model):
        quant.amax.zero_()
    was_training = model.training
    model.eval()
    set_mode(model, "calibrate")
    seen = 0
    for images in batches:
        model(images)
        seen += len(images)
    if not seen:
        raise ValueError("calibration needs at least one batch")
    unseen = [name for name, q in quantizers(model) if q.amax.item() <= 0]
    if unseen:
        raise ValueError(f"calibration left quantizers with zero range: {unseen}")
    set_mode(model, "quant")
    model.train(was_training)
    return seen
