"""The training loop: heterogeneous AU + FE steps, DDP under torchrun, periodic validation and checkpoints.

Run it plain (one process) or with `torchrun --nproc_per_node N` (gloo on
CPU): every rank draws its own shard of each batch schedule; rank 0 validates,
logs and writes checkpoints. A run is a pure function of its seed and data,
and resuming from a checkpoint continues it bit for bit.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from quantize.data.torch_data import IMAGE_MEAN, IMAGE_STD
from quantize.ssm.config import SSMConfig
from quantize.ssm.model import SSMTeacher
from quantize.train import checkpoint as ck
from quantize.train.evaluate import predict, reports
from quantize.train.losses import TERMS, LossBalancer, task_losses
from quantize.train.sampling import augment_generator, batch_indices
from quantize.train.tensors import FaceArrays, make_batch

AU_STREAM, FE_STREAM = 1, 2


class TrainSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(default=1000, ge=1)
    batch_au: int = Field(default=32, ge=1)
    batch_fe: int = Field(default=32, ge=1)
    lr: float = Field(default=2e-3, gt=0)
    backbone_lr_scale: float = Field(default=1.0, gt=0, description="paper: 1e-6 / 1e-4 for CLIP")
    dpm_lr_scale: float = Field(default=10.0, gt=0, description="paper: 1e-2 / 1e-4")
    weight_decay: float = Field(default=1e-4, ge=0)
    warmup: int = Field(default=50, ge=0)
    grad_clip: float = Field(default=1.0, gt=0)
    ramp_steps: int | None = Field(default=None, description="prototype-loss ramp length; default: steps")
    val_every: int = Field(default=200, ge=1)
    ckpt_every: int = Field(default=200, ge=1)
    seed: int = 0
    augment: bool = True
    progress: bool = True
    # One batch of rows labelled for either task, each image computed once (real faces carry both labels);
    # off: separate AU and expression batches (datasets labelled for one task each, as in the SSM paper).
    single_stream: bool = False
    # Intra-op threads (None: all cores over the ranks). On a shared machine, fewer threads than cores keeps
    # OpenMP from spinning against other jobs, which costs far more than the thread it saves.
    threads: int | None = Field(default=None, ge=1)


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """gloo process group when launched by torchrun (WORLD_SIZE > 1), else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size())


