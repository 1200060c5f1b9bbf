"""Training is repeatable from its seed and resumes bit for bit from a checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantize.ssm.config import ssm_config
from quantize.train import checkpoint as ck
from quantize.train.loop import TrainSettings, train
from quantize.train.losses import LossBalancer, masked_bce
from quantize.train.sampling import batch_indices
from quantize.train.tensors import FaceArrays

SMALL = dict(conv_widths=(8, 16, 16, 32), dim=32, temporal_heads=2, temporal_dim_head=8, temporal_mlp=32)


def random_faces(n: int = 40, size: int = 32, seed: int = 0) -> FaceArrays:
    """Random crops with mixed supervision: some rows AU-only (BP4D-like mask), some FE-only, some both."""
    rng = np.random.default_rng(seed)
    au_mask = np.ones((n, 17), bool)
    au_mask[: n // 3] = False  # FE-only rows
    au_mask[n // 3 : n // 2, 12:] = False  # an AU subset, as per-dataset masks
    fe = rng.integers(0, 7, n)
    fe[n // 2 : 3 * n // 4] = -1  # AU-only rows
    return FaceArrays(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                      (rng.random((n, 17)) < 0.3).astype(np.float32), au_mask, fe,
                      np.array([f"p{i}" for i in range(n)]), np.array(["synthetic"] * n))


def settings(**kw) -> TrainSettings:
    return TrainSettings(**{**dict(steps=6, batch_au=6, batch_fe=6, warmup=2, val_every=100, ckpt_every=100,
                                   progress=False, seed=3), **kw})


def test_resume_matches_straight_run(tmp_path):
    cfg, data, s = ssm_config("tiny", **SMALL), random_faces(), settings()
    straight = train(cfg, s, data, tmp_path / "a").model.state_dict()
    first = train(cfg, s, data, tmp_path / "b", until=3)
    assert first.step == 3 and ck.load(tmp_path / "b" / ck.CHECKPOINT)["step"] == 3
    resumed = train(cfg, s, data, tmp_path / "b").model.state_dict()
    assert resumed.keys() == straight.keys()
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    # A different seed gives different weights: the comparison above can fail.
    other = train(cfg, settings(seed=4), data, tmp_path / "c").model.state_dict()
    assert not torch.equal(other["head.au_linear.weight"], straight["head.au_linear.weight"])


def test_batches_are_disjoint_across_ranks_and_cover_an_epoch():
    a = [batch_indices(20, 5, s, seed=1, stream=1, rank=0, world=2) for s in range(2)]
    b = [batch_indices(20, 5, s, seed=1, stream=1, rank=1, world=2) for s in range(2)]
    rows = torch.cat(a + b).tolist()
    assert sorted(rows) == list(range(20))
    with pytest.raises(ValueError, match="cannot fill a batch"):
        batch_indices(6, 4, 0, seed=1, stream=1, rank=0, world=2)


def test_masked_bce_ignores_unlabelled_cells_and_balancer_normalises():
    pred = torch.tensor([[0.9, 0.1], [0.2, 0.5]])
    target = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    mask = torch.tensor([[True, False], [True, False]])
    expected = -(np.log(0.9) + np.log(0.8)) / 2
    assert masked_bce(pred, target, mask, logits=False).item() == pytest.approx(expected, rel=1e-5)
    bal = LossBalancer(ramp_steps=10)
    values = (4.0, 0.5, 2.0, 1.0)
    losses = {k: torch.tensor(v) for k, v in zip(("fe", "au", "fe_proto", "au_proto"), values, strict=True)}
    # First step: averages = values, so total = (1 + 2 + 0 + 0) / 3 at ramp 0.
    assert bal(losses, 0).item() == pytest.approx(1.0)
    assert bal.ramp(10) == pytest.approx(2 / (1 + np.exp(-10)) - 1)


def test_training_without_both_label_kinds_is_refused(tmp_path):
    data = random_faces()
    only_au = data.subset(data.au_mask.any(axis=1))
    only_au.fe[:] = -1
    with pytest.raises(ValueError, match="AU- and FE-labelled"):
        train(ssm_config("tiny", **SMALL), settings(), only_au, tmp_path)
