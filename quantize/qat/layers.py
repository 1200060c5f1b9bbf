"""Fake-quantized layers in the TensorRT explicit-quantization convention.

Symmetric INT8, zero point 0, range -128..127; weights per output channel
(axis 0), activations per tensor. Hand-written on `torch.fake_quantize_*`
rather than `torch.ao.quantization` because the latter's observers do not
export to ONNX Q/DQ (DESIGN.md, toolchain facts). Each layer has three modes:
`float` (plain), `calibrate` (records activation amax, no quantization) and
`quant` (fake quantization in forward, straight-through gradients).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Mode = Literal["float", "calibrate", "quant"]
QMAX = 127.0


def weight_scale(weight: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric scale (axis 0)."""
    amax = weight.detach().abs().flatten(1).amax(dim=1).clamp(min=1e-8)
    return amax / QMAX


def fake_quant_weight(weight: torch.Tensor) -> torch.Tensor:
    scale = weight_scale(weight)
    zero = torch.zeros(scale.shape, dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -128, 127)


def fake_quant_act(x: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    scale = float(amax.clamp(min=1e-8).item()) / QMAX
    return torch.fake_quantize_per_tensor_affine(x, scale, 0, -128, 127)


class ActQuant(nn.Module):
    """Per-tensor activation quantizer with a calibrated amax (max over calibration batches)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("amax", torch.tensor(0.0))
        self.mode: Mode = "float"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "calibrate":
            self.amax = torch.maximum(self.amax, x.detach().abs().max())
            return x
        if self.mode == "quant":
            if self.amax.item() <= 0:
                raise RuntimeError("activation quantizer used before calibration (amax is 0)")
            return fake_quant_act(x, self.amax)
        return x


class WeightQuant(nn.Module):
    """Per-channel weight fake quantization, on while the model is in `quant` mode."""

    def __init__(self) -> None:
        super().__init__()
        self.enabled = False

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return fake_quant_weight(weight) if self.enabled else weight


class QuantConv2d(nn.Conv2d):
    """Conv with quantized weights; its input is quantized here unless the caller already did
    (`quant_input=False`), so each tensor gets exactly one Q/DQ pair in the exported graph."""

    def __init__(self, *args, quant_input: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.input_quant = ActQuant() if quant_input else nn.Identity()
        self.weight_quant = WeightQuant()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_quant(x), self.weight_quant(self.weight), self.bias)


class QuantLinear(nn.Linear):
    def __init__(self, *args, quant_input: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.input_quant = ActQuant() if quant_input else nn.Identity()
        self.weight_quant = WeightQuant()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quant(x), self.weight_quant(self.weight), self.bias)


class QuantAdd(nn.Module):
    """Residual add with both inputs read through Q/DQ, so TensorRT fuses it into the INT8 conv.

    `quant_b=False` when the second input is already a quantized tensor (an identity skip).
    """

    def __init__(self, quant_b: bool = True) -> None:
        super().__init__()
        self.a_quant = ActQuant()
        self.b_quant = ActQuant() if quant_b else nn.Identity()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.a_quant(a) + self.b_quant(b)


def set_mode(model: nn.Module, mode: Mode) -> None:
    for module in model.modules():
        if isinstance(module, ActQuant):
            module.mode = mode
        elif isinstance(module, WeightQuant):
            module.enabled = mode == "quant"


def quantizers(model: nn.Module) -> list[tuple[str, ActQuant]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, ActQuant)]
