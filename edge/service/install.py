"""Install the systemd units, sysusers/tmpfiles snippets and the device config under a root prefix.

The canonical unit files are package data (`edge/service/units/`), so an
installed wheel carries them; the top-level `systemd/` directory holds links to
the same files for packagers and readers (one copy, nothing to keep in step).
The config template is `firmware_cfg/sensor.toml`, reached through the link
`edge/service/sensor.toml`.

Re-running is safe: files that already match are left alone, units are
replaced (local changes belong in drop-ins), and an edited config is never
overwritten: the new template is written beside it as `sensor.toml.new`.
Ownership is not changed here (the installer may run in an image build as a
user that cannot chown); tmpfiles.d applies it, and the printed next steps say
how. On a Jetson the fused head kernel is also prebuilt for Orin (sm_87) into
`/opt/affect-sensor/kernels` with JetPack's nvcc when it is installed (it need
not be on PATH); without it the daemon compiles the kernel in-process with
NVRTC at start, so neither case needs nvcc on the service's PATH.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath

from edge.fsutil import atomic_write

SERVICE = "affect-sensor.service"
UPDATE_SERVICE = "affect-sensor-update.service"
TARGET = "affect-sensor.target"
EXEC_LINK = PurePosixPath("/usr/local/bin/affect-sensor")  # the ExecStart path in the units
CONFIG = PurePosixPath("/etc/affect-sensor/sensor.toml")
UNIT_DIR = PurePosixPath("/etc/systemd/system")
JETSON_DROPIN = UNIT_DIR / f"{SERVICE}.d" / "jetson.conf"
JETSON_UPDATE_DROPIN = UNIT_DIR / f"{UPDATE_SERVICE}.d" / "jetson.conf"

# (packaged file under edge/service/units, installed path, mode)
PACKAGED_FILES: tuple[tuple[str, PurePosixPath, int], ...] = (
    (SERVICE, UNIT_DIR / SERVICE, 0o644),
    (UPDATE_SERVICE, UNIT_DIR / UPDATE_SERVICE, 0o644),
    (TARGET, UNIT_DIR / TARGET, 0o644),
    ("affect-sensor.sysusers", PurePosixPath("/etc/sysusers.d/affect-sensor.conf"), 0o644),
    ("affect-sensor.tmpfiles", PurePosixPath("/etc/tmpfiles.d/affect-sensor.conf"), 0o644),
)
CONFIG_MODE = 0o640
CONFIG_DIR_MODE = 0o750
# ProtectHome=yes hides these from the service: an ExecStart below them cannot run.
HIDDEN_BY_PROTECT_HOME = (PurePosixPath("/home"), PurePosixPath("/root"), PurePosixPath("/run/user"))
# Jetson GPU/host1x nodes, relative to /dev. DeviceAllow= paths take no wildcards, so they are expanded here.
JETSON_NODE_GLOBS = ("nvmap", "nvhost-*", "host1x-fence", "nvgpu/**/*")
KERNEL_DIR = PurePosixPath("/opt/affect-sensor/kernels")  # head.kernel_dir's default
JETSON_ARCH = "sm_87"  # every Jetson JetPack 6 supports (Orin Nano, NX, AGX)


class InstallError(ValueError):
    """The install cannot proceed; the message names the path and what to do."""


@dataclass(frozen=True)
class Action:
    path: PurePosixPath  # as on the target system
    outcome: str  # "written", "unchanged", "replaced", "mode fixed", "kept (edited)", "linked", "skipped"
    note: str = ""


@dataclass(frozen=True)
class InstallReport:
    root: Path
    actions: tuple[Action, ...]
    jetson: bool
    next_steps: tuple[str, ...] = field(default=())

    @property
    def changed(self) -> bool:
        return any(a.outcome not in ("unchanged", "skipped") for a in self.actions)


def packaged_unit(name: str) -> bytes:
    return (resources.files("edge.service") / "units" / name).read_bytes()


def config_template() -> bytes:
    return (resources.files("edge.service") / "sensor.toml").read_bytes()


def on_target(root: Path, path: PurePosixPath) -> Path:
    return root / path.relative_to("/")


def install(root: Path, exec_path: PurePosixPath, *, jetson: bool | None = None) -> InstallReport:
    """Install everything under `root`. `exec_path` is where `affect-sensor` is on the target system.

    `jetson=None` detects a Jetson by /etc/nv_tegra_release under `root`.
    """
    root = root.resolve()
    if not root.is_dir():
        raise InstallError(f"--root {root}: not a directory")
    _check_exec(root, exec_path)
    is_jetson = (root / "etc/nv_tegra_release").is_file() if jetson is None else jetson
    dropin = jetson_dropin(root) if is_jetson else None

    actions: list[Action] = []
    for name, target, mode in PACKAGED_FILES:
        actions.append(_install_file(root, target, packaged_unit(name), mode, replace=True))
    if dropin is not None:
        actions.append(_install_file(root, JETSON_DROPIN, dropin.encode(), 0o644, replace=True))
        actions.append(_install_file(root, JETSON_UPDATE_DROPIN, update_agent_dropin(dropin).encode(), 0o644,
                                     replace=True))
    actions.extend(_install_config(root))
    if is_jetson:
        actions.append(_install_kernel(root))
    if exec_path != EXEC_LINK:
        actions.append(_link_exec(root, exec_path))
    return InstallReport(root, tuple(actions), is_jetson, tuple(next_steps(root)))


def _check_exec(root: Path, exec_path: PurePosixPath) -> None:
    if not exec_path.is_absolute():
        raise InstallError(f"--exec {exec_path}: must be an absolute path on the target system")
    for hidden in HIDDEN_BY_PROTECT_HOME:
        if exec_path.is_relative_to(hidden):
            raise InstallError(
                f"--exec {exec_path}: below {hidden}, which ProtectHome=yes hides from the service; "
                "install into a venv such as /opt/affect-sensor/venv (docs/jetson.md)"
            )
    found = on_target(root, exec_path)
    if not (found.is_file() and os.access(found, os.X_OK)):
        raise InstallError(f"--exec {exec_path}: no executable file at {found}")


def jetson_dropin(root: Path) -> str:
    """The drop-in allowing this Jetson's GPU nodes, listed one by one from `root`/dev."""
    dev = root / "dev"
    nodes = sorted(
        {p for pattern in JETSON_NODE_GLOBS for p in dev.glob(pattern) if not p.is_dir()},
        key=lambda p: p.relative_to(dev).as_posix(),
    )
    if not nodes:
        raise InstallError(
            f"{dev}: no Jetson GPU device nodes (nvmap, nvhost-*, nvgpu/*); run install-service on the "
            "booted Jetson, or pass --no-jetson for a non-Jetson device"
        )
    lines = [
        "# Generated by `affect-sensor install-service` from the GPU device nodes on this Jetson.",
        "# DeviceAllow= paths take no wildcards, so each node is listed; re-run install-service",
        "# after a JetPack upgrade. Do not edit: add your own drop-in next to this one.",
        "",
        "[Unit]",
        "# CSI cameras are served by nvargus-daemon: start it with us and after it, so its socket exists.",
        "Wants=nvargus-daemon.service",
        "After=nvargus-daemon.service",
        "# The socket below is bind-mounted at our start; a restarted nvargus-daemon makes a new one the old",
        "# mount no longer shows, so restart (and stop) together with it.",
        "PartOf=nvargus-daemon.service",
        "",
        "[Service]",
        "# The argus socket lives in the host /tmp; show it inside PrivateTmp= ('-': fine when absent).",
        "BindPaths=-/tmp/argus_socket",
        "# Where cuda-python looks for JetPack's CUDA libraries (NVRTC for the head kernel).",
        "Environment=CUDA_HOME=/usr/local/cuda",
    ]
    comments = {
        "nvmap": "# nvmap: the Tegra memory allocator CUDA and TensorRT allocate through.",
        "nvhost": "# nvhost-*: GPU channels and host1x sync points (CUDA, video engines).",
        "host1x": "# host1x-fence: sync-point fences of the upstream host1x driver (L4T 36).",
        "nvgpu": "# nvgpu/*: the integrated GPU's control, address-space and channel nodes.",
    }
    seen: set[str] = set()
    for node in nodes:
        rel = node.relative_to(dev).as_posix()
        kind = next(k for k in comments if rel.startswith(k))
        if kind not in seen:
            lines.append(comments[kind])
            seen.add(kind)
        lines.append(f"DeviceAllow=/dev/{rel} rw")
    return "\n".join(lines) + "\n"


