"""Two-phase distillation: FP32 steps, then fold BN + calibrate + QAT steps. Resumable.

Checkpoints record the phase; resuming in the QAT phase rebuilds the folded
student before loading weights, so a resumed run continues the same graph.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from quantize.data.types import DataError
from quantize.distill.losses import (
    DistillWeights,
    feature_loss,
    hard_loss,
    kd_au_loss,
    kd_fe_loss,
    prior_consistency,
)
from quantize.distill.student_ssm import StudentSSM, student_input
from quantize.metrics import AUReport, FEReport, au_report, calibrate_thresholds, fe_report
from quantize.qat.calibrate import calibrate
from quantize.qat.fold import fold_batchnorm
from quantize.ssm.model import SSMTeacher
from quantize.student.model import StudentConfig
from quantize.train import checkpoint as ck
from quantize.train.sampling import augment_generator, batch_indices
from quantize.train.tensors import FaceArrays, make_batch

CHECKPOINT = "distill.pt"


class DistillSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    fp32_steps: int = Field(default=1200, ge=0)
    qat_steps: int = Field(default=300, ge=0)
    batch: int = Field(default=32, ge=2)
    lr: float = Field(default=1e-3, gt=0)  # peak FP32 learning rate: linear warm-up, then cosine decay
    warmup: int = Field(default=100, ge=0)
    qat_lr: float = Field(default=2e-4, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    calibration_batches: int = Field(default=8, ge=1)
    ckpt_every: int = Field(default=100, ge=1)
    seed: int = 0
    # The student's input crop; None: the teacher's (112). A stride-2 stem, then three stages at 1/4, 1/8
    # and 1/16 of it (28, 14, 7): most of the compute sits in 3x3 convs with 48-128 channels, where INT8
    # kernels beat float (docs/quantization.md). An 80 px crop halves the MACs (docs/performance.md).
    crop_size: int | None = Field(default=None, ge=32)
    stem_width: int | None = Field(default=None, ge=1)  # None: widths[0]
    widths: tuple[int, ...] = (48, 96, 128)
    blocks: tuple[int, ...] = (3, 2, 1)
    # Share of each batch drawn from the real London photos of training people (the rest: generated faces).
    photo_fraction: float = Field(default=0.25, ge=0, lt=1)
    geometric_jitter: bool = True  # small random similarity warps (detector alignment noise on real photos)
    # The teacher reads each face at its true aspect while the student sees it squeezed or stretched (the
    # camera augmentation's aspect draw): the student learns the aspect-free answer, not the teacher's own
    # aspect sensitivity (docs/quantization.md). Real-face (grey) caches only.
    teacher_true_aspect: bool = False
    # Share of the expression KD target taken from the peer teacher (the FER2013 mini-Xception's probabilities,
    # `quantize.data.peer_targets`) on the faces that have them; the SSM teacher keeps the rest and all of the AU,
    # feature and prior targets. 0: the SSM teacher alone.
    peer_share: float = Field(default=0.0, ge=0, le=1)
    # Weight of the validation people's real photos (vs generated validation faces) when fitting the
    # expression logit offsets on the validation split (0 disables the offsets; None: every labelled
    # validation face weighs the same, for real-face data where photos are the bulk).
    fe_bias_photo_weight: float | None = Field(default=0.5, ge=0, le=1)
    # Each expression class weighs the same in that fit (within photos and within the rest), so the offsets
    # serve macro recall (UAR) rather than the majority classes of FER2013.
    fe_bias_balanced: bool = False
    progress: bool = True
    threads: int | None = Field(default=None, ge=1)  # PyTorch threads (None: its default); see TrainSettings


@dataclass
class Evaluation:
    au: AUReport | None
    fe: FEReport | None
    thresholds: np.ndarray

    def values(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.au is not None:
            out.update(macro_au_f1=self.au.macro_f1, au_auc=self.au.macro_auc)
        if self.fe is not None:
            out.update(fe_accuracy=self.fe.accuracy, uar=self.fe.uar)
        return out


def student_config(teacher: SSMTeacher, s: DistillSettings) -> StudentConfig:
    return StudentConfig(crop_size=s.crop_size or teacher.cfg.image_size, in_channels=teacher.cfg.in_channels,
                         widths=s.widths, blocks=s.blocks, feature_dim=teacher.cfg.dim, stem_width=s.stem_width)


@torch.no_grad()
def probabilities(model: torch.nn.Module, data: FaceArrays, batch: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(fe_prob N x E, au_prob N x A) for a teacher or a student on single images."""
    model.eval()
    fe, au = [], []
    for start in range(0, len(data), batch):
        images = make_batch(data, torch.arange(start, min(start + batch, len(data))), gen=None)["image"]
        if isinstance(model, SSMTeacher):
            out = model.predict(images)
            fe.append(out.fe_logits.softmax(-1).numpy())
            au.append(out.au_prob[:, 0].numpy())
        else:
            head = model(images)[2]
            fe.append(head.fe_prob.numpy())
            au.append(head.au_prob.numpy())
    return np.concatenate(fe), np.concatenate(au)


