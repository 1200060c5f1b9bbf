"""One frame through the whole model path: faces -> crops -> model runtime -> result record.

No threads, no sources, no sinks: `run`, `analyze` and `bench` all drive this
same object, so what a user sees on their own photos is what the daemon does.
It is the long-lived front end (edge/pipeline/frontend.py: detector, tracker,
alignment, track slots) plus a swappable model runtime
(edge/pipeline/model_runtime.py: backend, head runner, smoothing state);
`swap` replaces only the runtime.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from edge.bundle import Bundle
from edge.config.models import SensorConfig
from edge.head.runner import HeadRunner
from edge.pipeline.frontend import FrontEnd
from edge.pipeline.model_runtime import ModelRuntime
from edge.publish.payloads import BundleRef, ResultRecord, face_result, result_record
from edge.runtime.backend import Backend
from edge.runtime.steps import StepTimes
from edge.tracking.frontend import FrameFaces

log = logging.getLogger(__name__)
STAGES = ("detect", "track", "align", "infer", "head")  # "head" is absent when it is fused into "infer" (GPU)


@dataclass
class FrameResult:
    record: ResultRecord
    faces: FrameFaces
    stage_ms: dict[str, float] = field(default_factory=dict)
    held: tuple[int, ...] = ()  # faces dropped for non-finite outputs: still in view, only without a result

    @property
    def invalid(self) -> int:
        """Faces dropped because the model gave non-finite outputs (counted in the health report)."""
        return len(self.held)


@dataclass(frozen=True)
class SwapOutcome:
    tracks: str  # "kept" or "reset"
    smoothing: str  # "carried" or "restarted"
    reason: str
    live_tracks: int

    def __str__(self) -> str:
        if self.tracks == "reset":
            return f"reset {self.live_tracks} tracks and their smoothing: {self.reason} (new track ids from here)"
        if self.smoothing == "restarted":
            return f"kept {self.live_tracks} tracks, restarted their smoothing: {self.reason}"
        return f"kept {self.live_tracks} tracks and their smoothing ({self.reason})"


class FrameProcessor:
    def __init__(self, bundle: Bundle, config: SensorConfig, device_id: str, backend: Backend | None = None,
                 head: HeadRunner | None = None, runtime: ModelRuntime | None = None) -> None:
        self.config, self.device_id = config, device_id
        self.runtime = runtime if runtime is not None else ModelRuntime(bundle, config, backend=backend, head=head)
        try:
            self.front = FrontEnd.from_config(config, self.runtime.input_spec)
        except BaseException:
            self.runtime.close()
            raise

    # What callers read of the model; it follows the runtime across swaps.
    @property
    def bundle(self) -> Bundle:
        return self.runtime.bundle

    @property
    def labels(self):
        return self.runtime.labels

    @property
    def backend(self) -> Backend:
        assert self.runtime.backend is not None
        return self.runtime.backend

    @property
    def head(self) -> HeadRunner:
        assert self.runtime.head is not None
        return self.runtime.head

    @property
    def params(self):
        return self.runtime.params

    @property
    def bundle_ref(self) -> BundleRef:
        return self.runtime.bundle_ref

    def process(self, image: np.ndarray, frame_id: int, captured_at: float | None = None,
                epoch_s: float | None = None) -> FrameResult:
        """`image` is BGR uint8; `captured_at` is time.monotonic() at capture (latency start)."""
        start = captured_at if captured_at is not None else time.monotonic()
        faces = self.front.process(image)
        stage = {"detect": faces.times.detect_ms, "track": faces.times.track_ms, "align": faces.times.align_ms}
        entries = []
        held: list[int] = []
        if faces.faces:
            ids = [face.track_id for face in faces.faces]
            slots, fresh = self.front.assign(ids)
            times = StepTimes()
            try:
                out = self.runtime.run([face.crop for face in faces.faces], slots, fresh, times)
            except BaseException:
                self.front.abandon(ids, fresh)  # their first frame never reached the head
                raise
            stage["infer"] = times.infer_ms
            if times.head_ms is not None:
                stage["head"] = times.head_ms
            finite = np.isfinite(out.au_prob).all(axis=1) & np.isfinite(out.fe_prob).all(axis=1)
            for i, face in enumerate(faces.faces):
                if not finite[i]:  # a broken model must not reach dashboards; the health report counts it
                    held.append(face.track_id)
                    continue
                x1, y1, x2, y2 = (float(v) for v in face.box)
                entries.append(face_result(face.track_id, (x1, y1, x2 - x1, y2 - y1), face.score, self.labels,
                                           out.au_prob[i], out.au_active[i], out.fe_prob[i]))
        latency = (time.monotonic() - start) * 1e3
        record = result_record(self.device_id, self.bundle_ref, frame_id, entries, latency, epoch_s)
        return FrameResult(record, faces, stage, tuple(held))

    def swap(self, runtime: ModelRuntime, config: SensorConfig | None = None) -> SwapOutcome:
        """Run `runtime` from the next frame: tracks and smoothing carried over when they keep their meaning.

        Same label space and smoothing layout: track ids and smoothing state carry over. Same label space,
        other layout: tracks stay, smoothing restarts. Another label space: tracks are reset on purpose
        (an expression id would name another expression). The old runtime is closed.
        """
        old = self.runtime
        live = len(self.front.slots.active)
        try:
            why = runtime.adopt(old.smoothing())
        except Exception as exc:  # an unreadable old state (a failed GPU) is a reason to start clean
            why = f"the running smoothing state could not be read ({exc})"
        if old.labels.aus != runtime.labels.aus or old.labels.expressions != runtime.labels.expressions:
            self.front.reset()
            self.front.restart_smoothing(runtime.spec.max_tracks)
            outcome = SwapOutcome("reset", "restarted", "the label space changed", live)
        elif why is not None:
            self.front.restart_smoothing(runtime.spec.max_tracks)
            outcome = SwapOutcome("kept", "restarted", why, live)
        else:
            outcome = SwapOutcome("kept", "carried", "same label space and smoothing layout", live)
        self.front.retarget(runtime.input_spec)
        self.runtime = runtime
        if config is not None:
            self.config = config
        old.close()
        log.info("hot swap to %s %s: %s", runtime.bundle.manifest.name, runtime.bundle.manifest.version, outcome)
        return outcome

    def rebuild_front(self, config: SensorConfig) -> None:
        """[detection] changed on SIGHUP: a new detector and tracker (tracks restart), the same model runtime."""
        evicted = self.front.slot_evictions
        self.front = FrontEnd.from_config(config, self.runtime.input_spec)
        self.front._earlier_evictions = evicted
        self.config = config

    def reset_tracks(self) -> None:
        """After a camera reconnect: forget tracks and free their smoothing slots."""
        self.front.reset()

    def close(self) -> None:
        self.runtime.close()