def update_agent_dropin(daemon_dropin: str) -> str:
    """The agent builds TensorRT engines and self-tests on the GPU before a switch: same nodes, no camera."""
    nodes = [line for line in daemon_dropin.splitlines() if line.startswith(("DeviceAllow=", "# nv", "# host1x"))]
    return "\n".join([
        "# Generated by `affect-sensor install-service`: GPU access for the update agent's engine builds",
        "# and self-tests. Do not edit: add your own drop-in next to this one.",
        "",
        "[Service]",
        "# Device nodes are needed, so the private /dev goes; the allow-list below replaces it.",
        "PrivateDevices=no",
        "DevicePolicy=closed",
        "# CUDA and TensorRT need writable-and-executable pages.",
        "MemoryDenyWriteExecute=no",
        "# Render nodes /dev/dri/renderD* (JetPack 6 nvidia-drm), as the daemon's unit allows.",
        "DeviceAllow=char-drm rw",
        "Environment=CUDA_HOME=/usr/local/cuda",
        *nodes,
    ]) + "\n"


def _install_kernel(root: Path) -> Action:
    """The head kernel prebuilt for Orin with JetPack's nvcc, or a note that NVRTC will compile it at start."""
    from edge.kernels.build import KernelBuildError, build_cubin, cubin_name, find_nvcc

    target = KERNEL_DIR / cubin_name(JETSON_ARCH)
    path = on_target(root, target)
    if path.is_file():
        return Action(target, "unchanged")
    if find_nvcc() is None:
        return Action(target, "skipped", "nvcc not found (install cuda-nvcc); the daemon compiles it with NVRTC")
    try:
        build_cubin(JETSON_ARCH, path.parent)
    except KernelBuildError as exc:
        first = str(exc).splitlines()[0]
        return Action(target, "skipped", f"{first}; the daemon compiles it with NVRTC at start")
    return Action(target, "written", f"fused head kernel for {JETSON_ARCH}")


