"""Generated faces: determinism, labels, person split, AU warps move the right region, clips, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edge.alignment import template_for
from edge.labels import BASIC_EXPRESSIONS, DEFAULT_LABELS, FACS_PRIOR
from quantize.data.generate import (
    OCCURRENCE,
    LondonWarper,
    generate_clips,
    generate_faces,
    sample_aus,
)
from quantize.data.london import LondonFaces, five_points, london_split
from quantize.data.procedural import Identity, render_face
from quantize.data.types import DataError, FaceSample
from quantize.data.warps import warp_face

AUS = DEFAULT_LABELS.aus


@pytest.fixture(scope="module")
def faces() -> LondonFaces:
    return LondonFaces()


def test_au_draws_follow_the_facs_prior():
    rng = np.random.default_rng(0)
    draws = [sample_aus(rng) for _ in range(2000)]
    for d in draws:
        if d.expression >= 0:
            on = {AUS[i] for i in np.flatnonzero(d.label)}
            assert on <= set(FACS_PRIOR[BASIC_EXPRESSIONS[d.expression]])
            if BASIC_EXPRESSIONS[d.expression] != "neutral":
                assert on
        assert ((d.intensity >= OCCURRENCE) == (d.label == 1)).all()
    assert 0.2 < np.mean([d.expression < 0 for d in draws]) < 0.4


@pytest.mark.parametrize("kind", ["procedural", "london", "mixed"])
def test_generation_is_deterministic_and_well_formed(kind, faces):
    persons = london_split(faces.persons()).train
    a = generate_faces(kind, 6, persons, crop_size=64, seed=3, london=faces)
    b = generate_faces(kind, 6, persons, crop_size=64, seed=3, london=faces)
    c = generate_faces(kind, 6, persons, crop_size=64, seed=4, london=faces)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x.image, y.image) for x, y in zip(a, c, strict=True))
    for s in a:
        assert isinstance(s, FaceSample) and s.image.shape == (64, 64, 3) and s.au_mask.all()
        if s.dataset == "london_warp":
            assert s.person in persons


def test_london_needs_persons(faces):
    with pytest.raises(DataError, match="persons"):
        generate_faces("london", 2, None, london=faces)
    with pytest.raises(DataError, match="unknown generator kind"):
        generate_faces("cartoon", 2)  # type: ignore[arg-type]


def _region_change(render, au: int, tpl: np.ndarray) -> tuple[float, float]:
    """Mean absolute pixel change in the brow band and the mouth band (before re-alignment, which moves everything)."""
    neutral, moved = render({}).astype(float), render({au: 1.0}).astype(float)
    iod = tpl[1, 0] - tpl[0, 0]
    brow = slice(int(tpl[0, 1] - 0.7 * iod), int(tpl[0, 1] - 0.15 * iod))
    mouth = slice(int(tpl[3, 1] - 0.2 * iod), int(tpl[3, 1] + 0.3 * iod))
    d = np.abs(moved - neutral)
    return d[brow].mean(), d[mouth].mean()


@pytest.mark.parametrize("source", ["london", "procedural"])
def test_au_changes_land_in_the_right_region(source, faces):
    if source == "london":
        warper = LondonWarper(faces, 112)
        canvas, points = warper.canvas("001")
        tpl = five_points(points)

        def render(i):
            return warp_face(canvas, points, i)[0]
    else:
        tpl = template_for(224)

        def render(i):
            return render_face(Identity.from_person("proc-t"), i, 224, np.random.default_rng(0))[0]

    for au in (1, 2, 4):
        brow, mouth = _region_change(render, au, tpl)
        assert brow > 2 * mouth and brow > 0.5, (au, brow, mouth)
    for au in (12, 15, 20, 25, 26):
        brow, mouth = _region_change(render, au, tpl)
        assert mouth > 2 * brow and mouth > 0.5, (au, brow, mouth)


def test_clips_have_onset_and_apex(faces):
    clips = generate_clips(
        "mixed", 4, london_split(faces.persons()).train, frames=8, crop_size=48, seed=1, london=faces
    )
    for c in clips:
        assert c.frames.shape == (8, 48, 48, 3) and c.au.shape == (8, len(AUS))
        assert c.expression >= 0
        assert c.au[0].sum() <= c.au[-1].sum()  # onset is no busier than the apex
        if BASIC_EXPRESSIONS[c.expression] != "neutral":
            assert c.au[-1].any()
            changes = [np.abs(c.frames[i + 1].astype(int) - c.frames[i]).mean() for i in range(7)]
            assert max(changes) > 0.5


def test_generation_speed(faces):
    persons = london_split(faces.persons()).train[:10]
    for p in persons:
        faces.person(p)  # load outside the timed part (the cache is what a training run reuses)
    t = time.perf_counter()
    generate_faces("mixed", 200, persons, crop_size=112, seed=0, london=faces)
    per_sample = (time.perf_counter() - t) / 200
    assert per_sample < 0.1, per_sample  # 2000 samples well under a minute needs < 0.03 s; leave room for a busy box


def test_contact_sheet_command(tmp_path):
    import cv2

    from quantize.cli import main

    out = tmp_path / "sheet.png"
    assert main(["contact-sheet", "--kind", "procedural", "--persons", "2", "--scale", "1", "--out", str(out)]) == 0
    sheet = cv2.imread(str(out))
    assert sheet.shape[:2] == (2 * 112, 24 * 112)  # neutral + 17 AUs + 6 expressions per row
    assert not list(tmp_path.glob(".*tmp"))
