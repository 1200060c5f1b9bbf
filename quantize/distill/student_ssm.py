"""The student as trained: CNN backbone + the teacher's semantic head, prototypes and prior.

Prototypes (T_A', T_E') and the DPM mapping are taken from the teacher and
frozen: they are constants on the device anyway, and keeping them fixed ties
the student's feature space to the teacher's text-anchored one. The feature
width therefore equals the teacher's D. The linear heads start from the
teacher's and are fine-tuned.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from quantize.ssm.head import HeadOutput, SemanticHead
from quantize.ssm.model import SSMTeacher
from quantize.student.model import StudentBackbone, StudentConfig


def student_input(images: torch.Tensor, size: int) -> torch.Tensor:
    """Teacher-size crops (N, C, S, S) -> the student's input size.

    The student may see a smaller crop than the teacher (fewer MACs on the device, where the
    aligner warps straight to the student's size). The training data stays at the teacher's size
    and is resized here with anti-aliasing, as the generated faces were rendered.
    """
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


class StudentSSM(nn.Module):
    def __init__(self, teacher: SSMTeacher, config: StudentConfig) -> None:
        super().__init__()
        if config.feature_dim != teacher.cfg.dim:
            raise ValueError(f"student feature_dim {config.feature_dim} must equal the teacher's D {teacher.cfg.dim}")
        self.backbone = StudentBackbone(config)
        self.head: SemanticHead = copy.deepcopy(teacher.head)
        with torch.no_grad():
            t_au, t_fe, mapping = teacher.prototypes()
        self.register_buffer("t_au", t_au.detach().clone())
        self.register_buffer("t_fe", t_fe.detach().clone())
        self.register_buffer("mapping", mapping.detach().clone())
        dim = config.feature_dim
        # Projections used only by the feature-distillation loss (dropped at export).
        self.proj_f = nn.Linear(dim, dim)
        self.proj_g = nn.Linear(dim, dim)
        for proj in (self.proj_f, self.proj_g):
            nn.init.eye_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, HeadOutput]:
        f, g = self.backbone(student_input(images, self.backbone.config.crop_size))
        return f, g, self.head(f, g, self.t_au, self.t_fe, self.mapping)

    @torch.no_grad()
    def export_head(self, au_threshold: np.ndarray) -> dict[str, np.ndarray]:
        params = self.head.export_params(self.t_au, self.t_fe, self.mapping)
        params["au_threshold"] = np.asarray(au_threshold, dtype=np.float32)
        return params
