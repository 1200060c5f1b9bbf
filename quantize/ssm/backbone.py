"""Visual backbones: a small conv net for `tiny`, CLIP's ViT with MoE feed-forwards for `base`.

Both map a batch of aligned RGB crops (N x 3 x H x W, normalised) to one
feature per frame (N x D). The ViT keeps OpenAI CLIP's attribute names
(`conv1`, `class_embedding`, `transformer.resblocks.i.attn` ...), so a CLIP
image-tower state dict loads without renaming; the last `moe_blocks` blocks
replace the MLP with `MoEFeedForward`, whose shared expert reuses CLIP's
`c_fc`/`c_proj` weights (as in the SSM paper).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quantize.ssm.text import QuickGELU, Transformer


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ConvBackbone(nn.Module):
    """Plain stride-2 conv stages + global pooling; cheap enough to train on 2 CPU cores."""

    def __init__(self, dim: int, widths: tuple[int, ...] = (24, 48, 96, 128), in_channels: int = 3) -> None:
        super().__init__()
        layers, cin = [], in_channels
        for w in widths:
            layers += [_conv(cin, w, 2), _conv(w, w, 1)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.proj = nn.Linear(cin, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.features(x).mean(dim=(2, 3)))


class Expert(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        for lin in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class MoEFeedForward(nn.Module):
    """Always-on shared expert (CLIP's MLP) + top-k routed private experts, scaled by a learned alpha.

    Routing weights are the softmax over all experts with only the top k kept
    (not renormalised), and a little Gaussian noise on the router in training.
    """

    def __init__(self, width: int, n_experts: int = 4, hidden: int = 512, topk: int = 2, noise_std: float = 1e-2):
        super().__init__()
        self.shared_fc1 = nn.Linear(width, 4 * width)
        self.shared_act = QuickGELU()
        self.shared_fc2 = nn.Linear(4 * width, width)
        self.private_experts = nn.ModuleList(Expert(width, hidden) for _ in range(n_experts))
        self.gate = nn.Linear(width, n_experts)
        nn.init.xavier_uniform_(self.gate.weight, gain=0.1)
        nn.init.zeros_(self.gate.bias)
        self.alpha = nn.Parameter(torch.tensor(0.1))
        self.topk, self.noise_std = topk, noise_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.shared_fc2(self.shared_act(self.shared_fc1(x)))
        logits = self.gate(x)
        if self.training and self.noise_std > 0:
            logits = logits + torch.randn_like(logits) * self.noise_std
        weights = logits.softmax(dim=-1)
        top, idx = weights.topk(self.topk, dim=-1)
        sparse = torch.zeros_like(weights).scatter(-1, idx, top)
        # Dense evaluation of the few experts: simpler than dispatch and exact for small expert counts.
        routed = torch.stack([e(x) for e in self.private_experts], dim=-2)  # ... x K x width
        return shared + self.alpha * (sparse.unsqueeze(-1) * routed).sum(dim=-2)


class VisionTransformer(nn.Module):
    """CLIP ViT image tower; output = ln_post(CLS) @ proj."""

    def __init__(self, image_size: int = 224, patch: int = 16, width: int = 768, layers: int = 12,
                 heads: int = 12, out_dim: int = 512, moe_blocks: int = 6, n_experts: int = 4,
                 expert_hidden: int = 512) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch}")
        if not 0 <= moe_blocks <= layers:
            raise ValueError(f"moe_blocks must be in 0..{layers}, got {moe_blocks}")
        scale = width**-0.5
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((image_size // patch) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        mlps = [None] * (layers - moe_blocks) + [MoEFeedForward(width, n_experts, expert_hidden)
                                                 for _ in range(moe_blocks)]
        self.transformer = Transformer(width, layers, heads, mlps)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x).flatten(2).transpose(1, 2)  # N x P x W
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        x = self.transformer(self.ln_pre(x).permute(1, 0, 2)).permute(1, 0, 2)
        return self.ln_post(x[:, 0]) @ self.proj

    def load_clip_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load `visual.*` keys of an OpenAI-layout CLIP state dict; MoE blocks take `mlp.c_fc/c_proj` as shared."""
        own: dict[str, torch.Tensor] = {}
        moe_prefixes = {f"transformer.resblocks.{i}.mlp." for i, b in enumerate(self.transformer.resblocks)
                        if isinstance(b.mlp, MoEFeedForward)}
        for key, value in state.items():
            if not key.startswith("visual."):
                continue
            k = key[len("visual."):]
            for p in moe_prefixes:
                if k.startswith(p):
                    k = k.replace("mlp.c_fc.", "mlp.shared_fc1.").replace("mlp.c_proj.", "mlp.shared_fc2.")
            own[k] = value
        missing, unexpected = self.load_state_dict(own, strict=False)
        missing = [m for m in missing if ".private_experts." not in m and not m.endswith((".gate.weight",
                   ".gate.bias", ".alpha"))]
        if missing or unexpected:
            raise KeyError(f"CLIP image tower mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