def _install_file(root: Path, target: PurePosixPath, data: bytes, mode: int, *, replace: bool) -> Action:
    path = on_target(root, target)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise InstallError(f"{path}: exists and is not a regular file; move it away first")
    if path.is_file():
        if path.read_bytes() == data:
            if stat.S_IMODE(path.stat().st_mode) != mode:
                path.chmod(mode)
                return Action(target, "mode fixed", f"{mode:04o}")
            return Action(target, "unchanged")
        if not replace:
            return Action(target, "kept (edited)")
        _atomic_write(path, data, mode)
        return Action(target, "replaced", "previous content differed; put local changes in a drop-in")
    _atomic_write(path, data, mode)
    return Action(target, "written")


def _install_config(root: Path) -> list[Action]:
    config_dir = on_target(root, CONFIG.parent)
    if not config_dir.exists():
        _make_dirs(config_dir, CONFIG_DIR_MODE)
    template = config_template()
    action = _install_file(root, CONFIG, template, CONFIG_MODE, replace=False)
    if action.outcome != "kept (edited)":
        return [action]
    new = CONFIG.with_name(CONFIG.name + ".new")
    written = _install_file(root, new, template, CONFIG_MODE, replace=True)
    kept = Action(CONFIG, "kept (edited)", f"differs from the template; new template at {new}, merge by hand")
    return [kept, written]


def _link_exec(root: Path, exec_path: PurePosixPath) -> Action:
    link = on_target(root, EXEC_LINK)
    if link.is_symlink():
        if PurePosixPath(os.readlink(link)) == exec_path:
            return Action(EXEC_LINK, "unchanged", f"-> {exec_path}")
    elif link.exists():
        raise InstallError(
            f"{link}: a file that is not our link is in the way; remove it or pass --exec {EXEC_LINK}"
        )
    _make_dirs(link.parent, 0o755)
    tmp = link.with_name(f".{link.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(exec_path)
    os.replace(tmp, link)
    return Action(EXEC_LINK, "linked", f"-> {exec_path}")


def _make_dirs(path: Path, mode: int) -> None:
    """Create missing directories: parents 0755, `path` itself `mode`. Existing ones are not touched."""
    for parent in reversed(path.parents):
        if not parent.exists():
            parent.mkdir()
            parent.chmod(0o755)
    if not path.exists():
        path.mkdir()
        path.chmod(mode)


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    if not path.parent.exists():
        _make_dirs(path.parent, 0o755)
    atomic_write(path, data, mode)


def next_steps(root: Path) -> list[str]:
    """Commands that create the user, apply ownership and enable the units (offline forms for a non-/ root)."""
    if root == Path("/"):
        return [
            "systemd-sysusers affect-sensor.conf",
            "systemd-tmpfiles --create affect-sensor.conf",
            "systemctl daemon-reload",
            f"systemctl enable --now {TARGET} {SERVICE}",
            f"systemctl enable --now {UPDATE_SERVICE}    # only with [update] enabled = true",
            "journalctl -u affect-sensor -f    # follow the log",
        ]
    return [
        f"systemd-sysusers --root={root} affect-sensor.conf",
        f"systemd-tmpfiles --root={root} --create affect-sensor.conf",
        f"systemctl --root={root} enable {TARGET} {SERVICE}",
        f"systemctl --root={root} enable {UPDATE_SERVICE}    # only with [update] enabled = true",
    ]
