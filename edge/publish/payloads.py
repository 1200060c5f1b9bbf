"""Typed payloads for every MQTT topic, and the builders the capture daemon calls.

Every payload carries `schema_version` and a UTC timestamp twice (`ts`, ISO 8601
with milliseconds, for people and Node-RED; `ts_ms`, epoch milliseconds, for
Grafana and arithmetic). The JSON Schema files in `edge/schemas/` are generated
from these models (`python -m edge.publish.schemas --write`) and are the
contract for dashboard authors; tests check both stay in step.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge.labels import LabelSpace

SCHEMA_VERSION = 1
_AU_KEY = r"^AU[0-9]{1,2}$"
Prob = Annotated[float, Field(ge=0, le=1)]
AuKey = Annotated[str, Field(pattern=_AU_KEY)]
_DIGITS = 4  # probabilities are rounded: 1e-4 is below any threshold anyone sets, and halves the payload


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=False).encode("utf-8")


def _require_schema_version(schema: dict[str, Any]) -> None:
    """Every payload carries `schema_version`, so the published JSON Schemas require it."""
    schema["required"] = ["schema_version", *[k for k in schema.get("required", []) if k != "schema_version"]]


class Stamped(Payload):
    model_config = ConfigDict(json_schema_extra=_require_schema_version)

    schema_version: Literal[1] = SCHEMA_VERSION
    ts: str = Field(pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", description="UTC, ISO 8601")
    ts_ms: int = Field(ge=0, description="UTC, milliseconds since the Unix epoch")


def stamp(epoch_s: float | None = None) -> dict[str, object]:
    """`ts` and `ts_ms` for one instant (now by default); both name the same millisecond."""
    ms = round((time.time() if epoch_s is None else epoch_s) * 1000)
    when = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return {"ts": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z", "ts_ms": ms}


# ---------------------------------------------------------------- results


class Box(Payload):
    """Face box in frame pixels, top-left origin."""

    x: float
    y: float
    w: float = Field(ge=0)
    h: float = Field(ge=0)


class BundleRef(Payload):
    name: str = Field(min_length=1, max_length=64)
    version: str = Field(min_length=1, max_length=64)
    build: int | None = Field(default=None, ge=1)


class FaceResult(Payload):
    track_id: int = Field(ge=0)
    box: Box
    score: float = Field(ge=0, le=1, description="detection confidence")
    aus: dict[AuKey, Prob] = Field(description="AU key (AU12) -> smoothed probability",
                                   json_schema_extra={"additionalProperties": False})
    active_aus: list[AuKey] = Field(description="AUs at or above their calibrated threshold")
    expressions: dict[str, Prob] = Field(description="expression -> smoothed probability")
    top_expression: str
    top_score: float = Field(ge=0, le=1)

    @model_validator(mode="after")
    def _consistent(self) -> FaceResult:
        unknown = [a for a in self.active_aus if a not in self.aus]
        if unknown:
            raise ValueError(f"active AUs {unknown} are not among the AU probabilities")
        if self.top_expression not in self.expressions:
            raise ValueError(f"top expression {self.top_expression!r} is not among the expressions")
        return self


class ResultRecord(Stamped):
    """One processed frame."""

    frame_id: int = Field(ge=0)
    device: str = Field(min_length=1)
    bundle: BundleRef
    latency_ms: float = Field(ge=0, description="capture to head output for this frame")
    faces: list[FaceResult]


def face_result(
    track_id: int,
    box: Sequence[float],
    score: float,
    labels: LabelSpace,
    au_probs: Sequence[float] | np.ndarray,
    au_active: Sequence[bool] | np.ndarray,
    expr_probs: Sequence[float] | np.ndarray,
) -> FaceResult:
    """A face entry from the head's output vectors (ordered as `labels`); `box` is (x, y, w, h)."""
    au = np.asarray(au_probs, dtype=np.float64).reshape(-1)
    active = np.asarray(au_active, dtype=bool).reshape(-1)
    fe = np.asarray(expr_probs, dtype=np.float64).reshape(-1)
    if au.size != len(labels.aus) or active.size != len(labels.aus):
        raise ValueError(f"AU vectors have {au.size}/{active.size} entries, the label space {len(labels.aus)}")
    if fe.size != len(labels.expressions):
        raise ValueError(f"expression vector has {fe.size} entries, the label space {len(labels.expressions)}")
    if len(box) != 4:
        raise ValueError(f"box must be (x, y, w, h), got {len(box)} numbers")
    top = int(np.argmax(fe))
    return FaceResult(
        track_id=track_id,
        box=Box(x=float(box[0]), y=float(box[1]), w=float(box[2]), h=float(box[3])),
        score=round(float(score), _DIGITS),
        aus={k: round(float(p), _DIGITS) for k, p in zip(labels.au_keys, au, strict=True)},
        active_aus=[k for k, on in zip(labels.au_keys, active, strict=True) if on],
        expressions={k: round(float(p), _DIGITS) for k, p in zip(labels.expressions, fe, strict=True)},
        top_expression=labels.expressions[top],
        top_score=round(float(fe[top]), _DIGITS),
    )


