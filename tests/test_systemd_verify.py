"""`systemd-analyze verify` on the installed units, offline, inside a temporary root.

No systemd needs to run: `--root=ROOT` makes verify load units from ROOT and
check that ExecStart/ExecReload programs exist *in ROOT*. The root therefore
gets (documented stand-ins, nothing is executed):
- the host's own /usr/lib/systemd/system (for multi-user.target, network.target, ...),
- a stub program at the venv path that install-service links /usr/local/bin/affect-sensor to,
- a stub /bin/kill for ExecReload.
verify exits 0 on unknown keys (it only warns), so the test also requires that
nothing is printed about our units; the negative control proves that check bites.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from edge.service.install import SERVICE, TARGET, UPDATE_SERVICE, install, on_target

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
SYSTEM_UNITS = next((p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()), None)
VENV_EXEC = PurePosixPath("/opt/affect-sensor/venv/bin/affect-sensor")
UNITS = (SERVICE, UPDATE_SERVICE, TARGET)

pytestmark = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None or SYSTEM_UNITS is None, reason="systemd-analyze not installed (apt-get install systemd)"
)


def _stub(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)


def verify_root(tmp_path: Path, *, jetson: bool) -> Path:
    root = tmp_path / "root"
    _stub(on_target(root, VENV_EXEC))
    _stub(root / "usr/bin/kill")
    (root / "bin").symlink_to("usr/bin")
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    if jetson:
        for node in ("nvmap", "nvhost-ctrl-gpu", "nvgpu/igpu0/ctrl"):
            (root / "dev" / node).parent.mkdir(parents=True, exist_ok=True)
            (root / "dev" / node).touch()
    install(root, VENV_EXEC, jetson=jetson)
    return root


def verify(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", f"--root={root}", "--man=no", *UNITS],
        capture_output=True, text=True, timeout=60,
    )


def complaints(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if "affect-sensor" in line]


@pytest.mark.parametrize("jetson", [False, True], ids=["generic", "jetson-dropin"])
def test_installed_units_verify_clean(tmp_path: Path, jetson: bool) -> None:
    root = verify_root(tmp_path, jetson=jetson)
    result = verify(root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert complaints(result) == []


def test_verify_check_catches_broken_units(tmp_path: Path) -> None:
    root = verify_root(tmp_path, jetson=False)
    unit = root / "etc/systemd/system" / SERVICE
    unit.write_text(unit.read_text().replace("UMask=0027", "UMask=0027\nProtectEverything=yes"))
    assert any("ProtectEverything" in line for line in complaints(verify(root)))
    (root / VENV_EXEC.relative_to("/")).unlink()
    result = verify(root)
    assert result.returncode != 0 and any("not executable" in line for line in complaints(result))
