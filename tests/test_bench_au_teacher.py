"""benchmarks/au_teacher.py: the AU teacher's own AUCs, on a face cache and blendshape file written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from script_loader import REPO, load_script

from edge.labels import BASIC_EXPRESSIONS, DEFAULT_LABELS
from quantize.data.blendshapes import AU_SOURCES, BlendshapeScores
from quantize.data.face_cache import FaceCache

NAMES = tuple(sorted({n for names in AU_SOURCES.values() for n in names}))


def _write(tmp_path: Path, n: int = 70) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    expression = np.arange(n) % len(BASIC_EXPRESSIONS)
    anger = expression == BASIC_EXPRESSIONS.index("anger")
    cache = FaceCache(images=np.zeros((n, 8, 8), np.uint8), key=np.array([f"k{i}" for i in range(n)]),
                      dataset=np.array(["fer2013"] * (n - 7) + ["london_photo"] * 7),
                      person=np.array([""] * n), expression=expression.astype(np.int64),
                      votes=np.zeros((n, len(BASIC_EXPRESSIONS)), np.float32),
                      au=np.zeros((n, len(DEFAULT_LABELS.aus)), np.float32),
                      au_mask=np.zeros((n, len(DEFAULT_LABELS.aus)), bool), aligned_by=np.array(["detector"] * n),
                      size=4, margin=2)
    scores = rng.uniform(0.0, 0.2, (n, len(NAMES))).astype(np.float32)
    for side in ("browDownLeft", "browDownRight"):  # AU4 up on every angry face, and only there
        scores[anger, NAMES.index(side)] += 0.5
    scores[1] = np.nan  # MediaPipe found no face on this FER2013 one
    faces, shapes = tmp_path / "val.npz", tmp_path / "val.blendshapes.npz"
    cache.save(faces)
    BlendshapeScores(cache.key, NAMES, scores, np.full(n, 0.1, np.float32)).save(shapes)
    return faces, shapes


def test_teacher_auc_table_scores_the_chosen_dataset(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    bench = load_script("benchmarks/au_teacher.py", "au_teacher_bench")
    faces, shapes = _write(tmp_path)
    assert bench.main(["--faces", str(faces), "--blendshapes", str(shapes)]) == 0
    out = capsys.readouterr().out
    assert "on 62 labelled fer2013 faces" in out  # 70 minus 7 London photos and the face MediaPipe missed
    lines = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:]}
    assert lines["AU4<->anger"] == "1.000"
    assert 0.2 < float(lines["AU15<->sadness"]) < 0.8  # noise: neither side


def test_blendshapes_from_another_cache_are_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    bench = load_script("benchmarks/au_teacher.py", "au_teacher_bench")
    faces, shapes = _write(tmp_path)
    other = tmp_path / "other.npz"
    s = BlendshapeScores.load(shapes)
    BlendshapeScores(np.array([f"x{i}" for i in range(len(s.key))]), s.names, s.scores, s.lip_gap).save(other)
    with pytest.raises(SystemExit):
        bench.main(["--faces", str(faces), "--blendshapes", str(other)])
