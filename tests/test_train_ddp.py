"""Two-process DistributedDataParallel training (gloo on CPU) through the CLI under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from quantize.train import checkpoint as ck
from quantize.train.recipe import save_npz
from tests.test_train_resume import random_faces

SETS = ["--set", "conv_widths=[8,16,16,32]", "--set", "dim=32", "--set", "temporal_heads=2",
        "--set", "temporal_dim_head=8", "--set", "temporal_mlp=32", "--set", "image_size=32"]


@pytest.mark.slow
def test_torchrun_two_ranks(tmp_path):
    data = tmp_path / "faces.npz"
    save_npz(data, {"train": random_faces(48, seed=0), "val": random_faces(16, seed=1),
                    "holdout": random_faces(16, seed=2)})
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "quantize.cli", "teacher", "train", "--config", "tiny", "--out", str(out), "--data-npz", str(data),
           "--steps", "3", "--batch", "4", "--val-every", "3", "--no-progress", *SETS]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = ck.load(out / ck.CHECKPOINT)
    assert state["step"] == 3
    assert len(state["rng"]) == 2  # one RNG state per rank
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["holdout"]["fe"]["n"] == int((random_faces(16, seed=2).fe >= 0).sum())
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    # The ranks' checkpoint cannot be resumed by a different world size.
    from quantize.ssm.config import SSMConfig
    from quantize.train.loop import TrainSettings, train
    from quantize.train.recipe import load_npz

    cfg = SSMConfig(**state["model_config"])
    with pytest.raises(ValueError, match="same world size"):
        train(cfg, TrainSettings(**{**state["train_settings"], "steps": 4}), load_npz(data, "train"), out)
