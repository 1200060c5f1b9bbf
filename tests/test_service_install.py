"""`affect-sensor install-service` into temporary roots: idempotence, kept edits, modes, ownership steps."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from edge.cli.main import main
from edge.kernels.build import cubin_name, find_nvcc
from edge.service.install import (
    CONFIG,
    EXEC_LINK,
    JETSON_DROPIN,
    JETSON_UPDATE_DROPIN,
    KERNEL_DIR,
    PACKAGED_FILES,
    InstallError,
    config_template,
    install,
    on_target,
    packaged_unit,
)

REPO = Path(__file__).resolve().parents[1]
VENV_EXEC = PurePosixPath("/opt/affect-sensor/venv/bin/affect-sensor")


def make_root(tmp_path: Path) -> Path:
    """An empty target root holding only the program the units will run (a stub: nothing runs it here)."""
    root = tmp_path / "root"
    program = on_target(root, VENV_EXEC)
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    return root


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_install_twice_is_idempotent_and_keeps_an_edited_config(tmp_path: Path, capsys) -> None:
    root = make_root(tmp_path)
    assert main(["install-service", "--root", str(root), "--exec", str(VENV_EXEC), "--no-jetson"]) == 0
    first = capsys.readouterr().out
    for _, target, _ in PACKAGED_FILES:
        assert f"{target}" in first
    config = on_target(root, CONFIG)
    assert config.read_bytes() == config_template()
    assert (mode(config), mode(config.parent)) == (0o640, 0o750)
    for name, target, _ in PACKAGED_FILES:
        assert on_target(root, target).read_bytes() == packaged_unit(name)
        assert mode(on_target(root, target)) == 0o644
    link = on_target(root, EXEC_LINK)
    assert link.is_symlink() and os.readlink(link) == str(VENV_EXEC)

    snapshot = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}
    report = install(root, VENV_EXEC, jetson=False)
    assert not report.changed, report.actions
    assert {p: p.read_bytes() for p in snapshot} == snapshot

    edited = config.read_text().replace('group = "default"', 'group = "lobby"')
    config.write_text(edited)
    assert main(["install-service", "--root", str(root), "--exec", str(VENV_EXEC), "--no-jetson"]) == 0
    out = capsys.readouterr().out
    assert "kept (edited)" in out and "sensor.toml.new" in out
    assert config.read_text() == edited
    new = config.with_name("sensor.toml.new")
    assert new.read_bytes() == config_template() and mode(new) == 0o640
    # third run: still kept, .new unchanged
    outcomes = {str(a.path): a.outcome for a in install(root, VENV_EXEC, jetson=False).actions}
    assert outcomes[str(CONFIG)] == "kept (edited)" and outcomes[f"{CONFIG}.new"] == "unchanged"


def test_modes_are_repaired_and_foreign_files_are_not_clobbered(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    install(root, VENV_EXEC, jetson=False)
    config = on_target(root, CONFIG)
    config.chmod(0o644)  # world-readable config: may point at secrets
    actions = {str(a.path): a.outcome for a in install(root, VENV_EXEC, jetson=False).actions}
    assert actions[str(CONFIG)] == "mode fixed" and mode(config) == 0o640

    link = on_target(root, EXEC_LINK)
    link.unlink()
    link.write_text("#!/bin/sh\n# someone else's program\n")
    with pytest.raises(InstallError, match="not our link"):
        install(root, VENV_EXEC, jetson=False)
    assert "someone else's" in link.read_text()


def test_next_steps_create_the_user_and_apply_ownership(tmp_path: Path, capsys) -> None:
    root = make_root(tmp_path)
    assert main(["install-service", "--root", str(root), "--exec", str(VENV_EXEC), "--no-jetson"]) == 0
    out = capsys.readouterr().out
    steps = [line.strip() for line in out.split("Next steps")[1].splitlines()[1:] if line.strip()]
    assert steps[0] == f"systemd-sysusers --root={root.resolve()} affect-sensor.conf"
    assert steps[1] == f"systemd-tmpfiles --root={root.resolve()} --create affect-sensor.conf"
    tmpfiles = on_target(root, PurePosixPath("/etc/tmpfiles.d/affect-sensor.conf")).read_text()
    rules = {tuple(line.split()[:5]) for line in tmpfiles.splitlines() if line and not line.startswith("#")}
    assert ("z", str(CONFIG), "0640", "root", "affect-sensor") in rules
    assert ("d", "/etc/affect-sensor", "0750", "root", "affect-sensor") in rules
    assert ("d", "/var/lib/affect-sensor", "0750", "affect-sensor", "affect-sensor") in rules
    assert ("d", "/var/cache/affect-sensor/engines", "0750", "affect-sensor", "affect-sensor") in rules

    tools = [shutil.which(t) for t in ("systemd-sysusers", "systemd-tmpfiles", "systemctl")]
    if os.geteuid() != 0 or None in tools:
        pytest.skip("running the printed steps needs root and systemd-sysusers/-tmpfiles/systemctl")
    for command in steps[:3]:  # sysusers, tmpfiles, offline enable: all act on the temporary root only
        subprocess.run(command.split(), check=True, capture_output=True, timeout=30)
    passwd = on_target(root, PurePosixPath("/etc/passwd")).read_text()
    uid = next(int(line.split(":")[2]) for line in passwd.splitlines() if line.startswith("affect-sensor:"))
    groups = on_target(root, PurePosixPath("/etc/group")).read_text().splitlines()
    for group in ("video", "render"):
        members = next(line.split(":")[3] for line in groups if line.startswith(f"{group}:"))
        assert "affect-sensor" in members.split(",")
    config = on_target(root, CONFIG).stat()
    assert (config.st_uid, config.st_gid, stat.S_IMODE(config.st_mode)) == (0, uid, 0o640)
    state = on_target(root, PurePosixPath("/var/lib/affect-sensor/bundles")).stat()
    assert (state.st_uid, stat.S_IMODE(state.st_mode)) == (uid, 0o750)
    wants = on_target(root, PurePosixPath("/etc/systemd/system/affect-sensor.target.wants/affect-sensor.service"))
    assert wants.is_symlink()


def test_jetson_dropin_lists_the_device_nodes_present(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / "etc").mkdir()
    (root / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.0\n")
    with pytest.raises(InstallError, match="no Jetson GPU device nodes"):
        install(root, VENV_EXEC)
    # Regular files stand in for the character devices of a real Jetson (the installer only lists paths).
    for node in ("nvmap", "nvhost-ctrl-gpu", "nvhost-gpu", "nvgpu/igpu0/ctrl", "nvgpu/igpu0/as", "video0"):
        (root / "dev" / node).parent.mkdir(parents=True, exist_ok=True)
        (root / "dev" / node).touch()
    report = install(root, VENV_EXEC)
    assert report.jetson
    dropin = on_target(root, JETSON_DROPIN).read_text()
    allowed = [line.split("=", 1)[1] for line in dropin.splitlines() if line.startswith("DeviceAllow=")]
    assert allowed == [
        "/dev/nvgpu/igpu0/as rw", "/dev/nvgpu/igpu0/ctrl rw",
        "/dev/nvhost-ctrl-gpu rw", "/dev/nvhost-gpu rw", "/dev/nvmap rw",
    ]
    assert "BindPaths=-/tmp/argus_socket" in dropin
    # A restarted nvargus-daemon replaces the socket our mount shows: restart with it (issue 18).
    assert {"Wants=nvargus-daemon.service", "After=nvargus-daemon.service",
            "PartOf=nvargus-daemon.service"} <= set(dropin.splitlines())
    agent = on_target(root, JETSON_UPDATE_DROPIN).read_text()  # engine builds and self-tests need the GPU too
    agent_allowed = [line.split("=", 1)[1] for line in agent.splitlines() if line.startswith("DeviceAllow=")]
    assert agent_allowed == ["char-drm rw", *allowed]
    assert "PrivateDevices=no" in agent and "DevicePolicy=closed" in agent
    kernel = next(a for a in report.actions if str(a.path).startswith(str(KERNEL_DIR)))
    if find_nvcc() is not None:  # prebuilt at install for Orin, named after the kernel source
        assert kernel.outcome == "written" and on_target(root, KERNEL_DIR / cubin_name("sm_87")).is_file()
    else:
        assert kernel.outcome == "skipped" and "NVRTC" in kernel.note
    assert not install(root, VENV_EXEC).changed


def test_the_daemon_unit_allows_camera_media_nodes() -> None:
    """/dev/media* (UVC and CSI media controllers) is device group "media", not video4linux (issue 18)."""
    unit = packaged_unit("affect-sensor.service").decode()
    allowed = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("DeviceAllow=")]
    assert allowed == ["char-video4linux rw", "char-media rw", "char-drm rw"]


@pytest.mark.parametrize(
    ("exec_path", "message"),
    [
        ("/root/.venv/bin/affect-sensor", "ProtectHome=yes hides"),
        ("/home/ml/venv/bin/affect-sensor", "ProtectHome=yes hides"),
        ("/opt/missing/bin/affect-sensor", "no executable file"),
        ("bin/affect-sensor", "absolute path"),
    ],
)
def test_bad_exec_paths_are_clear_errors(tmp_path: Path, capsys, exec_path: str, message: str) -> None:
    root = make_root(tmp_path)
    assert main(["install-service", "--root", str(root), "--exec", exec_path]) == 2
    err = capsys.readouterr().err
    assert message in err and exec_path in err
    assert not (root / "etc").exists(), "nothing may be written when the install is refused"


def test_other_root_needs_exec(tmp_path: Path, capsys) -> None:
    assert main(["install-service", "--root", str(make_root(tmp_path))]) == 2
    assert "--exec is required" in capsys.readouterr().err


def test_systemd_dir_links_to_the_packaged_units() -> None:
    """systemd/ is the repository view of edge/service/units/: links, so the two cannot diverge."""
    units = REPO / "edge/service/units"
    links = sorted((REPO / "systemd").glob("*"))
    targets = {p.resolve() for p in links if p.is_symlink()}
    assert targets == {p.resolve() for p in units.iterdir()}
    for link in links:
        if link.is_symlink():
            assert link.resolve().parent == units.resolve() and link.read_bytes() == link.resolve().read_bytes()
    assert (REPO / "edge/service/sensor.toml").resolve() == (REPO / "firmware_cfg/sensor.toml").resolve()
