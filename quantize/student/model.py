"""Student backbone: conv+BN+ReLU blocks with residual adds, global pooling, two feature heads.

Every op is one TensorRT fuses and quantizes well (no SiLU/GELU, no depthwise
with odd strides, no LayerNorm), and every conv/linear/add is a `Quant*` layer
so one switch turns the same module into its fake-quantized QAT twin.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from quantize.qat.layers import ActQuant, QuantAdd, QuantConv2d, QuantLinear


@dataclass(frozen=True)
class StudentConfig:
    crop_size: int = 112
    in_channels: int = 3
    widths: tuple[int, ...] = (16, 32, 64, 96)
    blocks: tuple[int, ...] = (1, 1, 2, 1)
    feature_dim: int = 64
    stem_width: int | None = None  # channels of the stride-2 stem conv (None: widths[0])


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1, relu: bool = True, quant_input: bool = True) -> None:
        conv = QuantConv2d(cin, cout, 3, stride, 1, bias=False, quant_input=quant_input)
        layers: list[nn.Module] = [conv, nn.BatchNorm2d(cout)]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class BasicBlock(nn.Module):
    """Residual block whose input is quantized once and shared by the body and the skip path."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.input_quant = ActQuant()
        self.body = nn.Sequential(
            ConvBNReLU(cin, cout, stride, quant_input=False), ConvBNReLU(cout, cout, relu=False)
        )
        downsample = stride != 1 or cin != cout
        self.skip = (
            nn.Sequential(QuantConv2d(cin, cout, 1, stride, 0, bias=False, quant_input=False), nn.BatchNorm2d(cout))
            if downsample
            else nn.Identity()
        )
        self.add = QuantAdd(quant_b=downsample)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_quant(x)
        return self.relu(self.add(self.body(x), self.skip(x)))


class StudentBackbone(nn.Module):
    """Image (B, C, H, W) normalised -> features f (expression) and g (AU), each (B, D)."""

    def __init__(self, config: StudentConfig = StudentConfig()) -> None:
        super().__init__()
        self.config = config
        stem = config.stem_width or config.widths[0]
        layers: list[nn.Module] = [ConvBNReLU(config.in_channels, stem, stride=2)]
        cin = stem
        for width, count in zip(config.widths, config.blocks, strict=True):
            for i in range(count):
                layers.append(BasicBlock(cin, width, stride=2 if i == 0 else 1))
                cin = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.pool_quant = ActQuant()  # one Q/DQ shared by both feature heads
        self.f_head = QuantLinear(cin, config.feature_dim, quant_input=False)
        self.g_head = QuantLinear(cin, config.feature_dim, quant_input=False)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.pool_quant(torch.flatten(self.pool(self.features(image)), 1))
        return self.f_head(pooled), self.g_head(pooled)
