"""The update agent's state machine in-process: every refusal has its reason and leaves the running bundle alone.

The end-to-end versions (real broker, HTTP server, daemon and agent processes,
kill -9) are in test_fleet_e2e.py; here each case is fast and isolated.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import shutil
import socket
import tarfile
import threading
import time
from contextlib import contextmanager

import pytest
from fleet_helpers import device_config, document, evil_tar, http_server, make_key, signed_tar, variant, wrong_golden

from edge.bundle.store import read_bundle, sha256_file
from edge.config import load_config
from edge.fleet.agent import UpdateAgent
from edge.fleet.archive import pack_bundle
from edge.fleet.signing import manifest_signature, sign_document
from edge.fleet.store import BundleStore, Journal, Trial
from edge.publish.payloads import UpdateDesired


@pytest.fixture(scope="module")
def kit(tmp_path_factory, tiny_bundle):
    """Signed tars of bundle variants, built once: what an operator would have on their HTTP server."""
    root = tmp_path_factory.mktemp("fleet-kit")
    keys = root / "keys"
    key = make_key(keys)
    rogue = make_key(root / "rogue")
    (root / "rogue" / f"{rogue.key_id}.pub").unlink()
    www = root / "www"
    www.mkdir()
    tars = {}
    for name, build, kw in (("b2", 2, {}), ("b3", 3, {}),
                            ("expired", 4, {"expires": "2020-01-01T00:00:00Z"}),
                            ("badgolden", 5, {"replace": wrong_golden(tiny_bundle)})):
        tars[name] = signed_tar(variant(tiny_bundle, root / name, build=build, **kw), key, www / f"{name}.tar")
    tars["rogue"] = signed_tar(root / "b3", rogue, www / "rogue.tar")
    for how in ("dotdot", "absolute", "symlink"):
        tars[how] = evil_tar(root / "b3", key, www / f"{how}.tar", how)
    # A correctly signed manifest whose listed file was swapped afterwards.
    raw = (root / "b3" / "manifest.json").read_bytes()
    tampered = root / "tampered"
    shutil.copytree(root / "b3", tampered)
    head = tampered / "head.npz"
    head.write_bytes(head.read_bytes()[:-4] + b"XXXX")
    pack_bundle(tampered, list(read_bundle(root / "b3").manifest.files), raw, manifest_signature(key, raw),
                www / "tampered.tar")
    tars["tampered"] = www / "tampered.tar"
    full = tars["b3"].read_bytes()
    (www / "short.tar").write_bytes(full[: len(full) // 2])
    return {"root": root, "keys": keys, "key": key, "rogue": rogue, "www": www, "tars": tars, "tiny": tiny_bundle}


@pytest.fixture
def device(tmp_path, kit):
    config = load_config(device_config(tmp_path, "cam-01", kit["keys"], None, window_s=0))
    reports = []
    agent = UpdateAgent(config, "cam-01", reports.append)
    store = BundleStore(config.update.bundles_dir)
    store.seed(read_bundle(kit["tiny"]))
    agent.start()
    return agent, store, reports


def url(kit, name: str) -> str:
    return f"file://{kit['tars'][name]}"


def offer(agent: UpdateAgent, doc: dict, topic: str = "fleet-test/cam-01/update/desired") -> None:
    agent.handle(topic, json.dumps(doc).encode())


def test_a_good_bundle_becomes_active_and_the_old_one_is_kept_for_rollback(device, kit):
    agent, store, reports = device
    offer(agent, document(kit["tars"]["b2"], url(kit, "b2"), kit["key"], "device:cam-01"))
    states = [r.state for r in reports]
    assert states[-5:] == ["verifying", "self_testing", "activating", "health_check", "active"]
    assert "downloading" in states
    assert store.current().manifest.build == 2 and read_bundle(store.previous_dir()).manifest.build == 1
    assert reports[-1].current.build == 2 and reports[-1].reason is None
    assert not list(store.staging.iterdir())  # nothing left in staging


def test_group_documents_apply_and_the_newest_document_wins(device, kit):
    agent, store, _ = device
    offer(agent, document(kit["tars"]["b2"], url(kit, "b2"), kit["key"], "group:lab"),
          "fleet-test/groups/lab/update/desired")
    assert store.current().manifest.build == 2
    offer(agent, document(kit["tars"]["b3"], url(kit, "b3"), kit["key"], "device:cam-01"))
    assert store.current().manifest.build == 3


CASES = {
    "bad_signature": lambda k: {**document(k["tars"]["b2"], url(k, "b2"), k["key"], "device:cam-01"),
                                "url": url(k, "b3")},
    "unknown_key": lambda k: document(k["tars"]["b2"], url(k, "b2"), k["rogue"], "device:cam-01"),
    "unknown_key (manifest)": lambda k: document(k["tars"]["rogue"], url(k, "rogue"), k["key"], "device:cam-01"),
    "hash_mismatch": lambda k: {**document(k["tars"]["b2"], url(k, "b3"), k["key"], "device:cam-01")},
    "hash_mismatch (file)": lambda k: document(k["tars"]["tampered"], url(k, "tampered"), k["key"], "device:cam-01"),
    "unsafe_archive (..)": lambda k: document(k["tars"]["dotdot"], url(k, "dotdot"), k["key"], "device:cam-01"),
    "unsafe_archive (/)": lambda k: document(k["tars"]["absolute"], url(k, "absolute"), k["key"], "device:cam-01"),
    "unsafe_archive (link)": lambda k: document(k["tars"]["symlink"], url(k, "symlink"), k["key"], "device:cam-01"),
    "expired": lambda k: document(k["tars"]["expired"], url(k, "expired"), k["key"], "device:cam-01"),
    "expired (document)": lambda k: document(k["tars"]["b2"], url(k, "b2"), k["key"], "device:cam-01",
                                             expires_in_s=-1),
    "selftest_failed": lambda k: document(k["tars"]["badgolden"], url(k, "badgolden"), k["key"], "device:cam-01"),
    "bad_document": lambda k: document(k["tars"]["b2"], url(k, "b2"), k["key"], "device:cam-99"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_bad_update_is_refused_with_its_reason_and_the_running_bundle_stays(device, kit, case):
    agent, store, reports = device
    before = store.current_dir()
    offer(agent, CASES[case](kit))
    assert reports[-1].state == "failed", reports[-1]
    assert reports[-1].reason == case.split(" ")[0], reports[-1].message
    assert store.current_dir() == before and read_bundle(before).manifest.build == 1
    assert not [p for p in store.staging.iterdir() if not p.name.endswith(".part")]


def test_a_truncated_download_is_refused_and_may_be_retried(device, kit):
    agent, store, reports = device
    with http_server(kit["www"]) as base:
        doc = document(kit["tars"]["b3"], f"{base}/short.tar", kit["key"], "device:cam-01")
        offer(agent, doc)
    assert (reports[-1].state, reports[-1].reason) == ("failed", "download_failed")
    assert "truncated" in reports[-1].message
    assert store.current().manifest.build == 1
    assert not store.journal().refused  # transient: a later retry may succeed


def test_older_builds_need_an_operator_signed_downgrade(device, kit):
    agent, store, reports = device
    offer(agent, document(kit["tars"]["b3"], url(kit, "b3"), kit["key"], "device:cam-01"))
    offer(agent, document(kit["tars"]["b2"], url(kit, "b2"), kit["key"], "device:cam-01"))
    assert (reports[-1].state, reports[-1].reason) == ("failed", "older_build")
    assert store.current().manifest.build == 3
    offer(agent, document(kit["tars"]["b2"], url(kit, "b2"), kit["key"], "device:cam-01", allow_downgrade=True))
    assert reports[-1].state == "active" and store.current().manifest.build == 2


def test_a_refused_document_is_remembered_and_not_fetched_again(device, kit):
    agent, _, reports = device
    doc = document(kit["tars"]["badgolden"], url(kit, "badgolden"), kit["key"], "device:cam-01")
    offer(agent, doc)
    n = len(reports)
    offer(agent, doc)
    assert [r.state for r in reports[n:]] == ["failed"] and reports[-1].reason == "selftest_failed"


def test_a_switch_interrupted_before_confirmation_is_rolled_back_on_restart(tmp_path, kit):
    """The agent died in the health window and no daemon confirms the new bundle: back to the previous one."""
    config = load_config(device_config(tmp_path, "cam-01", kit["keys"], None, window_s=1),
                         ["update.swap_timeout_s=0.5"])
    store = BundleStore(config.update.bundles_dir)
    first = store.seed(read_bundle(kit["tiny"]))
    staged = variant(kit["tiny"], store.staging / "s", build=2)
    second = store.install(staged, read_bundle(staged).manifest)
    store.write_journal(Journal(trial=Trial(candidate=second.name, previous=first.name, document="ab" * 16)))
    store.switch(second)
    reports = []
    UpdateAgent(config, "cam-01", reports.append).start()
    assert store.current_dir() == first
    assert [r.state for r in reports][-2:] == ["rolled_back", "idle"]
    # No daemon judged the bundle: a transient cause, not remembered, so the retained document is retried.
    assert reports[-2].reason == "no_frames" and "is the daemon running" in reports[-2].message
    journal = store.journal()
    assert journal.trial is None and not journal.refused
    # Hygiene: the rolled-back bundle is gone and `previous` no longer names what is now current.
    assert not second.exists() and store.previous_dir() is None



# ---------------------------------------------------------------- issue 19: replay, downloads, hygiene, archives


class _HostileMirror(http.server.BaseHTTPRequestHandler):
    """Serves bytes of the right length that are not the bundle, and drops every connection half-way."""

    data = b""

    def do_GET(self) -> None:
        rng = self.headers.get("Range")
        start = int(rng.split("=")[1].rstrip("-")) if rng else 0
        body = self.data[start:]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, *args) -> None:
        pass


@contextmanager
def hostile_mirror(size: int):
    handler = type("Handler", (_HostileMirror,), {"data": os.urandom(size)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_partial_download_poisoned_by_a_mirror_is_thrown_away_and_fetched_again(device, kit):
    agent, store, reports = device
    tar = kit["tars"]["b2"]
    with hostile_mirror(tar.stat().st_size) as bad, http_server(kit["www"]) as good:
        offer(agent, document(tar, f"{bad}/b2.tar", kit["key"], "device:cam-01"))
        assert (reports[-1].state, reports[-1].reason) == ("failed", "download_failed")
        part = store.staging / f"{sha256_file(tar)}.tar.part"
        assert part.stat().st_size > 0 and not store.journal().refused  # resumable, not remembered
        # The operator's correct document for the same tar resumes those bytes: they fail the hash, so the
        # agent starts that download once more from zero instead of refusing the document for good.
        offer(agent, document(tar, f"{good}/b2.tar", kit["key"], "device:cam-01"))
    assert reports[-1].state == "active" and store.current().manifest.build == 2, reports[-1]
    assert not store.journal().refused and not list(store.staging.iterdir())


def test_refusals_leave_no_partial_download_and_no_bundle_in_the_store(device, kit):
    agent, store, reports = device
    offer(agent, document(kit["tars"]["b3"], url(kit, "b3"), kit["key"], "device:cam-01"))
    assert store.current().manifest.build == 3
    with hostile_mirror(kit["tars"]["expired"].stat().st_size) as bad:
        offer(agent, document(kit["tars"]["expired"], f"{bad}/x.tar", kit["key"], "device:cam-01"))
    assert reports[-1].reason == "download_failed" and len(list(store.staging.glob("*.part"))) == 1
    offer(agent, document(kit["tars"]["b2"], url(kit, "b2"), kit["key"], "device:cam-01"))  # refused for good
    assert reports[-1].reason == "older_build"
    assert list(store.staging.iterdir()) == []  # the superseded partial download went with it
    # A server that sends more than the signed size: refused for good, and its partial bytes with it.
    with http_server(kit["www"]) as base:
        body = {k: v for k, v in document(kit["tars"]["b2"], f"{base}/b3.tar", kit["key"], "device:cam-01",
                                          allow_downgrade=True).items() if k not in ("signature", "key_id")}
        offer(agent, sign_document(kit["key"], {**body, "sha256": sha256_file(kit["tars"]["b3"]), "size": 1000}))
    assert (reports[-1].state, reports[-1].reason) == ("failed", "too_large"), reports[-1]
    assert list(store.staging.iterdir()) == []
    # A bundle that fails its self-test never enters the store, so it takes none of the update.keep slots.
    offer(agent, document(kit["tars"]["badgolden"], url(kit, "badgolden"), kit["key"], "device:cam-01"))
    assert reports[-1].reason == "selftest_failed"
    assert sorted(b.manifest.build for b in store.installed()) == [1, 3]


def test_a_kill_during_a_link_switch_leaves_nothing_beside_the_links(tmp_path, kit, monkeypatch):
    config = load_config(device_config(tmp_path, "cam-01", kit["keys"], None, window_s=0))
    store = BundleStore(config.update.bundles_dir)
    first = store.seed(read_bundle(kit["tiny"]))
    staged = variant(kit["tiny"], store.staging / "s", build=2)
    second = store.install(staged, read_bundle(staged).manifest)
    real_replace = os.replace

    def killed(src, dst):  # the process dies between making the temp link and renaming it over `current`
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        store.switch(second)
    monkeypatch.setattr(os, "replace", real_replace)
    (store.root / ".current.4242.tmp").symlink_to(second.name)  # what older versions left in the store itself
    assert store.current_dir() == first
    UpdateAgent(config, "cam-01", lambda state: None).start()
    assert store.current_dir() == first
    assert sorted(p.name for p in store.root.iterdir()) == sorted([".lock", ".staging", "current", first.name,
                                                                   second.name])
    assert list(store.staging.iterdir()) == []


def test_a_tar_with_a_file_and_a_member_below_it_is_an_unsafe_archive(device, kit, tmp_path):
    agent, store, reports = device
    before = store.current_dir()
    raw = (kit["root"] / "b3" / "manifest.json").read_bytes()
    tar_path = tmp_path / "clash.tar"
    with tarfile.open(tar_path, "w") as tar:
        for name, data in (("manifest.json", raw), ("manifest.sig", manifest_signature(kit["key"], raw)),
                           ("a", b"file"), ("a/b", b"below a file")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    offer(agent, document(tar_path, f"file://{tar_path}", kit["key"], "device:cam-01"))
    assert (reports[-1].state, reports[-1].reason) == ("failed", "unsafe_archive"), reports[-1].message
    assert "'a' is a file" in reports[-1].message and store.current_dir() == before


def test_replayed_and_superseded_documents_are_never_applied(device, kit):
    agent, store, reports = device
    old = document(kit["tars"]["b2"], url(kit, "b2"), kit["key"], "device:cam-01")
    offer(agent, old)
    newer = document(kit["tars"]["b3"], url(kit, "b3"), kit["key"], "device:cam-01")
    offer(agent, newer)
    assert store.current().manifest.build == 3
    offer(agent, old)  # recorded and republished by someone with broker access
    assert (reports[-1].state, reports[-1].reason) == ("failed", "replayed") and reports[-1].desired.build == 2
    assert store.current().manifest.build == 3
    offer(agent, newer)  # the same document again (a reconnect re-delivers retained messages): fine
    assert reports[-1].state == "active" and reports[-1].reason is None
    # With the device document cleared, a group document issued before the applied one is not acted on.
    agent.handle("fleet-test/cam-01/update/desired", b"")
    n = len(reports)
    group = {**old, "target": "group:lab", "ts_ms": newer["ts_ms"] - 1}
    group = sign_document(kit["key"], {k: v for k, v in group.items() if k not in ("signature", "key_id")})
    offer(agent, group, "fleet-test/groups/lab/update/desired")
    assert len(reports) == n and store.current().manifest.build == 3
    journal = store.journal()
    assert journal.applied.build == 3 and journal.newest["device:cam-01"].ts_ms == newer["ts_ms"]


def test_an_agent_killed_right_after_recording_a_document_still_applies_it(tmp_path, kit):
    config = load_config(device_config(tmp_path, "cam-01", kit["keys"], None, window_s=0))
    store = BundleStore(config.update.bundles_dir)
    store.seed(read_bundle(kit["tiny"]))
    doc = document(kit["tars"]["b2"], url(kit, "b2"), kit["key"], "device:cam-01")
    first = UpdateAgent(config, "cam-01", lambda state: None)
    first.start()
    first._accept(UpdateDesired.model_validate(doc))  # the replay-state write, then a kill before anything else
    reports = []
    second = UpdateAgent(config, "cam-01", reports.append)
    second.start()
    offer(second, doc)  # the retained document arrives again after the restart: it is not a replay of itself
    assert reports[-1].state == "active" and store.current().manifest.build == 2


def test_downgrade_documents_must_expire_and_documents_must_name_their_schema(device, kit):
    agent, store, reports = device
    offer(agent, document(kit["tars"]["b3"], url(kit, "b3"), kit["key"], "device:cam-01"))
    signed = document(kit["tars"]["b2"], url(kit, "b2"), kit["key"], "device:cam-01", allow_downgrade=True)
    assert abs(signed["expires_ms"] / 1000 - (time.time() + 24 * 3600)) < 60  # the operator side's default
    body = {k: v for k, v in signed.items() if k not in ("signature", "key_id")}
    offer(agent, sign_document(kit["key"], {**body, "expires_ms": None}))
    assert (reports[-1].state, reports[-1].reason) == ("failed", "bad_document")
    assert "expires_ms" in reports[-1].message and store.current().manifest.build == 3
    body.pop("schema_version")
    offer(agent, sign_document(kit["key"], body))
    assert (reports[-1].reason, reports[-1].message.split(": ", 1)[1]) == (
        "bad_document", "schema_version: expected 1, got None")
    offer(agent, signed)
    assert reports[-1].state == "active" and store.current().manifest.build == 2


# ---------------------------------------------------------------- issue 18: the health window judges faces


class FakeDaemon:
    """Writes health reports for `candidate` the way the daemon does, from a thread (this process's pid)."""

    def __init__(self, path, candidate, *, faces_per_report: int = 1, pause: tuple[float, float] | None = None,
                 frame_errors_after: float | None = None, faces_after: float = 0.0,
                 settling: tuple[float, str] | None = None) -> None:
        from edge.fleet.health import REPORT_INTERVAL_S

        self.path, self.candidate, self.interval = path, str(candidate), REPORT_INTERVAL_S
        self.faces_per_report, self.pause = faces_per_report, pause
        self.frame_errors_after, self.faces_after = frame_errors_after, faces_after
        self.settling = settling  # (seconds, old bundle): a rollback's load still in flight, then the old bundle
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from edge.fleet.health import HealthReport, write_report

        started, frames, faces, errors = time.monotonic(), 0, 0, 0
        while not self.stop.is_set():
            now = time.monotonic() - started
            if self.pause and self.pause[0] <= now < self.pause[0] + self.pause[1]:
                time.sleep(0.05)  # a loaded CPU: the report is late, the process alive
                continue
            frames += 5
            faces += self.faces_per_report if now >= self.faces_after else 0
            errors += 1 if self.frame_errors_after is not None and now >= self.frame_errors_after else 0
            running, followed, pending = self.candidate, self.candidate, False
            if self.settling is not None and now < self.settling[0]:
                # Still on the candidate from an earlier try, loading the rollback's bundle, then running it.
                pending = now < self.settling[0] / 2
                running, followed = (self.candidate if pending else self.settling[1]), self.settling[1]
            write_report(self.path, HealthReport(pid=os.getpid(), ts=time.time(), bundle_dir=running, build=2,
                                                 frames=frames, faces_inferred=faces, invalid_outputs=0,
                                                 frame_errors=errors, followed=followed, swap_pending=pending))
            time.sleep(self.interval)

    def __enter__(self) -> FakeDaemon:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(5)


def health_agent(tmp_path, kit, *overrides: str) -> UpdateAgent:
    config = load_config(device_config(tmp_path, "cam-01", kit["keys"], None, window_s=2),
                         ["update.health_min_frames=3", "update.swap_timeout_s=10", *overrides])
    return UpdateAgent(config, "cam-01", lambda state: None)


def test_a_late_health_report_from_a_live_daemon_is_not_a_stopped_daemon(tmp_path, kit):
    """tests/test_fleet_e2e.py flaked under CPU load: a report 5 s late made a live daemon "unhealthy"."""
    agent = health_agent(tmp_path, kit, "update.health_window_s=9")  # outlives the 6 s stall
    candidate = tmp_path / "bundles" / "candidate"
    with FakeDaemon(agent.config.update.health_file, candidate, pause=(0.5, 6.0)):
        assert agent.watch_health(candidate) is None


def test_the_window_starts_only_when_the_daemon_has_settled_on_the_candidate(tmp_path, kit):
    """CI flake (test_fleet_e2e, a retried rollback): a report naming the candidate while the daemon still loaded
    the previous rollback's bundle started the window, and the daemon then "left the bundle"."""
    agent = health_agent(tmp_path, kit)
    candidate = tmp_path / "bundles" / "candidate"
    with FakeDaemon(agent.config.update.health_file, candidate, settling=(2.0, str(tmp_path / "bundles" / "old"))):
        assert agent.watch_health(candidate) is None


def test_a_report_older_than_health_stale_s_is_a_stopped_daemon(tmp_path, kit):
    agent = health_agent(tmp_path, kit, "update.health_stale_s=1")
    candidate = tmp_path / "bundles" / "candidate"
    with FakeDaemon(agent.config.update.health_file, candidate, pause=(0.5, 6.0)):
        code, message = agent.watch_health(candidate)
    assert code == "unhealthy" and "stopped reporting" in message and "health_stale_s 1" in message


def test_no_face_inferred_is_not_judged_healthy_and_is_retried_later(tmp_path, kit):
    agent = health_agent(tmp_path, kit, "update.health_face_wait_s=1")
    candidate = tmp_path / "bundles" / "candidate"
    with FakeDaemon(agent.config.update.health_file, candidate, faces_per_report=0):
        started = time.monotonic()
        code, message = agent.watch_health(candidate)
    assert code == "no_frames" and "0 faces inferred on the new bundle in 3 s (need 1)" in message
    assert time.monotonic() - started >= 3  # the window (2 s) and the wait for faces (1 s)


def test_faces_arriving_during_the_wait_pass_the_window(tmp_path, kit):
    agent = health_agent(tmp_path, kit, "update.health_face_wait_s=10", "update.health_min_faces=2")
    candidate = tmp_path / "bundles" / "candidate"
    with FakeDaemon(agent.config.update.health_file, candidate, faces_after=3.0):
        assert agent.watch_health(candidate) is None


def test_frames_that_raise_on_the_new_bundle_make_it_unhealthy(tmp_path, kit):
    agent = health_agent(tmp_path, kit)
    candidate = tmp_path / "bundles" / "candidate"
    with FakeDaemon(agent.config.update.health_file, candidate, frame_errors_after=1.0):
        code, message = agent.watch_health(candidate)
    assert code == "unhealthy" and "frames raised on the new bundle" in message