def result_record(
    device: str,
    bundle: BundleRef,
    frame_id: int,
    faces: Sequence[FaceResult],
    latency_ms: float,
    epoch_s: float | None = None,
) -> ResultRecord:
    """The record for one processed frame; `epoch_s` is the capture time (default: now)."""
    return ResultRecord(
        **stamp(epoch_s), frame_id=frame_id, device=device, bundle=bundle,
        latency_ms=round(float(latency_ms), 3), faces=list(faces),
    )


# ---------------------------------------------------------------- status / info


class StatusPayload(Stamped):
    """Retained availability. The `offline` + `connection_lost` copy is the Last Will, stamped at connect time."""

    device: str = Field(min_length=1)
    state: Literal["online", "offline"]
    reason: Literal["connected", "shutdown", "connection_lost"]


def status_payload(device: str, state: Literal["online", "offline"], reason: str) -> StatusPayload:
    return StatusPayload(**stamp(), device=device, state=state, reason=reason)


class BundleInfo(BundleRef):
    aus: list[str] = Field(description="AU keys in output order")
    expressions: list[str]


class InfoPayload(Stamped):
    """Retained device description, republished on every connect and bundle change."""

    device: str = Field(min_length=1)
    group: str
    location: str = ""
    software_version: str
    bundle: BundleInfo | None = Field(description="null while no bundle is loaded")
    backend: str = Field(description="inference backend in use: onnxruntime, tensorrt")
    capabilities: list[str] = Field(description="e.g. cuda, tensorrt, update, results, events")


def info_payload(
    device: str, group: str, software_version: str, bundle: BundleInfo | None, backend: str,
    capabilities: Sequence[str], location: str = "",
) -> InfoPayload:
    return InfoPayload(
        **stamp(), device=device, group=group, location=location, software_version=software_version,
        bundle=bundle, backend=backend, capabilities=sorted(set(capabilities)),
    )


def bundle_info(name: str, version: str, build: int | None, labels: LabelSpace) -> BundleInfo:
    return BundleInfo(name=name, version=version, build=build, aus=labels.au_keys,
                      expressions=list(labels.expressions))


# ---------------------------------------------------------------- events


class EventPayload(Stamped):
    """An expression change of one tracked face: `start` (new track), `update` (top expression changed), `end`."""

    device: str = Field(min_length=1)
    track_id: int = Field(ge=0)
    kind: Literal["start", "update", "end"]
    expression: str = Field(description="top expression now (at `end`: the last one)")
    previous: str | None = Field(description="top expression before an update; null otherwise")
    score: float = Field(ge=0, le=1)
    track_age_s: float = Field(ge=0, description="seconds since the track started")
    frame_id: int = Field(ge=0)


