import json
import os
from pathlib import Path

import pytest
from conftest import bundle_files, manifest_fields

from edge.bundle import MANIFEST_NAME, BundleError, read_bundle, write_bundle
from edge.cli.main import main as sensor_cli


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    write_bundle(tmp_path / "bundle", manifest_fields(), bundle_files())
    return tmp_path / "bundle"


def rewrite_manifest(bundle: Path, **changes) -> None:
    path = bundle / MANIFEST_NAME
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_roundtrip(bundle_dir):
    bundle = read_bundle(bundle_dir)
    m = bundle.manifest
    assert (m.name, m.version, m.build) == ("test-bundle", "1.2.3", 7)
    assert bundle.role("onnx_cpu").read_bytes() == b"onnx-bytes-for-format-tests"
    assert m.files["golden/inputs.npy"].size == len(b"golden-in")
    assert m.label_space.aus == (1, 2, 4, 6, 12)
    assert m.created.tzinfo is not None


def test_writer_is_atomic_and_leaves_nothing_on_error(tmp_path):
    bad = manifest_fields(version="one")
    with pytest.raises(BundleError, match="version"):
        write_bundle(tmp_path / "b", bad, bundle_files())
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_to_clobber_unless_asked(bundle_dir):
    with pytest.raises(BundleError, match="already exists"):
        write_bundle(bundle_dir, manifest_fields(), bundle_files())
    write_bundle(bundle_dir, manifest_fields(build=8), bundle_files(), overwrite=True)
    assert read_bundle(bundle_dir).manifest.build == 8
    assert sorted(p.name for p in bundle_dir.parent.iterdir()) == ["bundle"]


def test_tampered_file(bundle_dir):
    (bundle_dir / "head.npz").write_bytes(b"head-bytez")  # same size, other content
    with pytest.raises(BundleError, match=r"files\.head\.npz: sha256 does not match"):
        read_bundle(bundle_dir)


def test_truncated_file(bundle_dir):
    (bundle_dir / "head.npz").write_bytes(b"head")
    with pytest.raises(BundleError, match=r"files\.head\.npz: size is 4 bytes, manifest says 10"):
        read_bundle(bundle_dir)


def test_missing_file(bundle_dir):
    (bundle_dir / "golden" / "outputs.npz").unlink()
    with pytest.raises(BundleError, match=r"files\.golden/outputs\.npz: listed file is missing"):
        read_bundle(bundle_dir)


def test_extra_unlisted_file(bundle_dir):
    (bundle_dir / "golden" / "extra.bin").write_bytes(b"x")
    with pytest.raises(BundleError, match=r"golden/extra\.bin: file is not listed"):
        read_bundle(bundle_dir)


def test_symlink_in_bundle(bundle_dir):
    os.symlink("/etc/passwd", bundle_dir / "link")
    with pytest.raises(BundleError, match=r"link: symbolic links are not allowed"):
        read_bundle(bundle_dir)


@pytest.mark.parametrize("name", ["../evil.onnx", "/etc/passwd", "a/../../b", "a//b", "./x", "a\\b", ""])
def test_path_traversal_names_in_manifest(bundle_dir, name):
    data = json.loads((bundle_dir / MANIFEST_NAME).read_text())
    data["files"][name] = data["files"]["head.npz"]
    (bundle_dir / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"manifest\.json: files"):
        read_bundle(bundle_dir)


def test_path_traversal_names_in_writer(tmp_path):
    files = {**bundle_files(), "../outside.bin": (b"x", "other")}
    with pytest.raises(BundleError, match=r"outside\.bin"):
        write_bundle(tmp_path / "b", manifest_fields(), files)
    assert not (tmp_path / "outside.bin").exists()
    assert list(tmp_path.iterdir()) == []


def test_wrong_schema_version(bundle_dir):
    rewrite_manifest(bundle_dir, schema_version=2)
    with pytest.raises(BundleError, match="schema_version: unsupported schema version 2"):
        read_bundle(bundle_dir)


def test_manifest_not_json(bundle_dir):
    (bundle_dir / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(BundleError, match=r"manifest\.json: not valid JSON"):
        read_bundle(bundle_dir)


def test_unknown_manifest_field(bundle_dir):
    rewrite_manifest(bundle_dir, engine_path="/tmp/x")
    with pytest.raises(BundleError, match=r"manifest\.json: engine_path: Extra inputs are not permitted"):
        read_bundle(bundle_dir)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"labels": {"aus": [1, 3], "expressions": ["neutral"]}}, "labels"),
        ({"labels": {"aus": [1], "expressions": ["joy"]}}, "labels"),
        ({"input": {"crop_size": 112, "mean": [0.5], "std": [0.2, 0.2, 0.2],
                    "alignment": {"points": [[1, 1]] * 5}}}, "input"),
        ({"input": {"crop_size": 64, "mean": [0.5] * 3, "std": [0.2] * 3,
                    "alignment": {"points": [[100, 1]] * 5}}}, "input"),
        ({"output": {"feature_dim": 0}}, "output.feature_dim"),
        ({"golden": {"inputs": "nope.npy", "outputs": "golden/outputs.npz", "atol": {"onnx_cpu": 1e-3}}},
         "golden.inputs"),
        ({"golden": {"inputs": "golden/inputs.npy", "outputs": "golden/outputs.npz", "atol": {"onnx_cpu": 2}}},
         "golden.atol"),
        ({"created": "2026-01-01T00:00:00"}, "created"),
    ],
)
def test_bad_specs_are_refused(bundle_dir, change, where):
    rewrite_manifest(bundle_dir, **change)
    with pytest.raises(BundleError) as err:
        read_bundle(bundle_dir)
    assert where.split(".")[0] in err.value.where or where in err.value.message


def test_bundle_without_onnx_graph_is_refused(tmp_path):
    files = {k: v for k, v in bundle_files().items() if v[1] != "onnx_cpu"}
    with pytest.raises(BundleError, match="no ONNX graph"):
        write_bundle(tmp_path / "b", manifest_fields(), files)


def test_cli_info_and_verify(bundle_dir, capsys):
    assert sensor_cli(["bundle", "verify", str(bundle_dir)]) == 0
    assert "OK" in capsys.readouterr().out
    assert sensor_cli(["bundle", "info", str(bundle_dir)]) == 0
    out = capsys.readouterr().out
    assert "test-bundle 1.2.3 (build 7)" in out and "AU12" in out
    (bundle_dir / "head.npz").write_bytes(b"XXXX-bytes")
    assert sensor_cli(["bundle", "verify", str(bundle_dir)]) == 2
    assert "sha256 does not match" in capsys.readouterr().err
