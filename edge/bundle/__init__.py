"""Model bundles: manifest schema, atomic writer, verifying reader."""

from edge.bundle.manifest import MANIFEST_NAME, SCHEMA_VERSION, SIGNATURE_NAME, Manifest
from edge.bundle.store import Bundle, BundleError, read_bundle, sha256_file, write_bundle

__all__ = [
    "MANIFEST_NAME",
    "SCHEMA_VERSION",
    "SIGNATURE_NAME",
    "Bundle",
    "BundleError",
    "Manifest",
    "read_bundle",
    "sha256_file",
    "write_bundle",
]