def evaluate(model: torch.nn.Module, val: FaceArrays, test: FaceArrays, labels) -> Evaluation:
    """Thresholds calibrated on `val`, metrics reported on `test` (never tuned on it)."""
    _, val_au = probabilities(model, val)
    thresholds = calibrate_thresholds(val_au, val.au, val.au_mask)
    fe_prob, au_prob = probabilities(model, test)
    au = au_report(au_prob, test.au, test.au_mask, thresholds, labels.au_keys) if test.au_mask.any() else None
    fe = fe_report(fe_prob, test.fe, list(labels.expressions)) if (test.fe >= 0).any() else None
    return Evaluation(au, fe, thresholds)


PHOTO_DATASET = "london_photo"


def batch_rows(train: FaceArrays, settings: DistillSettings, step: int) -> torch.Tensor:
    """Rows of batch `step`: a fixed share of real photos (own epoch stream), the rest generated faces."""
    photos = np.flatnonzero(train.dataset == PHOTO_DATASET)
    others = np.flatnonzero(train.dataset != PHOTO_DATASET)
    n_photo = min(round(settings.batch * settings.photo_fraction), len(photos))
    if n_photo == 0 or len(others) < settings.batch - n_photo:
        return batch_indices(len(train), settings.batch, step, settings.seed, 1)
    generated = others[batch_indices(len(others), settings.batch - n_photo, step, settings.seed, 1).numpy()]
    real = photos[batch_indices(len(photos), n_photo, step, settings.seed, 2).numpy()]
    return torch.from_numpy(np.concatenate([generated, real]))


def offset_weights(target: np.ndarray, is_photo: np.ndarray, photo_weight: float | None,
                   balanced: bool) -> np.ndarray:
    """Row weights summing to 1: real photos carry `photo_weight` of the total and the rest the remainder (None,
    or only one kind present: one group); with `balanced`, each class present in a group an equal share of it."""
    groups = [(is_photo, photo_weight), (~is_photo, 1 - photo_weight)] if photo_weight is not None else []
    if photo_weight is None or not is_photo.any() or is_photo.all():
        groups = [(np.ones(len(target), bool), 1.0)]
    weight = np.zeros(len(target))
    for rows, share in groups:
        parts = [rows & (target == c) for c in np.unique(target[rows])] if balanced else [rows]
        for part in parts:
            weight[part] = share / len(parts) / part.sum()
    return weight


def fit_fe_offsets(fe_prob: np.ndarray, data: FaceArrays, photo_weight: float | None, balanced: bool = False,
                   l2: float = 1e-2) -> np.ndarray:
    """Per-expression logit offsets that minimise weighted cross-entropy on labelled (validation) rows.

    Real photos carry `photo_weight` of the total weight and generated faces the rest, so a
    handful of real photos counts without being the only thing fitted (None: all rows weigh the same);
    `balanced` weighs classes equally within each group. Offsets are centred (softmax does not see a
    common shift) and lightly L2-regularised; 7 numbers, a convex fit.
    """
    labelled = data.fe >= 0
    n_classes = fe_prob.shape[1]
    if (photo_weight is not None and photo_weight <= 0) or not labelled.any():
        return np.zeros(n_classes, np.float32)
    is_photo = (data.dataset == PHOTO_DATASET)[labelled]
    weight = offset_weights(data.fe[labelled], is_photo, photo_weight, balanced)
    logp = torch.from_numpy(np.log(np.clip(fe_prob[labelled], 1e-8, 1.0))).double()
    target = torch.from_numpy(data.fe[labelled])
    w = torch.from_numpy(weight).double()
    offset = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([offset], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        nll = torch.nn.functional.cross_entropy(logp + offset, target, reduction="none")
        loss = (w * nll).sum() + l2 * (offset**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    out = offset.detach().numpy()
    return (out - out.mean()).astype(np.float32)


def apply_fe_offsets(model: StudentSSM, offsets: np.ndarray) -> None:
    """Add logit offsets to the expression linear head's bias (a constant the device head already has)."""
    with torch.no_grad():
        model.head.fe_linear.bias.add_(torch.as_tensor(offsets, dtype=model.head.fe_linear.bias.dtype))


def calibrate_student(model: StudentSSM, val: FaceArrays, settings: DistillSettings) -> np.ndarray:
    """Fit expression logit offsets on the validation split only and apply them to `model`; returns them."""
    fe_prob, _ = probabilities(model, val)
    offsets = fit_fe_offsets(fe_prob, val, settings.fe_bias_photo_weight, settings.fe_bias_balanced)
    apply_fe_offsets(model, offsets)
    return offsets


def fp32_lr(settings: DistillSettings, step: int) -> float:
    """FP32-phase learning rate at `step` (a pure function of the step, so resuming needs no state)."""
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    span = max(1, settings.fp32_steps - settings.warmup)
    progress = min(1.0, (step - settings.warmup) / span)
    return settings.lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * progress)))


