"""The long-lived half of the pipeline: detector, tracker, alignment and track slots, bound to the config.

It outlives model swaps, so track ids continue across a swap and the MQTT
expression events see no end/start for a person who stayed in view. Only the
alignment target (crop size and template) follows the bundle, through
`retarget`. Track slots map tracker ids to smoothing-state rows of the model
runtime's head (edge/head/smoothing.TrackSlots).
"""

from __future__ import annotations

import numpy as np

from edge.bundle.manifest import InputSpec
from edge.config.models import SensorConfig
from edge.head.smoothing import TrackSlots
from edge.tracking.frontend import FaceFrontEnd, FrameFaces


class FrontEnd:
    def __init__(self, faces: FaceFrontEnd, max_tracks: int) -> None:
        self.faces = faces
        self.slots = TrackSlots(max_tracks)
        self._earlier_evictions = 0  # from slot tables replaced by restart_smoothing / reset

    @classmethod
    def from_config(cls, config: SensorConfig, spec: InputSpec) -> FrontEnd:
        faces = FaceFrontEnd.from_config(config.detection, spec.crop_size, _template(spec), threads=1)
        return cls(faces, config.head.max_tracks)

    # What benchmarks and `bench` reach for (benchmarks/peer_fer.py, edge/cli/bench_cmd.py).
    @property
    def detector(self):
        return self.faces.detector

    def still_faces(self, image: np.ndarray):
        """The faces one still image gives (FaceFrontEnd.still_faces), for benchmarks on photos."""
        return self.faces.still_faces(image)

    @property
    def template(self) -> np.ndarray:
        assert self.faces.template is not None
        return self.faces.template

    @property
    def crop_size(self) -> int:
        return self.faces.crop_size

    def process(self, image: np.ndarray) -> FrameFaces:
        """Detect or track, align; the slots of tracks that ended are freed here."""
        faces = self.faces.process(image)
        for track_id in faces.ended:
            self.slots.release(track_id)
        return faces

    def assign(self, track_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        return self.slots.assign(track_ids)

    def abandon(self, track_ids: list[int], fresh: np.ndarray) -> None:
        """A frame failed after `assign`: tracks that were new in it start fresh again on their next frame."""
        for tid, new in zip(track_ids, fresh, strict=True):
            if new:
                self.slots.release(tid)

    def retarget(self, spec: InputSpec) -> None:
        """Align to another bundle's crop (a swap to a bundle with another input spec); tracks are unaffected."""
        self.faces.crop_size, self.faces.template = spec.crop_size, _template(spec)

    @property
    def slot_evictions(self) -> int:
        """Times a live track lost its slot because all were held (it restarts its smoothing if it returns)."""
        return self._earlier_evictions + self.slots.evictions

    def restart_smoothing(self, max_tracks: int) -> None:
        """Keep the tracks, forget their slots: every live track starts fresh smoothing on its next frame."""
        self._earlier_evictions += self.slots.evictions
        self.slots = TrackSlots(max_tracks)

    def reset(self) -> list[int]:
        """Forget every track (camera reconnect, new label space); returns the ids that ended."""
        ended = self.faces.reset()
        self.restart_smoothing(self.slots.max_tracks)
        return ended


def _template(spec: InputSpec) -> np.ndarray:
    return np.asarray(spec.alignment.points, dtype=np.float32)
