"""Fleet-update building blocks on their own: signatures, the tar unpacker, resumable downloads, the store."""

from __future__ import annotations

import http.server
import os
import tarfile
import threading
from typing import ClassVar

import pytest
from fleet_helpers import evil_tar, http_server, make_key, signed_tar, variant

from edge.bundle.store import read_bundle, sha256_file
from edge.fleet.archive import ArchiveError, unpack
from edge.fleet.download import DownloadError, DownloadSpec, fetch
from edge.fleet.signing import (
    SignatureError,
    canonical,
    load_signing_key,
    load_trusted_keys,
    sign_document,
    verify_document,
    verify_manifest,
)
from edge.fleet.store import BundleStore

# ---------------------------------------------------------------- signing


def test_documents_verify_only_unchanged_and_only_with_a_trusted_key(tmp_path):
    keys_dir = tmp_path / "keys"
    old, new = make_key(keys_dir, "old"), make_key(keys_dir, "new")
    trusted = load_trusted_keys(keys_dir)
    assert set(trusted) == {old.key_id, new.key_id}  # rotation: both trusted at once
    doc = sign_document(new, {"target": "group:lab", "build": 3})
    assert verify_document(trusted, doc) == new.key_id
    with pytest.raises(SignatureError) as bad:
        verify_document(trusted, {**doc, "build": 4})
    assert bad.value.code == "bad_signature"
    (keys_dir / f"{old.key_id}.pub").unlink()  # the old key is retired
    with pytest.raises(SignatureError) as unknown:
        verify_document(load_trusted_keys(keys_dir), sign_document(old, {"build": 3}))
    assert unknown.value.code == "unknown_key"
    assert canonical({"b": 1, "a": "é", "signature": "x"}) == '{"a":"é","b":1}'.encode()


def test_manifest_signature_covers_the_exact_bytes(tmp_path):
    from edge.fleet.signing import manifest_signature

    key = make_key(tmp_path / "keys")
    trusted = load_trusted_keys(tmp_path / "keys")
    raw = b'{"name": "x"}\n'
    sig = manifest_signature(key, raw)
    assert verify_manifest(trusted, raw, sig) == key.key_id
    with pytest.raises(SignatureError, match="does not verify"):
        verify_manifest(trusted, raw.replace(b"x", b"y"), sig)
    with pytest.raises(SignatureError, match="not a valid signature file"):
        verify_manifest(trusted, raw, b"garbage")


