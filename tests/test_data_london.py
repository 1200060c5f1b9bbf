"""London face set: template reader, five points, person split, smiling-photo registration, photo labels."""

from __future__ import annotations

import numpy as np
import pytest

from edge.labels import BASIC_EXPRESSIONS, DEFAULT_LABELS
from quantize.data.generate import london_photo_samples
from quantize.data.london import LondonFaces, five_points, london_split, read_tem, register_to
from quantize.data.types import DataError

try:
    ROOT = LondonFaces().root
except DataError as exc:  # the photos live beside the repository (../shared/data), not in it
    pytest.skip(str(exc), allow_module_level=True)


@pytest.fixture(scope="module")
def faces() -> LondonFaces:
    return LondonFaces()


def test_read_tem_and_five_points_geometry(faces):
    points = read_tem(ROOT / "001_03.tem")
    assert points.shape == (189, 2)
    le, re_, nose, ml, mr = five_points(points)
    assert le[0] < nose[0] < re_[0] and ml[0] < mr[0]
    assert max(le[1], re_[1]) < nose[1] < min(ml[1], mr[1])


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "point count"), ("3\n1\t2\n", "header says 3"), ("2\n1\t2\n1\tx\n", ":3: expected")],
)
def test_read_tem_errors(tmp_path, text, message):
    path = tmp_path / "bad.tem"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        read_tem(path)
    with pytest.raises(DataError, match="cannot read"):
        read_tem(tmp_path / "missing.tem")


def test_split_is_person_exclusive_deterministic_and_holdout_ignores_seed(faces):
    persons = faces.persons()
    assert len(persons) == 70
    a, b = london_split(persons, seed=0), london_split(persons, seed=0)
    assert a == b
    assert not set(a.train) & set(a.val) and not set(a.train) & set(a.holdout) and not set(a.val) & set(a.holdout)
    assert sorted(a.train + a.val + a.holdout) == persons
    assert len(a.holdout) == round(70 * 0.25)
    other = london_split(persons, seed=7, val_fraction=0.3)
    assert other.holdout == a.holdout  # the final evaluation people never move into training
    assert other.train != a.train
    with pytest.raises(DataError, match="val_fraction"):
        london_split(persons, val_fraction=1.0)


def test_smiling_registration_recovers_a_known_shift(faces):
    p = faces.person("001")
    import cv2

    m_true = cv2.getRotationMatrix2D((300, 300), 4.0, 1.03)
    m_true[:, 2] += (12, -7)
    moved = cv2.warpAffine(p.neutral, m_true, p.neutral.shape[1::-1])
    m = register_to(moved, p.neutral, p.points)
    eyes = p.points[:2]
    err = np.abs((eyes @ m[:, :2].T + m[:, 2]) - (eyes @ m_true[:, :2].T + m_true[:, 2])).max()
    assert err < 1.5


def test_photo_samples_labels(faces):
    samples = london_photo_samples(["001", "002"], crop_size=64, london=faces)
    assert len(samples) == 4
    neutral, smile = samples[0], samples[1]
    assert neutral.image.shape == (64, 64, 3) and neutral.expression == BASIC_EXPRESSIONS.index("neutral")
    assert neutral.au_mask.all() and not neutral.au.any()
    aus = DEFAULT_LABELS.aus
    assert smile.expression == BASIC_EXPRESSIONS.index("happiness")
    assert smile.au[aus.index(6)] == 1 and smile.au[aus.index(12)] == 1
    assert not smile.au_mask[aus.index(25)] and smile.au_mask[aus.index(1)]
    # the registered smiling photo is aligned like the neutral one: the upper faces agree
    diff = np.abs(neutral.image[10:35].astype(int) - smile.image[10:35].astype(int)).mean()
    assert diff < 25, diff
