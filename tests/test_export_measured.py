"""Figures measured on a finished bundle go into its manifest, and the bundle still verifies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge.bundle import read_bundle
from quantize.export.measured import OURS, PEER, add_metrics


def _report(created: str) -> dict:
    def side(acc: float) -> dict:
        return {"n": 90, "accuracy": acc, "uar": acc - 0.1, "recall": {"neutral": 0.9, "happiness": 0.8,
                                                                       "fear": None}}
    return {"bundle": {"created": created}, "sets": {
        "FER2013 private (original labels)": {"images": 100, "faces_found": 90, "ours": side(0.7),
                                              "peer": side(0.6), "au_sanity": {"AU12<->happiness": 0.97}},
        "empty set": {"images": 3, "faces_found": 0},
    }}


def test_add_metrics_rebuilds_the_bundle_with_the_report(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    before = read_bundle(bundle).manifest
    report = tmp_path / "r.json"
    report.write_text(json.dumps(_report(str(before.created))))
    assert add_metrics(bundle, report) == 2
    after = read_bundle(bundle).manifest  # hashes verified
    assert after.created == before.created and after.files == before.files
    measured = {m.model: m for m in after.metrics if m.data.startswith("FER2013 private")}
    assert measured[OURS].values["accuracy"] == 0.7 and measured[PEER].values["accuracy"] == 0.6
    assert measured[OURS].values["auc_AU12<->happiness"] == 0.97 and "recall_fear" not in measured[OURS].values
    assert "AU12" not in " ".join(measured[PEER].values)  # AU sanity is ours only
    assert add_metrics(bundle, report) == 2 and len(read_bundle(bundle).manifest.metrics) == len(after.metrics)
    # re-measured with another detector (another face count): the set's entries are replaced, not added to
    again = _report(str(before.created))
    again["detector"] = "retinaface"
    again["sets"]["FER2013 private (original labels)"]["faces_found"] = 95
    report.write_text(json.dumps(again))
    assert add_metrics(bundle, report) == 2
    final = read_bundle(bundle).manifest.metrics
    assert len(final) == len(after.metrics)
    assert [m.data for m in final if m.model == OURS][-1].endswith("95 faces found by the device detector (retinaface)")


def test_a_report_of_another_bundle_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    report = tmp_path / "r.json"
    report.write_text(json.dumps(_report("2001-01-01 00:00:00+00:00")))
    with pytest.raises(ValueError, match="measured on another bundle"):
        add_metrics(bundle, report)