def test_signing_keys_are_private_and_never_overwritten(tmp_path):
    key = make_key(tmp_path, "ops")
    path = tmp_path / "ops.key"
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        make_key(tmp_path, "ops")
    os.chmod(path, 0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        load_signing_key(path)
    os.chmod(path, 0o600)
    assert load_signing_key(path).key_id == key.key_id
    (tmp_path / "junk.pub").write_text("not a key")
    with pytest.raises(ValueError, match=r"junk\.pub"):
        load_trusted_keys(tmp_path)


# ---------------------------------------------------------------- archives


def test_signed_tar_round_trips_into_a_verified_bundle(tmp_path, tiny_bundle):
    key = make_key(tmp_path / "keys")
    tar = signed_tar(tiny_bundle, key, tmp_path / "b.tar")
    unpack(tar, tmp_path / "out", 10**8)
    assert read_bundle(tmp_path / "out").manifest == read_bundle(tiny_bundle).manifest
    verify_manifest(load_trusted_keys(tmp_path / "keys"), (tmp_path / "out/manifest.json").read_bytes(),
                    (tmp_path / "out/manifest.sig").read_bytes())


@pytest.mark.parametrize("how, message", [("dotdot", "'..'"), ("absolute", "absolute"), ("symlink", "links"),
                                          ("hardlink", "links")])
def test_hostile_tars_are_refused_and_nothing_escapes(tmp_path, tiny_bundle, how, message):
    tar = evil_tar(tiny_bundle, make_key(tmp_path / "keys"), tmp_path / "evil.tar", how)
    dest = tmp_path / "a" / "b" / "out"
    dest.parent.mkdir(parents=True)
    with pytest.raises(ArchiveError, match=message):
        unpack(tar, dest, 10**8)
    assert not (tmp_path / "a" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()


def test_special_files_and_size_caps_are_refused(tmp_path):
    tar_path = tmp_path / "fifo.tar"
    with tarfile.open(tar_path, "w") as tar:
        info = tarfile.TarInfo("pipe")
        info.type = tarfile.FIFOTYPE
        tar.addfile(info)
    with pytest.raises(ArchiveError, match="special files"):
        unpack(tar_path, tmp_path / "o1", 10**6)
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 5000)
    with tarfile.open(tmp_path / "big.tar", "w") as tar:
        tar.add(big, arcname="big.bin")
    with pytest.raises(ArchiveError, match="cap"):
        unpack(tmp_path / "big.tar", tmp_path / "o2", 4096)
    (tmp_path / "junk.tar").write_bytes(b"\x00not a tar" * 10)
    with pytest.raises(ArchiveError):
        unpack(tmp_path / "junk.tar", tmp_path / "o3", 4096)


# ---------------------------------------------------------------- downloads


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Sends half the file and drops the connection on the first request; honours Range afterwards."""

    data = b""
    requests: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        rng = self.headers.get("Range")
        type(self).requests.append(rng)
        start = int(rng.split("=")[1].rstrip("-")) if rng else 0
        body = self.data[start:]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if len(type(self).requests) == 1:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_an_interrupted_download_resumes_with_range(tmp_path):
    data = os.urandom(300_000)
    _Flaky.data, _Flaky.requests = data, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        import hashlib

        url = f"http://127.0.0.1:{server.server_address[1]}/b.tar"
        spec = DownloadSpec(url, hashlib.sha256(data).hexdigest(), len(data), 5, allow_http=True)
        part = fetch(spec, tmp_path / "b.part")
        assert part.read_bytes() == data
        assert _Flaky.requests[0] is None and _Flaky.requests[1] == "bytes=150000-"
    finally:
        server.shutdown()
        server.server_close()


def test_downloads_refuse_truncation_oversize_wrong_hash_and_plain_http(tmp_path):
    payload = os.urandom(10_000)
    (tmp_path / "www").mkdir()
    (tmp_path / "www/short.tar").write_bytes(payload[:4000])
    (tmp_path / "www/full.tar").write_bytes(payload)
    sha = __import__("hashlib").sha256(payload).hexdigest()
    with http_server(tmp_path / "www") as base:
        with pytest.raises(DownloadError, match="truncated") as short:
            fetch(DownloadSpec(f"{base}/short.tar", sha, len(payload), 5, 2, allow_http=True), tmp_path / "1.part")
        assert short.value.code == "download_failed"
        with pytest.raises(DownloadError, match="more than") as big:
            fetch(DownloadSpec(f"{base}/full.tar", sha, 5000, 5, allow_http=True), tmp_path / "2.part")
        assert big.value.code == "too_large"
        with pytest.raises(DownloadError) as wrong:
            fetch(DownloadSpec(f"{base}/full.tar", "0" * 64, len(payload), 5, allow_http=True), tmp_path / "3.part")
        assert wrong.value.code == "hash_mismatch" and not (tmp_path / "3.part").exists()
        with pytest.raises(DownloadError, match="plain http"):
            fetch(DownloadSpec(f"{base}/full.tar", sha, len(payload), 5), tmp_path / "4.part")
        with pytest.raises(DownloadError, match="HTTP 404"):
            fetch(DownloadSpec(f"{base}/missing.tar", sha, len(payload), 5, allow_http=True), tmp_path / "5.part")
    local = fetch(DownloadSpec(f"file://{tmp_path}/www/full.tar", sha, len(payload)), tmp_path / "6.part")
    assert sha256_file(local) == sha


# ---------------------------------------------------------------- store


def test_store_switches_atomically_keeps_previous_and_collects_garbage(tmp_path, tiny_bundle):
    store = BundleStore(tmp_path / "bundles")
    first = store.seed(read_bundle(tiny_bundle))
    assert store.current_dir() == first and os.readlink(tmp_path / "bundles/current") == first.name
    dirs = [first]
    for build in (2, 3, 4):
        staged = variant(tiny_bundle, store.staging / f"s{build}", build=build)
        dirs.append(store.install(staged, read_bundle(staged).manifest))
        assert store.switch(dirs[-1]) == dirs[-2]
    assert store.current_dir() == dirs[3] and store.previous_dir() == dirs[2]
    removed = store.gc(keep=2)
    assert set(removed) == {dirs[0], dirs[1]}
    assert {p.name for p in store.root.iterdir() if not p.name.startswith(".")} == {
        "current", "previous", dirs[2].name, dirs[3].name}
    store.rollback_to(dirs[2])
    assert store.current().manifest.build == 3
    assert not list(store.root.glob(".current.*"))  # no temp link left behind


@pytest.mark.parametrize("members, message", [
    ([("a", b"x"), ("a/b", b"y")], "'a' is a file, not a directory"),
    ([("a", b"x"), ("a/b/c", b"y")], "'a' is a file, not a directory"),
    ([("a/b", b"y"), ("a", b"x")], "a directory of that name came before it"),
    ([("a/", None), ("a", b"x")], "appears twice"),
])
def test_a_file_and_a_path_through_it_are_an_unsafe_archive_not_a_crash(tmp_path, members, message):
    import io

    tar_path = tmp_path / "clash.tar"
    with tarfile.open(tar_path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ArchiveError, match=message) as err:
        unpack(tar_path, tmp_path / "out", 10**6)
    assert err.value.code == "unsafe_archive"
