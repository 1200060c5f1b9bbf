"""Distillation pieces: the real-photo share of each batch, geometric jitter, validation-fitted logit offsets."""

import numpy as np
import torch

from quantize.distill.loop import PHOTO_DATASET, DistillSettings, batch_rows, fit_fe_offsets, offset_weights
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


def test_balanced_offsets_serve_the_rare_class():
    """FER2013-like imbalance: a rare class the classifier under-calls. Equal class weights raise its recall
    (and the macro recall); plain weights, fitted for accuracy, leave it under-called."""
    rng = np.random.default_rng(1)
    fe = np.where(rng.random(3000) < 0.05, 2, rng.integers(0, 2, 3000))
    logits = rng.normal(0, 1.2, (3000, 3))
    logits[np.arange(3000), fe] += 1.5
    logits[:, 2] -= 1.0
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    data = arrays(3000, 0, fe=fe)

    def recalls(offsets):
        pred = (np.log(prob) + offsets).argmax(1)
        return np.array([(pred[fe == c] == c).mean() for c in range(3)])

    plain = recalls(fit_fe_offsets(prob, data, photo_weight=None))
    balanced = recalls(fit_fe_offsets(prob, data, photo_weight=None, balanced=True))
    assert balanced[2] > plain[2] + 0.2 and balanced.mean() > plain.mean() + 0.03


def test_offset_weights_split_groups_then_classes():
    target = np.array([0, 0, 0, 1, 0, 1, 1])
    photo = np.array([False, False, False, False, True, True, True])
    w = offset_weights(target, photo, 0.25, balanced=False)
    assert np.allclose(w, [0.75 / 4] * 4 + [0.25 / 3] * 3)
    w = offset_weights(target, photo, 0.25, balanced=True)
    assert np.isclose(w[photo].sum(), 0.25) and np.isclose(w[~photo & (target == 1)].sum(), 0.75 / 2)
    assert np.isclose(w[photo & (target == 1)].sum(), 0.125)
    assert np.allclose(offset_weights(target, photo, None, balanced=False), 1 / 7)
    assert np.isclose(offset_weights(target, np.zeros(7, bool), 0.25, balanced=True)[target == 0].sum(), 0.5)


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