class ExpressionEvents:
    """Derives start/update/end events from successive result records, per track.

    Owned by one caller (the daemon's loop); not thread-safe by design.
    """

    def __init__(self, device: str) -> None:
        self._device = device
        self._tracks: dict[int, tuple[str, float, int]] = {}  # id -> (expression, score, start ms)

    def update(self, record: ResultRecord, held: Collection[int] = ()) -> list[EventPayload]:
        """Events for this record; tracks in `held` are in view but have no result this frame (e.g. a non-finite
        model output): they neither end nor restart."""
        events: list[EventPayload] = []
        seen: set[int] = set(held) & set(self._tracks)
        for face in record.faces:
            seen.add(face.track_id)
            known = self._tracks.get(face.track_id)
            if known is None:
                self._tracks[face.track_id] = (face.top_expression, face.top_score, record.ts_ms)
                events.append(self._event(record, face.track_id, "start", face.top_expression, None,
                                          face.top_score, record.ts_ms))
            elif known[0] != face.top_expression:
                self._tracks[face.track_id] = (face.top_expression, face.top_score, known[2])
                events.append(self._event(record, face.track_id, "update", face.top_expression, known[0],
                                          face.top_score, known[2]))
            else:
                self._tracks[face.track_id] = (known[0], face.top_score, known[2])
        for track_id in sorted(set(self._tracks) - seen):
            expression, score, start_ms = self._tracks.pop(track_id)
            events.append(self._event(record, track_id, "end", expression, None, score, start_ms))
        return events

    def _event(self, record: ResultRecord, track_id: int, kind: str, expression: str, previous: str | None,
               score: float, start_ms: int) -> EventPayload:
        return EventPayload(
            ts=record.ts, ts_ms=record.ts_ms, device=self._device, track_id=track_id, kind=kind,
            expression=expression, previous=previous, score=score,
            track_age_s=max(0.0, (record.ts_ms - start_ms) / 1000), frame_id=record.frame_id,
        )


# ---------------------------------------------------------------- stats


class LatencyStats(Payload):
    p50: float = Field(ge=0)
    p95: float = Field(ge=0)
    p99: float = Field(ge=0)
    max: float = Field(ge=0)


class MqttStats(Payload):
    """The publisher's own counters; every drop is counted by cause."""

    connected: bool
    published: int = Field(ge=0, description="messages handed to the broker connection")
    acked: int = Field(ge=0, description="QoS >= 1 messages acknowledged by the broker")
    buffered: int = Field(ge=0, description="QoS >= 1 messages waiting for the broker (offline buffer)")
    buffered_bytes: int = Field(ge=0)
    dropped_buffer_full: int = Field(ge=0, description="oldest buffered messages dropped at the buffer bound")
    dropped_queue_full: int = Field(ge=0, description="dropped because the publisher thread fell behind")
    dropped_offline: int = Field(ge=0, description="QoS 0 messages dropped while disconnected")
    rate_limited: int = Field(ge=0, description="results superseded by a newer one within the rate limit")
    rejected: int = Field(ge=0, description="publishes the broker refused (MQTT 5 reason code)")
    connects: int = Field(ge=0)
    last_error: str | None = None


class JetsonStats(Payload):
    """What `tegrastats` reports on a Jetson (edge/pipeline/jetson_stats.py); absent fields were not readable."""

    gpu_load_percent: float | None = Field(default=None, ge=0, le=100)
    gpu_freq_mhz: float | None = Field(default=None, ge=0)
    ram_used_mb: float | None = Field(default=None, ge=0)
    ram_total_mb: float | None = Field(default=None, ge=0)
    temperatures_c: dict[str, float] = Field(default_factory=dict, description="per thermal sensor, e.g. gpu, tj")
    power_mw: dict[str, float] = Field(default_factory=dict, description="current draw per rail, e.g. VDD_IN")


