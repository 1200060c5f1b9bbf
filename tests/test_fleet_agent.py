"""The update agent's state machine in-process: every refusal has its reason and leaves the running bundle alone.

The end-to-end versions (real broker, HTTP server, daemon and agent processes,
kill -9) are in test_fleet_e2e.py; here each case is fast and isolated.
"""

from __future__ import annotations

import json
import shutil

import pytest
from fleet_helpers import device_config, document, evil_tar, http_server, make_key, signed_tar, variant, wrong_golden

from edge.bundle.store import read_bundle
from edge.config import load_config
from edge.fleet.agent import UpdateAgent
from edge.fleet.archive import pack_bundle
from edge.fleet.signing import manifest_signature
from edge.fleet.store import BundleStore, Journal, Trial


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
    assert reports[-2].reason == "unhealthy" and "did not start running" in reports[-2].message
    assert store.journal().trial is None

