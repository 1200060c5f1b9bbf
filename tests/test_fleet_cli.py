"""Operator and device commands on bad or unusual input: one line naming what is wrong, exit 2, never a
traceback (issue 19, finding 5); a device's `current` link is a bundle like any other for `bundle verify`."""

from __future__ import annotations

import subprocess
import sys

import pytest
from fleet_helpers import make_key, signed_tar

from edge.bundle.store import read_bundle
from edge.fleet.broker_config import DeviceTopics, acl_block, bridge_topic_lines
from edge.fleet.store import BundleStore

CLI = [sys.executable, "-m", "edge.cli.main"]
pytestmark = pytest.mark.timeout(120)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("command", ["verify", "info"])
def test_bundle_commands_follow_the_stores_current_link(tmp_path, tiny_bundle, command):
    store = BundleStore(tmp_path / "bundles")
    installed = store.seed(read_bundle(tiny_bundle))
    proc = run("bundle", command, str(tmp_path / "bundles" / "current"))
    assert proc.returncode == 0, proc.stderr
    if command == "verify":
        assert proc.stdout.startswith(f"OK: {tmp_path / 'bundles' / 'current'} -> {installed}: unit-test 0.0.1 build 1")
    else:
        assert proc.stdout.startswith("unit-test 0.0.1 (build 1)")


@pytest.fixture(scope="module")
def signed(tmp_path_factory, tiny_bundle):
    root = tmp_path_factory.mktemp("cli-kit")
    key = make_key(root / "keys")
    tar = signed_tar(tiny_bundle, key, root / "b.tar")
    return {"root": root, "keyfile": root / "keys" / "fleet.key", "tar": tar}


@pytest.mark.parametrize("damage", ["cut mid-file", "cut at a header", "not a tar", "empty"])
@pytest.mark.parametrize("command", ["publish", "rollout"])
def test_fleet_publish_and_rollout_refuse_a_damaged_tar_in_one_line(signed, tmp_path, damage, command):
    data = signed["tar"].read_bytes()
    bad = tmp_path / "damaged.tar"
    bad.write_bytes({"cut mid-file": data[: len(data) // 2 + 100], "cut at a header": data[:1024],
                     "not a tar": b"\x00garbage" * 200, "empty": b""}[damage])
    where = ["--device", "cam-01"] if command == "publish" else ["--group", "lab", "--canary", "cam-01"]
    proc = run("fleet", command, str(bad), "--url", "https://example.net/b.tar", "--key", str(signed["keyfile"]),
               *where, "--port", "1")  # nothing listens on port 1: the archive must be refused before connecting
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"affect-sensor: error: {bad}: "), proc.stderr
    assert "Traceback" not in proc.stderr


def test_fleet_publish_refuses_an_unsigned_archive(signed, tmp_path):
    import tarfile

    unsigned = tmp_path / "unsigned.tar"
    with tarfile.open(signed["tar"]) as src, tarfile.open(unsigned, "w") as dst:
        for member in src.getmembers():
            if member.name != "manifest.sig":
                dst.addfile(member, src.extractfile(member))
    proc = run("fleet", "publish", str(unsigned), "--url", "https://example.net/b.tar", "--key",
               str(signed["keyfile"]), "--device", "cam-01", "--port", "1")
    assert proc.returncode == 2 and "no manifest.sig" in proc.stderr, proc.stderr


def test_fleet_broker_config_prints_the_generated_bridge_lines_and_acl_block():
    proc = run("fleet", "broker-config", "--device", "cam-07", "--group", "lab", "--discovery-prefix", "ha")
    assert proc.returncode == 0, proc.stderr
    device = DeviceTopics("affect", "cam-07", "lab", "ha")
    assert bridge_topic_lines(device) in proc.stdout and acl_block(device) in proc.stdout
    assert "topic ha/sensor/affect_cam-07/+/config out 1" in proc.stdout
    bad = run("fleet", "broker-config", "--device", "cam/07", "--group", "lab")
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "affect-sensor: error: device id 'cam/07' must be non-empty and free of '/', '#', '+'")
