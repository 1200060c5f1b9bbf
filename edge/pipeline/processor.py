"""One frame through the whole model path: faces -> crops -> engine -> head -> result record.

No threads, no sources, no sinks: `run`, `analyze` and `bench` all drive this
same object, so what a user sees on their own photos is what the daemon does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from edge.bundle import Bundle
from edge.config.models import SensorConfig
from edge.head.params import load_head_params
from edge.head.runner import HeadRunner, select_head
from edge.head.smoothing import SmoothingSpec, TrackSlots
from edge.publish.payloads import BundleRef, ResultRecord, face_result, result_record
from edge.runtime.backend import Backend
from edge.runtime.preprocess import to_tensor
from edge.runtime.select import open_backend
from edge.tracking.frontend import FaceFrontEnd, FrameFaces

STAGES = ("detect", "track", "align", "infer", "head")


@dataclass
class FrameResult:
    record: ResultRecord
    faces: FrameFaces
    stage_ms: dict[str, float] = field(default_factory=dict)
    invalid: int = 0  # faces dropped because the model gave non-finite outputs


class FrameProcessor:
    def __init__(self, bundle: Bundle, config: SensorConfig, device_id: str,
                 backend: Backend | None = None, head: HeadRunner | None = None) -> None:
        spec = bundle.manifest.input
        self.bundle, self.config, self.device_id = bundle, config, device_id
        self.labels = bundle.manifest.label_space
        self.bundle_ref = BundleRef(name=bundle.manifest.name, version=bundle.manifest.version,
                                    build=bundle.manifest.build)
        self.front = FaceFrontEnd.from_config(
            config.detection, spec.crop_size, np.asarray(spec.alignment.points, dtype=np.float32), threads=1,
        )
        self.backend = backend if backend is not None else open_backend(bundle, config.model)
        head_file = bundle.role("head")
        if head_file is None:
            raise ValueError(f"bundle {bundle.path} has no head file")
        self.params = load_head_params(head_file)
        if (self.params.n_au, self.params.n_fe) != (len(self.labels.aus), len(self.labels.expressions)):
            raise ValueError(f"bundle {bundle.path}: head file sizes do not match the manifest's label spaces")
        smoothing = SmoothingSpec.from_config(config.head)
        self.head = head if head is not None else select_head(self.params, smoothing).runner
        self.slots = TrackSlots(smoothing.max_tracks)

    def process(self, image: np.ndarray, frame_id: int, captured_at: float | None = None,
                epoch_s: float | None = None) -> FrameResult:
        """`image` is BGR uint8; `captured_at` is time.monotonic() at capture (latency start)."""
        start = captured_at if captured_at is not None else time.monotonic()
        faces = self.front.process(image)
        for track_id in faces.ended:
            self.slots.release(track_id)
        stage = {"detect": faces.times.detect_ms, "track": faces.times.track_ms, "align": faces.times.align_ms}
        entries = []
        invalid = 0
        if faces.faces:
            crops = [face.crop for face in faces.faces]
            t0 = time.perf_counter()
            batch = self.config.model.batch_max
            fs, gs = [], []
            for i in range(0, len(crops), batch):
                features = self.backend.infer(to_tensor(crops[i : i + batch], self.bundle.manifest.input, "BGR"))
                fs.append(features.f)
                gs.append(features.g)
            t1 = time.perf_counter()
            ids = [face.track_id for face in faces.faces]
            slots, fresh = self.slots.assign(ids)
            out = self.head.run(np.concatenate(fs), np.concatenate(gs), slots, fresh)
            t2 = time.perf_counter()
            stage.update(infer=(t1 - t0) * 1e3, head=(t2 - t1) * 1e3)
            finite = np.isfinite(out.au_prob).all(axis=1) & np.isfinite(out.fe_prob).all(axis=1)
            invalid = int((~finite).sum())
            for i, face in enumerate(faces.faces):
                if not finite[i]:  # a broken model must not reach dashboards; the health report counts it
                    continue
                x1, y1, x2, y2 = (float(v) for v in face.box)
                entries.append(face_result(face.track_id, (x1, y1, x2 - x1, y2 - y1), face.score, self.labels,
                                           out.au_prob[i], out.au_active[i], out.fe_prob[i]))
        latency = (time.monotonic() - start) * 1e3
        record = result_record(self.device_id, self.bundle_ref, frame_id, entries, latency, epoch_s)
        return FrameResult(record, faces, stage, invalid)

    def reset_tracks(self) -> None:
        """After a camera reconnect: forget tracks and free their smoothing slots."""
        for track_id in self.front.reset():
            self.slots.release(track_id)

