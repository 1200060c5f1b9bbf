"""Fold BatchNorm into the preceding convolution before QAT.

TensorRT folds BN itself, but fake quantization must see the weights that will
actually be quantized, so folding happens first (DESIGN.md toolchain facts).
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    std = torch.sqrt(bn.running_var + bn.eps)
    factor = bn.weight / std
    conv.weight.mul_(factor.reshape(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    new_bias = (bias - bn.running_mean) * factor + bn.bias
    conv.bias = nn.Parameter(new_bias)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every Conv2d directly followed by BatchNorm2d inside an nn.Sequential; returns the count."""
    folded = 0
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in pairwise(names):
            conv, bn = module._modules[first], module._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                fold_conv_bn(conv, bn)
                module._modules[second] = nn.Identity()
                folded += 1
    remaining = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if remaining:
        raise ValueError(f"BatchNorm layers not preceded by a conv cannot be folded: {remaining}")
    return folded
