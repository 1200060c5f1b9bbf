"""The version locks in locks/ still satisfy pyproject.toml: a dependency added or re-ranged without re-running
tools/lock.sh fails here, before a device installs a lock that cannot resolve."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
LOCKS = {
    # lock file: (extras it covers, the interpreter it was resolved for)
    "ci-py311.txt": (("edge", "quantize", "dev"), {"python_version": "3.11", "python_full_version": "3.11.7",
                                                    "platform_machine": "x86_64", "sys_platform": "linux"}),
    "jetpack6-py310.txt": (("edge-jetson", "dev"), {"python_version": "3.10", "python_full_version": "3.10.12",
                                                    "platform_machine": "aarch64", "sys_platform": "linux"}),
}


def pins(path: Path) -> dict[str, Version]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"{path.name}: {line!r} is not an exact pin"
        out[canonicalize_name(req.name)] = Version(spec.version)
    return out


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_lock_pins_every_direct_dependency_within_its_range(lock: str) -> None:
    extras, env_overrides = LOCKS[lock]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in extras:
        wanted += project["optional-dependencies"][extra]
    env = {**default_environment(), **env_overrides}
    pinned = pins(REPO / "locks" / lock)
    checked = 0
    for text in wanted:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        assert name in pinned, f"locks/{lock} has no pin for {req.name} (run tools/lock.sh)"
        assert req.specifier.contains(pinned[name], prereleases=True), (
            f"locks/{lock} pins {req.name}=={pinned[name]}, outside pyproject's {req.specifier} (run tools/lock.sh)"
        )
        checked += 1
    assert checked >= 5
