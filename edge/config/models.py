"""Typed device configuration. Unknown keys are rejected everywhere (`extra="forbid"`),
so a typo in the TOML is an error instead of a silently ignored setting.

`firmware_cfg/sensor.toml` documents every key here; keep the two in step
(tests/test_config.py checks that the template loads and covers every field).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(Section):
    """Where a secret comes from: a file (first line, stripped) or an environment variable.

    Never a literal value: secrets in a config file end up in backups and bug
    reports, and command-line arguments are visible in `ps`.
    """

    file: Path | None = None
    env: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if (self.file is None) == (self.env is None):
            raise ValueError("give exactly one of 'file' or 'env'")
        return self

    def describe(self) -> str:
        return f"file {self.file}" if self.file is not None else f"environment variable {self.env}"

    def read(self) -> str:
        if self.file is not None:
            try:
                text = self.file.read_text(encoding="utf-8")
            except OSError as exc:
                raise FileNotFoundError(f"secret file {self.file}: {exc.strerror}") from exc
            return text.strip().splitlines()[0] if text.strip() else ""
        value = os.environ.get(self.env or "")
        if value is None:
            raise KeyError(f"secret environment variable {self.env} is not set")
        return value


class DeviceConfig(Section):
    id: str = Field(default="", pattern=r"^[A-Za-z0-9_-]{0,64}$", description="device id; empty: hostname")
    group: str = Field(default="default", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    location: str = ""


class SourceConfig(Section):
    uri: str = "demo"
    width: int = Field(default=640, ge=16, le=7680)
    height: int = Field(default=480, ge=16, le=4320)
    fps: float = Field(default=30.0, gt=0, le=240)
    stall_timeout_s: float = Field(default=5.0, gt=0)
    reconnect_initial_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    loop: bool = False

    @model_validator(mode="after")
    def _backoff_order(self) -> SourceConfig:
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("reconnect_max_s must be >= reconnect_initial_s")
        return self


# Default `detection.score_threshold` per detector. RetinaFace's 0.9: the best F1 on FDDB (docs/capture.md,
# "Choosing the score threshold"); BlazeFace's 0.5: MediaPipe's own default, its scores run lower.
DETECTOR_SCORE = {"retinaface": 0.9, "full_range": 0.5, "short_range": 0.5, "whole_frame": 0.5}


class DetectionConfig(Section):
    """Face detection and tracking (docs/capture.md): which detector, how small, how many, how often."""

    detector: Literal["retinaface", "full_range", "short_range", "whole_frame"] = "retinaface"
    every_k_frames: int = Field(default=3, ge=1, le=300)
    scan_slices: int = Field(default=0, ge=0, le=256, description="detector runs a sweep spreads over; 0: auto")
    min_face_px: int = Field(default=32, ge=8)
    max_faces: int = Field(default=16, ge=1, le=256)
    score_threshold: float = Field(default=DETECTOR_SCORE["retinaface"], gt=0, lt=1,
                                   description="score to start a track; absent: the detector's own default")
    track_iou: float = Field(default=0.3, gt=0, lt=1)
    track_max_missed: int = Field(default=10, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _detector_score(cls, data: object) -> object:
        """Scores mean different things per model: an absent score_threshold is the chosen detector's."""
        if isinstance(data, dict) and data.get("score_threshold") is None:
            detector = data.get("detector", cls.model_fields["detector"].default)
            data = {**data, "score_threshold": DETECTOR_SCORE.get(detector, 0.5)}
        return data


class ModelConfig(Section):
    bundle: Path | None = Field(default=None, description="bundle directory; empty: the built-in default")
    backend: Literal["auto", "onnxruntime", "tensorrt"] = "auto"
    engine_cache_dir: Path = Path("/var/cache/affect-sensor/engines")
    threads: int = Field(default=1, ge=1, le=256)
    spin_wait: bool = Field(default=False, description="onnxruntime worker threads busy-wait between runs")
    batch_max: int = Field(default=16, ge=1, le=256)


class HeadConfig(Section):
    smoothing: Literal["none", "ema", "window"] = "ema"
    ema_alpha: float = Field(default=0.4, gt=0, le=1)
    window: int = Field(default=5, ge=1, le=300)
    max_tracks: int = Field(default=64, ge=1, le=4096)
    backend: Literal["auto", "numpy", "cuda"] = Field(
        default="auto", description="auto: the fused CUDA kernel on the TensorRT engine's buffers when it loads, "
                                    "else NumPy; cuda: that kernel or an error; numpy: always NumPy")
    kernel_dir: Path = Field(default=Path("/opt/affect-sensor/kernels"),
                             description="prebuilt head cubins (python -m edge.kernels.build); else NVRTC compiles")


class DaemonConfig(Section):
    """The processing loop's own limits."""

    max_consecutive_frame_errors: int = Field(
        default=25, ge=1, le=100000,
        description="frames in a row that may raise before the daemon exits non-zero for systemd to restart it")