class StatsPayload(Stamped):
    device: str = Field(min_length=1)
    uptime_s: float = Field(ge=0)
    capture_fps: float = Field(ge=0)
    processed_fps: float = Field(ge=0)
    frames_dropped: int = Field(ge=0, description="stale frames replaced in the latest-frame slot")
    faces: int = Field(ge=0, description="faces tracked in the last processed frame")
    latency_ms: dict[str, LatencyStats] = Field(description="per pipeline stage")
    temperature_c: float | None = None
    cpu_percent: float | None = Field(default=None, ge=0, description="process CPU, 100 = one core")
    rss_mb: float | None = Field(default=None, ge=0, description="resident memory of the daemon")
    reconnects: int | None = Field(default=None, ge=0, description="camera reconnects since start")
    frame_errors: int | None = Field(default=None, ge=0, description="frames that raised and were skipped")
    invalid_outputs: int | None = Field(default=None, ge=0, description="faces dropped for non-finite outputs")
    slot_evictions: int | None = Field(default=None, ge=0,
                                       description="tracks that lost their smoothing slot to a newer track")
    bundle: BundleRef | None = None
    mqtt: MqttStats | None = None
    jetson: JetsonStats | None = Field(default=None, description="tegrastats figures; absent off a Jetson")


def stats_payload(
    device: str, uptime_s: float, capture_fps: float, processed_fps: float, frames_dropped: int, faces: int,
    latency_ms: Mapping[str, LatencyStats], temperature_c: float | None = None, mqtt: MqttStats | None = None,
    cpu_percent: float | None = None, rss_mb: float | None = None, reconnects: int | None = None,
    bundle: BundleRef | None = None, frame_errors: int | None = None, invalid_outputs: int | None = None,
    slot_evictions: int | None = None, jetson: JetsonStats | None = None,
) -> StatsPayload:
    return StatsPayload(
        **stamp(), device=device, uptime_s=round(uptime_s, 3), capture_fps=round(capture_fps, 3),
        processed_fps=round(processed_fps, 3), frames_dropped=frames_dropped, faces=faces,
        latency_ms=dict(latency_ms), temperature_c=temperature_c, mqtt=mqtt, cpu_percent=cpu_percent,
        rss_mb=rss_mb, reconnects=reconnects, bundle=bundle, frame_errors=frame_errors,
        invalid_outputs=invalid_outputs, slot_evictions=slot_evictions, jetson=jetson,
    )


# ---------------------------------------------------------------- fleet updates


UPDATE_STATES = ("idle", "downloading", "verifying", "building_engine", "self_testing", "activating",
                 "health_check", "active", "failed", "rolled_back")
UpdateStateName = Literal["idle", "downloading", "verifying", "building_engine", "self_testing", "activating",
                          "health_check", "active", "failed", "rolled_back"]
# Why an update was refused or undone; one stable code per failure class (docs/fleet.md).
UpdateReason = Literal[
    "bad_document", "bad_signature", "unknown_key", "expired", "replayed", "older_build", "too_large",
    "download_failed", "hash_mismatch", "unsafe_archive", "bad_bundle", "mismatch", "engine_build_failed",
    "selftest_failed", "unhealthy", "no_frames", "internal_error",
]


class UpdateDesired(Stamped):
    """Retained on `<device>/update/desired` or `groups/<group>/update/desired`, signed by an operator key.

    The signature covers the canonical JSON of every other field (edge.fleet.signing);
    a device acts only on a document signed by a key it trusts, and of two
    documents (device and group) it follows the one issued last.
    """

    target: str = Field(min_length=1, max_length=80, description="'device:<id>' or 'group:<name>'")
    bundle: BundleRef
    url: str = Field(min_length=1, description="https://, http:// (if allowed) or file:// location of the .tar")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="of the .tar")
    size: int = Field(ge=1, description="of the .tar, bytes")
    allow_downgrade: bool = Field(default=False, description="operator-signed permission to go to a lower build")
    expires_ms: int | None = Field(default=None, ge=0, description="ignore this document after this instant")
    key_id: str = Field(pattern=r"^[0-9a-f]{16}$", description="id of the Ed25519 key that signed it")
    signature: str = Field(min_length=1, description="base64 Ed25519 signature")


class UpdateState(Stamped):
    """Retained report of the device's update state machine."""

    device: str = Field(min_length=1)
    state: UpdateStateName
    current: BundleRef | None
    desired: BundleRef | None
    reason: UpdateReason | None = Field(default=None, description="set with failed / rolled_back")
    message: str = ""
    progress: float | None = Field(default=None, ge=0, le=1, description="download progress")
