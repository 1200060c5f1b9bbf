"""The built-in default bundle that ships inside the package (made by `affect-quantize recipe default`)."""

from __future__ import annotations

from pathlib import Path

from edge.bundle.store import Bundle, BundleError, read_bundle

DEFAULT_BUNDLE_DIR = Path(__file__).resolve().parents[1] / "models" / "default"


def resolve_bundle(configured: Path | None, *, verify_hashes: bool = True) -> Bundle:
    """The configured bundle, or the built-in default; verified either way (hashes unless told not to)."""
    path = configured if configured is not None else DEFAULT_BUNDLE_DIR
    if configured is None and not path.is_dir():
        raise BundleError(path, "", "this install has no built-in default bundle "
                                    "(build one with `affect-quantize recipe default`, or set model.bundle)")
    return read_bundle(path, verify_hashes=verify_hashes)