def _mean_across(world: int):
    if world <= 1:
        return None

    def reduce(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t / world

    return reduce


def _optimizer(model: SSMTeacher, s: TrainSettings) -> torch.optim.Optimizer:
    groups: dict[str, list[torch.nn.Parameter]] = {"backbone": [], "dpm": [], "rest": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        groups["backbone" if name.startswith("backbone.") else "dpm" if name.startswith("dpm.") else "rest"].append(p)
    scale = {"backbone": s.backbone_lr_scale, "dpm": s.dpm_lr_scale, "rest": 1.0}
    return torch.optim.AdamW([{"params": v, "lr": s.lr * scale[k]} for k, v in groups.items() if v],
                             weight_decay=s.weight_decay)


def _schedule(s: TrainSettings):
    def factor(step: int) -> float:
        if step < s.warmup:
            return (step + 1) / s.warmup
        progress = (step - s.warmup) / max(1, s.steps - s.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _validate(model: SSMTeacher, val: FaceArrays) -> dict[str, Any]:
    au, fe = reports(predict(model, val), thresholds=torch.full((len(model.cfg.aus),), 0.5).numpy(), model=model)
    return {
        "val_au_f1@0.5": au.macro_f1 if au else None,
        "val_au_auc": au.macro_auc if au else None,
        "val_fe_acc": fe.accuracy if fe else None,
        "val_fe_uar": fe.uar if fe else None,
    }


@dataclass
class TrainResult:
    model: SSMTeacher
    step: int
    history: list[dict[str, Any]]
    seconds: float


def train(cfg: SSMConfig, s: TrainSettings, data: FaceArrays, out: Path, val: FaceArrays | None = None,
          resume: bool = True, model: SSMTeacher | None = None, meta: dict[str, Any] | None = None,
          until: int | None = None) -> TrainResult:
    """Train (or resume) a teacher in `out`; returns the unwrapped model on every rank.

    `meta` (e.g. the data recipe) is stored in the checkpoint for `teacher eval`; `until` stops (with a
    checkpoint) before `s.steps`, as an interrupted run would, without changing the schedule.
    """
    info = init_distributed()
    torch.set_num_threads(s.threads or max(1, (os.cpu_count() or 1) // info.world))
    au_data, fe_data = data.au_rows(), data.fe_rows()
    if len(au_data) == 0 or len(fe_data) == 0:
        raise ValueError(f"training needs AU- and FE-labelled rows; got {len(au_data)} AU, {len(fe_data)} FE")
    if s.single_stream:
        fe_data = au_data = data
    ck.seed_everything(s.seed)
    model = model if model is not None else SSMTeacher(cfg)
    balancer = LossBalancer(ramp_steps=s.ramp_steps or s.steps)
    opt = _optimizer(model, s)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(s))
    step, history = 0, []
    path = out / ck.CHECKPOINT
    if resume and path.is_file():
        state = ck.load(path)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        balancer.load_state_dict(state["balancer"])
        step, history = state["step"], state.get("history", [])
        rngs = state["rng"]
        if len(rngs) != info.world:
            raise ValueError(f"{path} was written by {len(rngs)} ranks; resume with the same world size")
        ck.set_rng_state(rngs[info.rank])
    net: torch.nn.Module = DistributedDataParallel(model) if info.world > 1 else model
    reduce = _mean_across(info.world)
    model.train()
    bar = tqdm(total=s.steps, initial=step, disable=not (s.progress and info.main), desc="teacher", unit="step")
    start = time.monotonic()

    def save() -> None:
        rngs = [None] * info.world
        if info.world > 1:
            dist.all_gather_object(rngs, ck.rng_state())
        else:
            rngs = [ck.rng_state()]
        if info.main:
            ck.save_atomic({
                "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "balancer": balancer.state_dict(), "step": step, "rng": rngs, "history": history,
                "model_config": cfg.model_dump(mode="json"), "train_settings": s.model_dump(mode="json"),
                "meta": meta or {},
                "input": {"mean": list(IMAGE_MEAN), "std": list(IMAGE_STD), "crop_size": cfg.image_size,
                          "colour": "RGB"},
            }, path)

    stop = s.steps if until is None else min(until, s.steps)
    while step < stop:
        ie = batch_indices(len(fe_data), s.batch_fe, step, s.seed, FE_STREAM, info.rank, info.world)
        gen_e = augment_generator(s.seed, FE_STREAM, step, info.rank) if s.augment else None
        be = make_batch(fe_data, ie, gen_e)
        if s.single_stream:
            ba = be
            fe_out, au_out = net(be["image"])
        else:
            ia = batch_indices(len(au_data), s.batch_au, step, s.seed, AU_STREAM, info.rank, info.world)
            gen_a = augment_generator(s.seed, AU_STREAM, step, info.rank) if s.augment else None
            ba = make_batch(au_data, ia, gen_a)
            fe_out, au_out = net(be["image"], ba["image"])
        losses = task_losses(fe_out, be.get("fe_soft", be["fe"]), au_out, ba["au"], ba["au_mask"])
        total = balancer(losses, step, reduce)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        opt.step()
        sched.step()
        step += 1
        bar.update(1)
        if info.main:
            bar.set_postfix({k: f"{losses[k].item():.3f}" for k in TERMS})
        if (step % s.val_every == 0 or step == s.steps) and val is not None:
            if info.main:
                entry = {"step": step, **{f"loss_{k}": losses[k].item() for k in TERMS}, **_validate(model, val)}
                history.append(entry)
                bar.write(json.dumps(entry))
            if info.world > 1:
                dist.barrier()
        if step % s.ckpt_every == 0 or step == stop:
            save()
    bar.close()
    return TrainResult(model, step, history, time.monotonic() - start)
