"""Every file the project writes goes through edge.fsutil: a unique temp name beside the target, fsync, rename,
directory fsync, ordinary permissions, nothing left behind on failure (issue 19, finding 8).

Each writer is run with os.fsync / os.replace watched: the temp file must be fsynced before it is renamed
over the target. Two threads writing one target at once must not collide (a fixed temp name did).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest


def _head(path: Path) -> None:
    from edge.head.params import save_head_params, synthetic_params

    save_head_params(synthetic_params(dim=8), path)


def _checkpoint(path: Path) -> None:
    import torch

    from quantize.train.checkpoint import save_atomic

    save_atomic({"step": 3, "weights": torch.arange(4.0)}, path)


def _onnx(path: Path) -> None:
    import torch

    from quantize.export.onnx_graphs import export_onnx

    class Tiny(torch.nn.Module):
        def forward(self, x):
            pooled = x.mean(dim=(2, 3))
            return pooled * 2, pooled + 1

    export_onnx(Tiny(), path, crop_size=16)


def _tar(path: Path, bundle: Path) -> None:
    from edge.bundle.store import read_bundle
    from edge.fleet.archive import pack_bundle

    raw = (bundle / "manifest.json").read_bytes()
    pack_bundle(bundle, list(read_bundle(bundle).manifest.files), raw, b"{}", path)


WRITERS: dict[str, tuple[str, Callable[..., None]]] = {
    "head.npz (edge.head.params)": ("head.npz", _head),
    "training checkpoint (quantize.train.checkpoint)": ("checkpoint.pt", _checkpoint),
    "ONNX graph (quantize.export.onnx_graphs)": ("student.onnx", _onnx),
    "bundle tar (edge.fleet.archive)": ("bundle.tar", _tar),
}


def _run(name: str, path: Path, tiny_bundle: Path) -> None:
    _, write = WRITERS[name]
    write(path, tiny_bundle) if write is _tar else write(path)


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_each_writer_fsyncs_a_unique_temp_file_and_renames_it(name, tmp_path, tiny_bundle, monkeypatch):
    target = tmp_path / WRITERS[name][0]
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst, *args, **kwargs) -> None:
        events.append(("replace", f"{src} -> {dst}"))
        real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    _run(name, target, tiny_bundle)
    renames = [e for e in events if e[0] == "replace" and e[1].endswith(f" -> {target}")]
    assert len(renames) == 1, events
    temp = renames[0][1].split(" -> ")[0]
    assert Path(temp).parent == tmp_path and Path(temp).name.startswith(f".{target.name}.")
    assert Path(temp).name != f".{target.name}.tmp"  # unique (mkstemp), not a fixed name two writers share
    assert ("fsync", temp) in events[: events.index(renames[0])], events  # data on disk before the rename
    assert ("fsync", str(tmp_path)) in events[events.index(renames[0]):], events  # and the rename itself
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


@pytest.mark.parametrize("name", sorted(n for n in WRITERS if "ONNX" not in n))  # torch's exporter: one at a time
def test_concurrent_writers_of_one_file_do_not_collide(name, tmp_path, tiny_bundle):
    target = tmp_path / WRITERS[name][0]
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            for _ in range(4):
                _run(name, target, tiny_bundle)
        except BaseException as exc:  # the fixed temp name made one writer rename the other's file away
            errors.append(exc)

    threads = [threading.Thread(target=loop) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    from edge.fsutil import atomic_writer

    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_writer(target) as handle:
        handle.write(b"half of the new")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
