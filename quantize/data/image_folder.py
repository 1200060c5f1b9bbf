"""Any folder of face photos with a labels CSV: the way most small expression sets are shared.

`labels.csv` (or the file given) has a header with `relpath` and `label` columns, optionally `person`;
`relpath` is relative to the CSV's folder; `label` is an expression name (ours, or a common synonym).
"""

from __future__ import annotations

import csv
from pathlib import Path

from quantize.data.types import DataError, LabelledImage, expression_index, image_reader

SYNONYMS = {"happy": "happiness", "sad": "sadness", "angry": "anger", "surprised": "surprise",
            "fearful": "fear", "disgusted": "disgust", "calm": "neutral"}


def load_labelled_folder(labels_csv: Path | str, dataset: str | None = None) -> list[LabelledImage]:
    labels_csv = Path(labels_csv)
    if not labels_csv.is_file():
        raise DataError(f"labels file {labels_csv} does not exist")
    root = labels_csv.parent
    name = dataset or root.name
    items = []
    with labels_csv.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"relpath", "label"} <= set(reader.fieldnames):
            raise DataError(f"{labels_csv}: expected a header with relpath,label, got {reader.fieldnames}")
        for line_no, row in enumerate(reader, start=2):
            label = row["label"].strip().lower()
            try:
                expression = expression_index(SYNONYMS.get(label, label))
            except DataError:
                raise DataError(f"{labels_csv}:{line_no}: unknown expression {row['label']!r}") from None
            path = root / row["relpath"]
            if not path.is_file():
                raise DataError(f"{labels_csv}:{line_no}: image {path} does not exist")

            person = (row.get("person") or "").strip() or row["relpath"]
            items.append(LabelledImage(row["relpath"], image_reader(path), expression, name, person))
    if not items:
        raise DataError(f"{labels_csv}: no rows")
    return items
