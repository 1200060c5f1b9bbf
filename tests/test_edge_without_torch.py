"""`edge` must import and run on devices without torch: import every module with torch made unimportable."""

import subprocess
import sys

PROBE = r"""
import importlib, pkgutil, sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"torch is not available on devices (import of {name!r})")
        return None

sys.meta_path.insert(0, NoTorch())
import edge
for info in pkgutil.walk_packages(edge.__path__, "edge."):
    if info.name == "edge.__main__":
        continue
    importlib.import_module(info.name)
assert "torch" not in sys.modules
print("imported", len([m for m in sys.modules if m == "edge" or m.startswith("edge.")]), "edge modules")
"""


def test_every_edge_module_imports_without_torch():
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "imported" in result.stdout


def test_device_cli_help_does_not_load_torch():
    probe = "import sys; from edge.cli.main import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
    probe += "assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "check-config" in result.stdout and "bundle" in result.stdout
