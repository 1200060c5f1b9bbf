"""Which Jetson and JetPack this is, and whether this TensorRT is one the runtime supports.

Read from files JetPack itself writes: `/etc/nv_tegra_release` (the L4T release,
e.g. "# R36 (release), REVISION: 4.3, ...") and `/proc/device-tree/model` (the
board name). Orin Nano, NX and AGX all report compute capability 8.7, so a
prebuilt engine is matched on the board name and L4T release as well
(engine_cache.EngineKey).

Supported: JetPack 6 (L4T R36.x) with its TensorRT (8.6 on JetPack 6.0, 10.3 from
6.1), and TensorRT >= 8.6 elsewhere. Older releases get one clear error instead
of an engine build that fails half-way (docs/jetson.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edge.runtime.backend import BackendError

MIN_L4T = (36, 0)
MIN_TENSORRT = (8, 6)
SUPPORTED = "JetPack 6.x (L4T R36.x) with TensorRT 8.6 (JetPack 6.0) or 10.x (JetPack 6.1 and later)"


class PlatformError(BackendError):
    """This JetPack / TensorRT is older than the runtime supports; the message says what is needed."""


@dataclass(frozen=True)
class JetsonPlatform:
    l4t: str  # "36.4.3"
    model: str  # "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super"

    @property
    def model_slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.model.lower()).strip("-") or "unknown"


def parse_l4t_release(text: str) -> str | None:
    """'# R36 (release), REVISION: 4.3, ...' -> '36.4.3'; None if the line is not of that form."""
    match = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)(?:\.(\d+))?", text)
    if match is None:
        return None
    major, minor, patch = match.group(1), match.group(2), match.group(3) or "0"
    return f"{int(major)}.{int(minor)}.{int(patch)}"


def read_platform(root: Path = Path("/")) -> JetsonPlatform | None:
    """The Jetson this runs on, or None elsewhere (no /etc/nv_tegra_release)."""
    release = root / "etc/nv_tegra_release"
    try:
        l4t = parse_l4t_release(release.read_text(errors="replace"))
    except OSError:
        return None
    if l4t is None:
        raise PlatformError(f"{release}: not an L4T release line; cannot tell which JetPack this is")
    model = "unknown Jetson"
    for path in (root / "proc/device-tree/model", root / "sys/firmware/devicetree/base/model"):
        try:
            model = path.read_bytes().split(b"\0", 1)[0].decode(errors="replace").strip() or model
            break
        except OSError:
            continue
    return JetsonPlatform(l4t, model)


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def check_supported(platform: JetsonPlatform | None, tensorrt_version: str) -> None:
    """Raise `PlatformError` below JetPack 6 / TensorRT 8.6, naming what was found and what is supported."""
    found = []
    if platform is not None and version_tuple(platform.l4t)[:2] < MIN_L4T:
        found.append(f"L4T R{platform.l4t} (JetPack 5 or older)")
    if version_tuple(tensorrt_version)[:2] < MIN_TENSORRT:
        found.append(f"TensorRT {tensorrt_version}")
    if found:
        raise PlatformError(f"{' and '.join(found)} is older than supported: needs {SUPPORTED} (docs/jetson.md)")