class TLSConfig(Section):
    enabled: bool = False
    ca_file: Path | None = Field(default=None, description="CA bundle for the broker; unset: system CAs")
    cert_file: Path | None = None
    key_file: Path | None = None
    check_hostname: bool = True

    @model_validator(mode="after")
    def _pair(self) -> TLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS needs both)")
        return self


class MQTTConfig(Section):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    protocol: Literal["3.1.1", "5"] = "5"
    prefix: str = Field(default="affect", pattern=r"^[^#+/][^#+]*[^#+/]$|^[^#+/]$")
    client_id: str = Field(default="", pattern=r"^[A-Za-z0-9_.-]{0,64}$",
                           description="empty: affect-<device id>")
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    username: str | None = None
    password: SecretRef | None = None
    tls: TLSConfig = TLSConfig()
    # QoS 1 by default: with a local broker bridged to a central one, only QoS >= 1 survives an uplink outage.
    qos_results: Literal[0, 1, 2] = 1
    qos_events: Literal[0, 1, 2] = 1
    qos_stats: Literal[0, 1, 2] = 1
    results_max_hz: float = Field(default=2.0, ge=0, le=1000, description="0: no limit")
    reconnect_initial_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=60.0, gt=0)
    max_inflight: int = Field(default=20, ge=1, le=65535)
    queue_max: int = Field(default=1000, ge=1)
    buffer_max_messages: int = Field(default=10000, ge=1)
    buffer_max_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    buffer_dir: Path | None = None
    discovery_prefix: str | None = Field(default="homeassistant", pattern=r"^[^#+]+$")

    @model_validator(mode="after")
    def _credentials(self) -> MQTTConfig:
        if self.password is not None and not self.username:
            raise ValueError("password is set but username is empty")
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("reconnect_max_s must be >= reconnect_initial_s")
        return self


class SinksConfig(Section):
    stdout: bool = False
    jsonl: Path | None = None


class StatsConfig(Section):
    interval_s: float = Field(default=10.0, gt=0)


class UpdateConfig(Section):
    """Fleet updates (docs/fleet.md). When enabled, the daemon runs `<bundles_dir>/current` and follows it."""

    enabled: bool = False
    bundles_dir: Path = Path("/var/lib/affect-sensor/bundles")
    trusted_keys_dir: Path = Path("/etc/affect-sensor/keys")
    keep: int = Field(default=3, ge=2, le=50)
    max_download_bytes: int = Field(default=256 * 1024 * 1024, ge=1)
    download_timeout_s: float = Field(default=60.0, gt=0)
    allow_http: bool = Field(default=False, description="plain-http bundle URLs (integrity still from signatures)")
    health_file: Path = Path("/run/affect-sensor/health.json")
    health_window_s: float = Field(default=20.0, ge=0)
    health_min_frames: int = Field(default=10, ge=0)
    health_min_faces: int = Field(default=1, ge=1, description="faces the new model must infer in the window")
    health_face_wait_s: float = Field(
        default=60.0, ge=0, description="how long the window waits past its end for faces before it rolls back "
                                        "as no_frames (transient: retried later), never passes without faces")
    health_stale_s: float = Field(
        default=30.0, gt=0, description="a live daemon's health report may be this old before it counts as "
                                        "stopped (a loaded CPU delays it)")
    swap_timeout_s: float = Field(default=120.0, gt=0)


class SensorConfig(Section):
    device: DeviceConfig = DeviceConfig()
    source: SourceConfig = SourceConfig()
    detection: DetectionConfig = DetectionConfig()
    model: ModelConfig = ModelConfig()
    head: HeadConfig = HeadConfig()
    mqtt: MQTTConfig = MQTTConfig()
    sinks: SinksConfig = SinksConfig()
    stats: StatsConfig = StatsConfig()
    update: UpdateConfig = UpdateConfig()
    daemon: DaemonConfig = DaemonConfig()

    @model_validator(mode="after")
    def _limits_agree(self) -> SensorConfig:
        """Limits that contradict each other are errors, not silent truncation."""
        d = self.detection
        if self.head.max_tracks < d.max_faces:
            raise ValueError(f"head.max_tracks ({self.head.max_tracks}) must be >= detection.max_faces "
                             f"({d.max_faces}): every face on screen needs a smoothing slot")
        # Tracks the detector missed keep their slots for up to track_max_missed runs, so up to
        # max_faces x (track_max_missed + 1) tracks may hold one. Past max_tracks the slot seen longest ago is
        # reused (that track restarts its smoothing if it returns; stats: slot_evictions): only the faces of one
        # frame must fit, which is the rule above. The daemon logs the product at start (pipeline/daemon.py).
        if d.min_face_px > min(self.source.width, self.source.height):
            raise ValueError(f"detection.min_face_px ({d.min_face_px}) is larger than the frame "
                             f"({self.source.width}x{self.source.height}): no face could pass")
        return self

    @model_validator(mode="after")
    def _one_bundle_owner(self) -> SensorConfig:
        if self.update.enabled and self.model.bundle is not None:
            raise ValueError("model.bundle must be unset when update.enabled is true: the update agent "
                             "decides the bundle (<update.bundles_dir>/current)")
        return self
