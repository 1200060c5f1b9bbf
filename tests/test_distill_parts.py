"""Distillation pieces: the real-photo share of each batch, geometric jitter, validation-fitted logit offsets."""

import numpy as np
import torch

from quantize.distill.loop import PHOTO_DATASET, DistillSettings, batch_rows, fit_fe_offsets
from quantize.distill.student_ssm import student_input
from quantize.train.tensors import FaceArrays, make_batch


def arrays(n_generated: int, n_photos: int, fe: np.ndarray | None = None) -> FaceArrays:
    n = n_generated + n_photos
    rng = np.random.default_rng(0)
    return FaceArrays(
        images=rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8),
        au=np.zeros((n, 3), np.float32), au_mask=np.ones((n, 3), bool),
        fe=fe if fe is not None else np.zeros(n, np.int64),
        person=np.array([f"p{i}" for i in range(n)]),
        dataset=np.array(["generated"] * n_generated + [PHOTO_DATASET] * n_photos),
    )


def test_batches_hold_a_fixed_share_of_real_photos_and_are_deterministic():
    data = arrays(200, 20)
    settings = DistillSettings(batch=16, photo_fraction=0.25)
    rows = batch_rows(data, settings, step=3)
    assert len(rows) == 16 and len(set(rows.tolist())) == 16
    assert (data.dataset[rows.numpy()] == PHOTO_DATASET).sum() == 4
    assert torch.equal(rows, batch_rows(data, settings, step=3))
    assert not torch.equal(rows, batch_rows(data, settings, step=4))
    # no photos (e.g. an arrays file): plain batches over everything
    plain = batch_rows(arrays(50, 0), settings, step=0)
    assert len(plain) == 16


def test_geometric_jitter_is_seeded_and_keeps_shape():
    data = arrays(8, 0)
    idx = torch.arange(8)
    a = make_batch(data, idx, torch.Generator().manual_seed(1), geometric=True)["image"]
    b = make_batch(data, idx, torch.Generator().manual_seed(1), geometric=True)["image"]
    c = make_batch(data, idx, torch.Generator().manual_seed(1))["image"]
    assert a.shape == c.shape == (8, 3, 16, 16)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_fe_offsets_correct_a_biased_classifier():
    rng = np.random.default_rng(0)
    fe = rng.integers(0, 3, 600)
    logits = rng.normal(0, 1, (600, 3))
    logits[np.arange(600), fe] += 2.0
    logits[:, 0] += 1.5  # a bias toward class 0
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    data = arrays(600, 0, fe=fe)
    offsets = fit_fe_offsets(prob, data, photo_weight=0.5)
    assert abs(offsets.sum()) < 1e-5
    assert offsets[0] - offsets[1:].mean() < -1.2  # undoes most of the +1.5 bias
    before = (prob.argmax(1) == fe).mean()
    after = ((np.log(prob) + offsets).argmax(1) == fe).mean()
    assert after > before
    assert not fit_fe_offsets(prob, data, photo_weight=0.0).any()


def test_student_input_area_resizes_teacher_crops():
    images = torch.rand(2, 3, 112, 112)
    assert student_input(images, 112) is images
    small = student_input(images, 80)
    assert small.shape == (2, 3, 80, 80)
    # anti-aliased: each output pixel averages a neighbourhood, so the global mean holds and noise shrinks
    assert torch.allclose(small.mean(), images.mean(), atol=2e-3)
    assert small.std() < images.std()
    flat = torch.full((1, 3, 112, 112), 0.25)
    assert torch.allclose(student_input(flat, 80), torch.full((1, 3, 80, 80), 0.25))
