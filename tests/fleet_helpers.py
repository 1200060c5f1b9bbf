"""Helpers for the fleet-update tests: bundle variants, signed tars, a loopback HTTP server, device configs."""

from __future__ import annotations

import http.server
import io
import tarfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from edge.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME
from edge.bundle.store import read_bundle, rebuild_bundle
from edge.fleet.operator import desired_document, sign_bundle
from edge.fleet.signing import SigningKey, generate_key, load_signing_key


def variant(src: Path, dest: Path, *, build: int, version: str | None = None, replace: dict[str, bytes] | None = None,
            **fields: Any) -> Path:
    """A copy of bundle `src` with other manifest fields and (re-hashed) file contents."""
    return rebuild_bundle(src, dest, replace=replace, build=build, version=version or f"0.0.{build}", **fields).path


def wrong_golden(src: Path) -> dict[str, bytes]:
    """Golden outputs no backend reproduces: the self-test must fail on them."""
    bundle = read_bundle(src)
    name = bundle.manifest.golden.outputs
    with np.load(src / name) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["fe_prob"] = np.roll(arrays["fe_prob"], 1, axis=1) * 0 + 1.0
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return {name: buf.getvalue()}


def nan_on_real_faces(src: Path) -> dict[str, bytes]:
    """Graphs that are exact on the golden inputs but give NaN features on real camera crops.

    The golden inputs are unit-variance noise that reaches past 3, while a real
    crop normalised with mean 0.5 and std 0.25 stays within +-2: the kind of
    model that passes its own self-test and then fails on the camera, which
    only the health window catches.
    """
    import onnx
    from onnx import TensorProto, helper

    bundle = read_bundle(src)
    out: dict[str, bytes] = {}
    for name, entry in bundle.manifest.files.items():
        if not entry.role.startswith("onnx_"):
            continue
        model = onnx.load_from_string((src / name).read_bytes())
        graph = model.graph
        image = graph.input[0].name
        f_out = bundle.manifest.output.f
        for node in graph.node:  # rename the producer of f so the poison can sit between
            node.output[:] = [f"{o}__raw" if o == f_out else o for o in node.output]
        graph.initializer.extend([
            helper.make_tensor("poison_limit", TensorProto.FLOAT, [], [3.0]),
            helper.make_tensor("poison_nan", TensorProto.FLOAT, [], [float("nan")]),
            helper.make_tensor("poison_zero", TensorProto.FLOAT, [], [0.0]),
        ])
        graph.node.extend([
            helper.make_node("ReduceMax", [image], ["poison_max"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Less", ["poison_max", "poison_limit"], ["poison_hit"]),
            helper.make_node("Where", ["poison_hit", "poison_nan", "poison_zero"], ["poison_add"]),
            helper.make_node("Unsqueeze", ["poison_add", "poison_one"], ["poison_col"]),
            helper.make_node("Add", [f"{f_out}__raw", "poison_col"], [f_out]),
        ])
        graph.initializer.append(helper.make_tensor("poison_one", TensorProto.INT64, [1], [1]))
        onnx.checker.check_model(model)
        out[name] = model.SerializeToString()
    return out


def make_key(directory: Path, name: str = "fleet") -> SigningKey:
    key_path, _, _ = generate_key(directory, name)
    return load_signing_key(key_path)


def signed_tar(bundle: Path, key: SigningKey, out: Path) -> Path:
    sign_bundle(bundle, key, out)
    return out


def evil_tar(bundle: Path, key: SigningKey, out: Path, how: str) -> Path:
    """A signed bundle tar with one hostile extra member: `dotdot`, `absolute`, `symlink` or `hardlink`."""
    raw = (bundle / MANIFEST_NAME).read_bytes()
    from edge.fleet.signing import manifest_signature

    with tarfile.open(out, "w") as tar:
        for name, data in ((MANIFEST_NAME, raw), (SIGNATURE_NAME, manifest_signature(key, raw))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name in read_bundle(bundle).manifest.files:
            tar.add(bundle / name, arcname=name)
        info = tarfile.TarInfo({"dotdot": "../../evil.txt", "absolute": "/tmp/evil.txt"}.get(how, "evil"))
        if how == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        elif how == "hardlink":
            info.type, info.linkname = tarfile.LNKTYPE, MANIFEST_NAME
            tar.addfile(info)
        else:
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    return out


def document(tar: Path, url: str, key: SigningKey, target: str, **kw: Any) -> dict[str, Any]:
    """A signed desired document; the archive is not checked, so hostile tars get documents too."""
    return desired_document(tar, url, target, key, check_archive=False, **kw)


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Static files with HTTP Range support (as nginx or S3 have), optionally throttled to test resumes."""

    root: Path
    throttle_s = 0.0  # pause after each 16 KiB chunk

    def do_GET(self) -> None:
        path = self.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        try:
            for i in range(start, len(data), 16384):
                self.wfile.write(data[i : i + 16384])
                if self.throttle_s:
                    time.sleep(self.throttle_s)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def http_server(root: Path, throttle_s: float = 0.0):
    """Serve `root` on 127.0.0.1 (a free port); yields the base URL."""
    handler = type("Handler", (RangeHandler,), {"root": root, "throttle_s": throttle_s})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def device_config(tmp: Path, device: str, keys: Path, broker_port: int | None, *, group: str = "lab",
                  window_s: float = 1.5, extra: str = "", source: str = '"demo"') -> Path:
    """A device TOML for a simulated device: demo camera (or `source`, a TOML value plus more [source] lines),
    fleet updates on, state under `tmp`; `extra` is appended to [update]."""
    mqtt = (f'[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {broker_port}\nprefix = "fleet-test"\n'
            if broker_port else "")
    text = (f'[device]\nid = "{device}"\ngroup = "{group}"\n[source]\nuri = {source}\nfps = 10\n[model]\nthreads = 1\n'
            f'[stats]\ninterval_s = 1.0\n{mqtt}'
            f'[update]\nenabled = true\nbundles_dir = "{tmp / "bundles"}"\ntrusted_keys_dir = "{keys}"\n'
            f'allow_http = true\nhealth_file = "{tmp / "health.json"}"\nhealth_window_s = {window_s}\n'
            f'health_min_frames = 3\nswap_timeout_s = 30\ndownload_timeout_s = 5\n{extra}')
    path = tmp / "sensor.toml"
    path.write_text(text)
    return path
