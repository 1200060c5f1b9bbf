"""Checkpoints that resume exactly: weights, optimizer, scheduler, loss balancer, step and every RNG.

Written to a temporary file in the same directory and renamed, so a crash
mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge.fsutil import atomic_writer

CHECKPOINT = "checkpoint.pt"


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_atomic(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path, mode=0o644) as fh:  # checkpoints are ordinary files
        torch.save(obj, fh)


def load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    # Our own files hold numpy RNG state and plain dicts, so full unpickling is needed.
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("model", "model_config", "step"):
        if key not in ckpt:
            raise ValueError(f"{path} is not a teacher checkpoint (missing {key!r})")
    return ckpt