def _optimizer(student: StudentSSM, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    params = [p for p in student.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _step_loss(student: StudentSSM, teacher: SSMTeacher, batch: dict[str, torch.Tensor],
               w: DistillWeights, peer_share: float = 0.0) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        t_out = teacher.predict(batch.get("true_aspect_image", batch["image"]))
    f, g, out = student(batch["image"])
    terms = {
        "hard": hard_loss(out, batch["au"], batch["au_mask"], batch.get("fe_soft", batch["fe"])),
        "kd_fe": kd_fe_loss(out.fe_logits, t_out.fe_logits, w.temperature, batch.get("fe_peer"), peer_share),
        "kd_au": kd_au_loss(out.au_prob, t_out.au_prob[:, 0]),
        "feature": feature_loss(student.proj_f(f), t_out.f) + feature_loss(student.proj_g(g), t_out.g[:, 0]),
        "prior": prior_consistency(out, student.mapping),
    }
    terms["total"] = sum(getattr(w, k) * v for k, v in terms.items())
    return terms


def distill(teacher: SSMTeacher, train: FaceArrays, settings: DistillSettings, out: Path,
            weights: DistillWeights | None = None, resume: bool = True) -> StudentSSM:
    """Run (or resume) both phases; returns the student in fake-quant mode when qat_steps > 0."""
    if settings.peer_share > 0 and train.fe_peer is None:
        raise DataError(f"peer_share {settings.peer_share} needs peer targets beside the training faces "
                        "(affect-quantize peer-targets)")
    weights = weights if weights is not None else DistillWeights()
    out.mkdir(parents=True, exist_ok=True)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    ck.seed_everything(settings.seed)
    student = StudentSSM(teacher, student_config(teacher, settings))
    phase, step = "fp32", 0
    optimizer = _optimizer(student, settings.lr, settings.weight_decay)
    path = out / CHECKPOINT
    if resume and path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=False)  # our own file: numpy RNG state
        if not {"phase", "step", "model", "optimizer", "rng"} <= set(state):
            raise ValueError(f"{path} is not a distillation checkpoint")
        phase, step = state["phase"], state["step"]
        if phase == "qat":
            fold_batchnorm(student.backbone)
            optimizer = _optimizer(student, settings.qat_lr, settings.weight_decay)
        student.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        ck.set_rng_state(state["rng"])
        if phase == "qat":
            from quantize.qat.layers import set_mode

            set_mode(student.backbone, "quant")

    def save() -> None:
        ck.save_atomic({"phase": phase, "step": step, "model": student.state_dict(),
                        "optimizer": optimizer.state_dict(), "rng": ck.rng_state(),
                        "settings": settings.model_dump(mode="json")}, path)

    total = settings.fp32_steps + settings.qat_steps
    bar = tqdm(total=total, initial=step, desc="distill", disable=not settings.progress, unit="step")
    log = (out / "distill_log.jsonl").open("a")
    started = time.monotonic()
    try:
        while step < total:
            if phase == "fp32" and step >= settings.fp32_steps:
                phase = "qat"
                student.eval()
                fold_batchnorm(student.backbone)
                size = student.backbone.config.crop_size
                images = [student_input(make_batch(train, batch_indices(len(train), settings.batch, i, settings.seed,
                                                                        9), None)["image"], size)
                          for i in range(settings.calibration_batches)]
                calibrate(student.backbone, images)
                optimizer = _optimizer(student, settings.qat_lr, settings.weight_decay)
            student.train()
            if phase == "fp32":
                for group in optimizer.param_groups:
                    group["lr"] = fp32_lr(settings, step)
            idx = batch_rows(train, settings, step)
            batch = make_batch(train, idx, augment_generator(settings.seed, 1, step, 0),
                               geometric=settings.geometric_jitter, true_aspect=settings.teacher_true_aspect)
            terms = _step_loss(student, teacher, batch, weights, settings.peer_share)
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            optimizer.step()
            step += 1
            bar.update(1)
            bar.set_postfix(phase=phase, loss=f"{terms['total'].item():.3f}")
            log.write(json.dumps({"step": step, "phase": phase,
                                  **{k: round(v.item(), 5) for k, v in terms.items()}}) + "\n")
            if step % settings.ckpt_every == 0 or step == total:
                save()
    finally:
        bar.close()
        log.close()
    print(f"distill: {step} steps in {time.monotonic() - started:.0f} s, checkpoint {path}")
    return student


def summary(rows: dict[str, Evaluation]) -> tuple[str, list[dict[str, Any]]]:
    """A comparison table (text) and manifest metric entries."""
    keys = ["macro_au_f1", "au_auc", "fe_accuracy", "uar"]
    lines = [f"{'model':<16}" + "".join(f"{k:>13}" for k in keys)]
    metrics = []
    for name, ev in rows.items():
        values = ev.values()
        lines.append(f"{name:<16}" + "".join(f"{values.get(k, float('nan')):>13.4f}" for k in keys))
        metrics.append({"model": name, "values": values})
    return "\n".join(lines), metrics
