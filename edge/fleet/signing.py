"""Ed25519 keys, key ids, and the two signed things of a fleet: bundle manifests and desired-state documents.

A device trusts a directory of public keys (`update.trusted_keys_dir`, one PEM
file per key), so keys rotate by adding the new key, signing with it, then
removing the old one. A key id is the first 16 hex digits of the SHA-256 of
the raw 32-byte public key: stable, derived, never chosen by whoever signs.

The manifest signature covers `manifest.json` byte for byte, and the manifest
lists the SHA-256 of every file, so one signature covers the whole bundle. A
desired document is signed over its canonical JSON (sorted keys, no spaces,
UTF-8) without the `signature` field.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.fsutil import atomic_write

SIGNATURE_FORMAT = 1


class SignatureError(ValueError):
    """A signature that must not be trusted. `code` is the update reason reported over MQTT."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey

    @property
    def key_id(self) -> str:
        return key_id(self.private.public_key())

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self.private.sign(data)).decode("ascii")


def generate_key(directory: Path, name: str) -> tuple[Path, Path, str]:
    """Write `<name>.key` (private, mode 0600) and `<key id>.pub`; refuse to overwrite a key."""
    directory.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    kid = key_id(private.public_key())
    key_path, pub_path = directory / f"{name}.key", directory / f"{kid}.pub"
    if key_path.exists():
        raise FileExistsError(f"{key_path} already exists; refusing to overwrite a signing key")
    atomic_write(key_path, private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()), mode=0o600)
    public = private.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    atomic_write(pub_path, public, mode=0o644)
    return key_path, pub_path, kid


def load_signing_key(path: Path) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ValueError(f"signing key {path}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise ValueError(f"signing key {path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"signing key {path}: not an Ed25519 key")
    if os.name == "posix" and path.stat().st_mode & 0o077:
        raise ValueError(f"signing key {path}: readable by group or others; chmod 600 it")
    return SigningKey(key)


def load_trusted_keys(directory: Path) -> dict[str, Ed25519PublicKey]:
    """Every `*.pub` in `directory`, by key id. A file that is not an Ed25519 public key is an error."""
    if not directory.is_dir():
        raise ValueError(f"trusted keys directory {directory} does not exist")
    keys: dict[str, Ed25519PublicKey] = {}
    for path in sorted(directory.glob("*.pub")):
        try:
            public = serialization.load_pem_public_key(path.read_bytes())
        except ValueError as exc:
            raise ValueError(f"trusted key {path}: not a PEM public key ({exc})") from None
        if not isinstance(public, Ed25519PublicKey):
            raise ValueError(f"trusted key {path}: not an Ed25519 key")
        keys[key_id(public)] = public
    if not keys:
        raise ValueError(f"trusted keys directory {directory} holds no *.pub key")
    return keys


def verify(keys: dict[str, Ed25519PublicKey], kid: str, signature_b64: str, data: bytes, what: str) -> None:
    public = keys.get(kid)
    if public is None:
        raise SignatureError("unknown_key", f"{what} is signed by key {kid}, which this device does not trust")
    try:
        public.verify(base64.b64decode(signature_b64, validate=True), data)
    except (InvalidSignature, binascii.Error, ValueError):
        raise SignatureError("bad_signature", f"{what}: signature by key {kid} does not verify") from None


# ---------------------------------------------------------------- bundle manifests


def manifest_signature(key: SigningKey, manifest_bytes: bytes) -> bytes:
    """The `manifest.sig` file: JSON with the key id and the signature over the exact manifest bytes."""
    doc = {"format": SIGNATURE_FORMAT, "algorithm": "ed25519", "key_id": key.key_id,
           "signature": key.sign(manifest_bytes)}
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def verify_manifest(keys: dict[str, Ed25519PublicKey], manifest_bytes: bytes, signature_file: bytes) -> str:
    """Check `manifest.sig` against the manifest bytes; return the signing key id."""
    try:
        doc = json.loads(signature_file)
        kid, sig = doc["key_id"], doc["signature"]
        if doc.get("algorithm") != "ed25519" or doc.get("format") != SIGNATURE_FORMAT:
            raise ValueError("unsupported algorithm or format")
        if not isinstance(kid, str) or not isinstance(sig, str):
            raise ValueError("key_id and signature must be strings")
    except (ValueError, KeyError, TypeError) as exc:
        raise SignatureError("bad_signature", f"manifest.sig is not a valid signature file ({exc})") from None
    verify(keys, kid, sig, manifest_bytes, "manifest.json")
    return kid


# ---------------------------------------------------------------- desired-state documents


def canonical(doc: dict[str, Any]) -> bytes:
    body = {k: v for k, v in doc.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign_document(key: SigningKey, doc: dict[str, Any]) -> dict[str, Any]:
    signed = {**doc, "key_id": key.key_id}
    signed["signature"] = key.sign(canonical(signed))
    return signed


def verify_document(keys: dict[str, Ed25519PublicKey], doc: dict[str, Any]) -> str:
    kid, sig = doc.get("key_id"), doc.get("signature")
    if not isinstance(kid, str) or not isinstance(sig, str):
        raise SignatureError("bad_signature", "desired document has no key_id / signature")
    verify(keys, kid, sig, canonical(doc), "desired document")
    return kid
