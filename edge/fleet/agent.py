"""The device update agent's state machine: desired document in, verified bundle active (or refused) out.

    idle -> downloading -> verifying -> [building_engine] -> self_testing -> activating
         -> health_check -> active                 (or failed / rolled_back, with a reason code)

Everything before `activating` happens beside the running bundle, in the
store's staging area; `activating` is one atomic rename of the `current` link,
recorded first in the journal so that an agent killed during the health check
resumes it after a restart, and rolls back if the daemon is not healthy. The
transport (MQTT) is outside this module: `handle()` takes the raw document and
`report` publishes states, which keeps the machine testable on its own.

Replay and freeze protection (TUF's idea, kept small): the journal holds, per
target, the newest signed document acted on and, across targets, the one
acted on last. A document older than either (or as old but different) is
never applied again, so recording and re-publishing an old signed document
(say an operator's downgrade) cannot roll a device back; downgrade documents
must also carry an expiry.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from edge.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME
from edge.bundle.store import Bundle, BundleError, read_bundle
from edge.config.models import SensorConfig
from edge.fleet.archive import ArchiveError, unpack
from edge.fleet.download import DownloadError, DownloadSpec, fetch
from edge.fleet.health import HealthReport, process_alive, read_report
from edge.fleet.signing import SignatureError, load_trusted_keys, verify_document, verify_manifest
from edge.fleet.store import BundleStore, Journal, Refusal, Seen, Trial
from edge.publish.payloads import SCHEMA_VERSION, BundleRef, UpdateDesired, UpdateState, stamp

log = logging.getLogger("affect-sensor.update")
# Fault-injection hook for the kill -9 tests: "<step>:<seconds>" sleeps after reporting state <step>
# (for downloading: once some bytes have arrived), or after the journal write named <step> ("accepted").
PAUSE_ENV = "AFFECT_SENSOR_AGENT_PAUSE"
# Caused by the surroundings (network, camera, a stopped daemon), not by the bundle: retried later and never
# remembered; every other refusal is final for that document.
TRANSIENT = frozenset({"download_failed", "no_frames"})


class UpdateFailed(Exception):
    def __init__(self, code: str, message: str, doc: UpdateDesired | None = None) -> None:
        self.code, self.doc = code, doc  # doc: set when the document itself is trusted (signature verified)
        super().__init__(message)


def document_id(doc: UpdateDesired) -> str:
    """Identity of one signed document: a re-signed document (e.g. with allow_downgrade) is a new decision."""
    return hashlib.sha256(doc.signature.encode()).hexdigest()[:32]


def seen(doc: UpdateDesired) -> Seen:
    return Seen(document=document_id(doc), target=doc.target, ts_ms=doc.ts_ms, build=doc.bundle.build)


def ref(manifest_or_doc) -> BundleRef:
    b = getattr(manifest_or_doc, "bundle", manifest_or_doc)
    return BundleRef(name=b.name, version=b.version, build=b.build)


@dataclass
class UpdateAgent:
    config: SensorConfig
    device: str
    report_fn: Callable[[UpdateState], None]
    clock: Callable[[], float] = time.time
    store: BundleStore = field(init=False)
    docs: dict[str, UpdateDesired] = field(default_factory=dict)  # by topic
    last_state: UpdateState | None = None

    def __post_init__(self) -> None:
        self.store = BundleStore(self.config.update.bundles_dir)

    # ------------------------------------------------------------ reporting

    def report(self, state: str, desired: UpdateDesired | None = None, reason: str | None = None,
               message: str = "", progress: float | None = None) -> None:
        try:
            current = self.store.current_dir()
            manifest = read_bundle(current, verify_hashes=False).manifest if current is not None else None
        except BundleError:
            manifest = None
        self.last_state = UpdateState(**stamp(), device=self.device, state=state,  # type: ignore[arg-type]
                                      current=ref(manifest) if manifest else None,
                                      desired=desired.bundle if desired else None, reason=reason,  # type: ignore[arg-type]
                                      message=message[:500], progress=progress)
        self.report_fn(self.last_state)
        if state not in ("downloading",) or progress in (None, 0.0):
            log.info("update state %s%s%s", state, f" ({reason})" if reason else "", f": {message}" if message else "")
        if progress != 0.0:
            self._checkpoint(state)

    @staticmethod
    def _checkpoint(step: str) -> None:
        pause = os.environ.get(PAUSE_ENV, "")
        if pause.startswith(f"{step}:"):
            time.sleep(float(pause.split(":", 1)[1]))

    # ------------------------------------------------------------ start-up

    def start(self) -> None:
        """Seed the store if empty, finish or undo a switch a crash interrupted, clear stale staging."""
        from edge.bundle.default import resolve_bundle

        self.store.prepare()
        if self.store.current_dir() is None:
            self.store.seed(resolve_bundle(None))
        journal = self.store.journal()
        trial = journal.trial
        if trial is not None:
            candidate = self.store.root / trial.candidate
            if self.store.current_dir() == candidate:
                log.info("resuming the health check of %s after a restart", trial.candidate)
                self._confirm_or_roll_back(trial, None)
            else:  # killed before the switch: nothing changed
                journal.trial = None
                self.store.write_journal(journal)
        self.store.clear_staging(keep={p.name for p in self.store.staging.glob("*.part")})
        self.report("idle")

    # ------------------------------------------------------------ documents

    def handle(self, topic: str, raw: bytes) -> None:
        """A retained desired document arrived (empty: cleared). Acts on the newest one it trusts."""
        if not raw:
            self.docs.pop(topic, None)
            return
        try:
            doc = self._parse(raw)
            self._check_replay(doc, self.store.journal())
        except UpdateFailed as exc:
            log.error("desired document on %s refused: %s", topic, exc)
            self.report("failed", exc.doc, exc.code, f"{topic}: {exc}")
            return
        self.docs[topic] = doc
        self.apply_newest()

    def newest_doc(self) -> UpdateDesired | None:
        return max(self.docs.values(), key=lambda d: d.ts_ms) if self.docs else None

    def apply_newest(self) -> None:
        """Apply the newest of the device's and its group's documents, unless one at least as new was applied."""
        doc = self.newest_doc()
        if doc is None:
            return
        applied = self.store.journal().applied
        if applied is not None and applied != seen(doc) and doc.ts_ms <= applied.ts_ms:
            log.info("not applying the %s document of %s: the %s document of %s was acted on after it",
                     doc.target, _iso(doc.ts_ms), applied.target, _iso(applied.ts_ms))
            return
        self.apply(doc)

    def _parse(self, raw: bytes) -> UpdateDesired:
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            raise UpdateFailed("bad_document", f"not a JSON document ({exc})") from None
        try:
            keys = load_trusted_keys(self.config.update.trusted_keys_dir)
        except ValueError as exc:
            raise UpdateFailed("unknown_key", str(exc)) from None
        try:
            verify_document(keys, data)
        except SignatureError as exc:
            raise UpdateFailed(exc.code, str(exc)) from None
        if data.get("schema_version") != SCHEMA_VERSION:
            raise UpdateFailed("bad_document", f"schema_version: expected {SCHEMA_VERSION}, got "
                                               f"{data.get('schema_version')!r}")
        try:
            doc = UpdateDesired.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise UpdateFailed("bad_document", f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
        kind, _, name = doc.target.partition(":")
        if (kind, name) not in (("device", self.device), ("group", self.config.device.group)):
            raise UpdateFailed("bad_document", f"document targets {doc.target}, not this device "
                                               f"({self.device}, group {self.config.device.group})")
        if doc.allow_downgrade and doc.expires_ms is None:
            raise UpdateFailed("bad_document", "an allow_downgrade document must carry expires_ms (a downgrade "
                                               "that never expires could be replayed for ever)")
        if doc.expires_ms is not None and doc.expires_ms < self.clock() * 1000:
            raise UpdateFailed("expired", "desired document has expired")
        return doc

    @staticmethod
    def _check_replay(doc: UpdateDesired, journal: Journal) -> None:
        """Refuse a document older than (or as old as, but not) the newest one acted on for its target."""
        newest = journal.newest.get(doc.target)
        if newest is None or newest == seen(doc):
            return
        if doc.ts_ms <= newest.ts_ms:
            raise UpdateFailed("replayed", f"document of {_iso(doc.ts_ms)} (build {doc.bundle.build}) for "
                                           f"{doc.target} is not newer than the one already acted on "
                                           f"({_iso(newest.ts_ms)}, build {newest.build}); an old document "
                                           "is never applied again", doc)

    def _accept(self, doc: UpdateDesired) -> Journal:
        """Record `doc` as the newest document of its target and the one acted on last (the replay state)."""
        journal = self.store.journal()
        record = seen(doc)
        if journal.applied != record or journal.newest.get(doc.target) != record:
            journal.newest[doc.target] = record
            journal.applied = record
            self.store.write_journal(journal)
            self._checkpoint("accepted")
        return journal

    def apply(self, doc: UpdateDesired) -> None:
        journal = self._accept(doc)
        for part in self.store.staging.glob("*.tar.part"):  # only this document's download may still resume
            if part.name != f"{doc.sha256}.tar.part":
                part.unlink(missing_ok=True)
        refusal = journal.refused.get(document_id(doc))
        if refusal is not None:
            self.report(refusal.state, doc, refusal.reason, refusal.message)
            return
        current = self.store.current()
        if current is not None and self._same(current, doc):
            self.report("active", doc)
            return
        staged: Path | None = None
        refusal: tuple[str, str, bool] | None = None
        try:
            self._check_build(doc.bundle.build, current, doc)
            staged, bundle = self._fetch_and_verify(doc, current)
            self._preflight(bundle, doc)  # in staging: nothing enters the store that the daemon would refuse
            final = self.store.install(staged, bundle.manifest)
            staged = None
        except (UpdateFailed, DownloadError, ArchiveError) as exc:
            code = getattr(exc, "code", "internal_error")
            refusal = (code, str(exc), code not in TRANSIENT)
        except Exception as exc:  # never let a bug take the agent down with a half-done update
            log.exception("update failed")
            refusal = ("internal_error", f"{type(exc).__name__}: {exc}", False)
        finally:
            if staged is not None:  # cleaned before the refusal is reported: whoever reads it sees no leftovers
                shutil.rmtree(staged, ignore_errors=True)
        if refusal is not None:
            code, message, remember = refusal
            self._refuse(doc, code, message, "failed", remember=remember)
            return
        self.report("activating", doc)
        trial = Trial(candidate=final.name, previous=current.path.name if current else None,
                      document=document_id(doc))
        journal = self.store.journal()
        journal.trial = trial
        self.store.write_journal(journal)
        self.store.switch(final)
        self._confirm_or_roll_back(trial, doc)

    @staticmethod
    def _same(bundle: Bundle, doc: UpdateDesired) -> bool:
        m = bundle.manifest
        return (m.name, m.version, m.build) == (doc.bundle.name, doc.bundle.version, doc.bundle.build)

    def _check_build(self, build: int | None, current: Bundle | None, doc: UpdateDesired) -> None:
        if current is None or build is None:
            return
        if build <= current.manifest.build and not doc.allow_downgrade:
            raise UpdateFailed("older_build", f"build {build} is not newer than the running build "
                                              f"{current.manifest.build} (an operator-signed allow_downgrade "
                                              "document is needed to go back)")

    def _fetch_and_verify(self, doc: UpdateDesired, current: Bundle | None) -> tuple[Path, Bundle]:
        up = self.config.update
        if doc.size > up.max_download_bytes:
            raise UpdateFailed("too_large", f"bundle is {doc.size} bytes, over update.max_download_bytes "
                                            f"({up.max_download_bytes})")
        self.report("downloading", doc, progress=0.0)
        last = [0.0]

        def progress(done: int, total: int) -> None:
            if time.monotonic() - last[0] > 0.5:
                last[0] = time.monotonic()
                self.report("downloading", doc, progress=round(done / total, 3))

        part = self.store.staging / f"{doc.sha256}.tar.part"
        spec = DownloadSpec(doc.url, doc.sha256, doc.size, up.download_timeout_s, allow_http=up.allow_http)
        tar = fetch(spec, part, progress)
        self.report("verifying", doc)
        staged = self.store.staging / f"{doc.sha256}.d"
        shutil.rmtree(staged, ignore_errors=True)
        try:
            unpack(tar, staged, up.max_download_bytes * 4)
            bundle = read_bundle(staged)
            manifest_bytes = (staged / MANIFEST_NAME).read_bytes()
            signature = staged / SIGNATURE_NAME
            if not signature.is_file():
                raise UpdateFailed("bad_signature", "bundle has no manifest.sig")
            keys = load_trusted_keys(up.trusted_keys_dir)
            verify_manifest(keys, manifest_bytes, signature.read_bytes())
            m = bundle.manifest
            if (m.name, m.version, m.build) != (doc.bundle.name, doc.bundle.version, doc.bundle.build):
                raise UpdateFailed("mismatch", f"bundle is {m.name} {m.version} build {m.build}, the desired "
                                               f"document names {doc.bundle.name} {doc.bundle.version} build "
                                               f"{doc.bundle.build}")
            if m.expires is not None and m.expires.timestamp() < self.clock():
                raise UpdateFailed("expired", f"bundle manifest expired at {m.expires.isoformat()}")
            self._check_build(m.build, current, doc)
        except BundleError as exc:
            shutil.rmtree(staged, ignore_errors=True)
            code = "hash_mismatch" if "sha256" in exc.message or "size" in exc.message else "bad_bundle"
            raise UpdateFailed(code, str(exc)) from None
        except SignatureError as exc:
            shutil.rmtree(staged, ignore_errors=True)
            raise UpdateFailed(exc.code, str(exc)) from None
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        finally:
            part.unlink(missing_ok=True)
        return staged, bundle

    def _preflight(self, bundle: Bundle, doc: UpdateDesired) -> None:
        """Load the bundle exactly as the daemon will (edge.pipeline.daemon.load_processor), self-test included."""
        from edge.pipeline.daemon import BundleLoadError, load_processor

        backend = self.config.model.backend
        if backend == "tensorrt" or (backend == "auto" and importlib.util.find_spec("tensorrt") is not None):
            self.report("building_engine", doc)  # the engine is built (or found in the cache) here
        try:
            processor = load_processor(self.config, bundle, on_stage=lambda stage: self.report(stage, doc))
        except BundleLoadError as exc:
            code = {"backend": "engine_build_failed", "bundle": "bad_bundle"}.get(exc.stage, "selftest_failed")
            raise UpdateFailed(code, str(exc)) from None
        processor.close()  # engine, GPU buffers and context go now, not whenever the collector runs

    def _refuse(self, doc: UpdateDesired, code: str, message: str, state: str, *, remember: bool) -> None:
        log.error("update to %s %s build %s %s: %s: %s", doc.bundle.name, doc.bundle.version, doc.bundle.build,
                  state, code, message)
        if remember:
            journal = self.store.journal()
            journal.refused[document_id(doc)] = Refusal(reason=code, message=message, state=state)
            self.store.write_journal(journal)
            (self.store.staging / f"{doc.sha256}.tar.part").unlink(missing_ok=True)  # never resumed now
        self.report(state, doc, code, message)

    # ------------------------------------------------------------ health window

    def _confirm_or_roll_back(self, trial: Trial, doc: UpdateDesired | None) -> None:
        self.report("health_check", doc)
        candidate = self.store.root / trial.candidate
        verdict = self.watch_health(candidate)
        journal = self.store.journal()
        journal.trial = None
        if verdict is None:
            self.store.write_journal(journal)
            removed = self.store.gc(self.config.update.keep)
            if removed:
                log.info("removed old bundles: %s", ", ".join(p.name for p in removed))
            self.report("active", doc)
            return
        code, problem = verdict
        if trial.previous is not None:
            self.store.rollback_to(self.store.root / trial.previous)
        if code not in TRANSIENT:
            journal.refused[trial.document] = Refusal(reason=code, message=problem, state="rolled_back")
        self.store.write_journal(journal)
        if self.store.discard(candidate):  # a rejected bundle keeps no slot of update.keep
            log.info("removed the rolled-back bundle %s", candidate.name)
        log.error("rolled back to %s: %s: %s", trial.previous, code, problem)
        self.report("rolled_back", doc, code, problem)

    def watch_health(self, candidate: Path) -> tuple[str, str] | None:
        """None if the daemon runs `candidate` healthily for the window, faces included; else (reason, what).

        `no_frames` (transient: not remembered, retried later) when nothing
        judged the bundle: no daemon reporting, too few frames (camera away),
        or no face inferred within the window plus `health_face_wait_s` (an
        empty room never passes a bundle); `unhealthy` when the daemon refused,
        left, raised or gave non-finite outputs on it, or stopped reporting for
        longer than `health_stale_s` (a loaded CPU only delays the report).
        """
        up = self.config.update
        if up.health_window_s <= 0:  # documented opt-out: no health window at all
            return None
        path, stale = up.health_file, up.health_stale_s
        deadline = time.monotonic() + up.swap_timeout_s
        first: HealthReport | None = None
        while first is None:  # phase 1: the daemon loads the candidate
            report = read_report(path)
            if report is not None and report.swap_error_dir == str(candidate):
                return "unhealthy", f"the daemon refused the bundle: {report.swap_error}"
            # Settled on it: a report from before the daemon saw the link, or with a load still in flight
            # (a rollback's, say), would let the window start on a bundle the daemon is about to leave.
            if (report is not None and report.bundle_dir == str(candidate) and report.age_s() < stale
                    and report.followed == str(candidate) and not report.swap_pending):
                first = report
                break
            if time.monotonic() > deadline:
                if report is None or report.age_s() >= stale or not process_alive(report.pid):
                    return "no_frames", (f"no current health report from the daemon within {up.swap_timeout_s:g} s "
                                         f"({'none' if report is None else 'last one stale'}); is the daemon running?")
                return "unhealthy", (f"the daemon did not start running the bundle within "
                                     f"{up.swap_timeout_s:g} s (it runs {report.bundle_dir})")
            time.sleep(0.1)
        end = time.monotonic() + up.health_window_s
        last = first
        while True:  # phase 2: it keeps processing, with valid outputs, and infers faces
            time.sleep(0.1)
            report = read_report(path)
            if report is None or report.pid != first.pid or not process_alive(first.pid):
                return "unhealthy", "the daemon stopped or restarted during the health window"
            if report.age_s() > stale:
                return "unhealthy", (f"the daemon stopped reporting (last report {report.age_s():.1f} s ago, "
                                     f"update.health_stale_s {stale:g})")
            if report.bundle_dir != str(candidate):
                return "unhealthy", f"the daemon left the bundle (now runs {report.bundle_dir})"
            if report.invalid_outputs > first.invalid_outputs:
                return "unhealthy", (f"{report.invalid_outputs - first.invalid_outputs} faces got non-finite "
                                     "outputs on the new bundle")
            if report.frame_errors > first.frame_errors:
                return "unhealthy", f"{report.frame_errors - first.frame_errors} frames raised on the new bundle"
            last = report
            now = time.monotonic()
            if now < end:
                continue
            frames = last.frames - first.frames
            if frames < up.health_min_frames:
                return "no_frames", (f"only {frames} frames processed in the {up.health_window_s:.0f} s health "
                                     f"window (need {up.health_min_frames}); is the camera connected?")
            faces = last.faces_inferred - first.faces_inferred
            if faces >= up.health_min_faces:
                return None
            if now >= end + up.health_face_wait_s:
                return "no_frames", (f"{faces} faces inferred on the new bundle in "
                                     f"{up.health_window_s + up.health_face_wait_s:.0f} s (need "
                                     f"{up.health_min_faces}); it was not judged, so it is rolled back and "
                                     "tried again later")


def _iso(ts_ms: int) -> str:
    return str(stamp(ts_ms / 1000)["ts"])
