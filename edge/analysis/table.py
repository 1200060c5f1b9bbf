"""The per-frame CSV in OpenFace 2.0's column conventions, streamed to disk and renamed into place when done.

OpenFace's CSV is what facial-behaviour tools exchange (py-feat reads it), so
we use its column names for every quantity we have, py-feat's names for what
OpenFace lacks, and leave out what we do not measure rather than invent it.
docs/analyze.md lists every column and every OpenFace column that is absent.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from edge.analysis.atomic import AtomicOutput
from edge.analysis.observation import FrameObservation
from edge.labels import LabelSpace

# OpenFace 2.0 FeatureExtraction: the leading columns, and the AUs it reports as presence (_c) and intensity (_r).
OPENFACE_LEADING = ("frame", "face_id", "timestamp", "confidence", "success")
OPENFACE_PRESENCE_AUS = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 28, 45)
OPENFACE_INTENSITY_AUS = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 45)
# Our own columns, named as py-feat names them where it has the quantity.
BOX_COLUMNS = ("FaceRectX", "FaceRectY", "FaceRectWidth", "FaceRectHeight")


def openface_au(number: int) -> str:
    """OpenFace's zero-padded AU name: 1 -> AU01."""
    return f"AU{number:02d}"


@dataclass(frozen=True)
class TableSpec:
    """Columns and rows for one label space (the bundle's AUs and expressions, in output order)."""

    labels: LabelSpace

    @property
    def presence_columns(self) -> list[str]:
        return [f"{openface_au(n)}_c" for n in self.labels.aus]

    @property
    def probability_columns(self) -> list[str]:
        return [openface_au(n) for n in self.labels.aus]

    @property
    def columns(self) -> list[str]:
        return [*OPENFACE_LEADING, *self.presence_columns, "input", *BOX_COLUMNS, *self.probability_columns,
                *self.labels.expressions, "top_expression", "top_score"]

    def rows(self, obs: FrameObservation) -> list[list[str]]:
        """One row per face; one `success = 0` row, empty where nothing was measured, when there is none."""
        timing = [str(obs.frame)]
        when = f"{obs.timestamp:.3f}"
        if not obs.faces:
            empty = [""] * (len(self.columns) - len(OPENFACE_LEADING) - 1 - len(self.presence_columns))
            return [[*timing, "", when, "", "0", *[""] * len(self.presence_columns), obs.input, *empty]]
        rows = []
        for face in obs.faces:
            active = set(face.active_aus)
            keys = self.labels.au_keys
            box = face.box
            rows.append([
                *timing, str(face.track_id), when, f"{face.score:.4f}", "1",
                *["1" if key in active else "0" for key in keys],
                obs.input, f"{box.x:.1f}", f"{box.y:.1f}", f"{box.w:.1f}", f"{box.h:.1f}",
                *[f"{face.aus[key]:.4f}" for key in keys],
                *[f"{face.expressions[name]:.4f}" for name in self.labels.expressions],
                face.top_expression, f"{face.top_score:.4f}",
            ])
        return rows


class CsvTable:
    """Streams rows to a temp file beside `path`; `commit()` makes the finished file appear in one rename."""

    def __init__(self, path: Path, labels: LabelSpace) -> None:
        self.spec = TableSpec(labels)
        self.path = path
        self.rows = 0
        self._out = AtomicOutput(path)
        try:
            self._handle = self._out.temp.open("w", newline="", encoding="utf-8")
        except BaseException:
            self._out.discard()
            raise
        self._writer = csv.writer(self._handle, lineterminator="\n")
        self._writer.writerow(self.spec.columns)

    def write(self, obs: FrameObservation) -> None:
        rows = self.spec.rows(obs)
        self._writer.writerows(rows)
        self.rows += len(rows)

    def commit(self) -> None:
        self._handle.close()
        self._out.commit()

    def discard(self) -> None:
        self._handle.close()
        self._out.discard()
