"""Per-track temporal smoothing (docs/head.md) with the same state layout as the CUDA kernel.

State lives in per-slot arrays, not per-track objects, because on a GPU it sits
in device memory indexed by slot; the NumPy smoother uses the identical layout
so the two can be compared value by value. `TrackSlots` maps tracker ids to
slots and says when a slot starts fresh, so freeing a slot needs no device write.

A row that is not finite (a NaN or inf from a broken backend) never enters the
state: it is passed through, so the caller drops that face for that frame, and
the track's smoothing continues from its last good frame (the CUDA kernel does
the same, tests/test_kernel_emulated.py).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import numpy as np

SmoothingMode = Literal["none", "ema", "window"]
MODE_CODES: dict[str, int] = {"none": 0, "ema": 1, "window": 2}  # the kernel's `mode` argument
NO_SLOT = -1  # a face without a track: passed through unsmoothed


class SlotsExhaustedError(RuntimeError):
    """One batch holds more faces than there are smoothing slots (config validation keeps
    `head.max_tracks >= detection.max_faces`, so the daemon never sees it)."""


@dataclass(frozen=True)
class SmoothingSpec:
    mode: SmoothingMode = "ema"
    alpha: float = 0.4  # EMA weight of the newest frame
    window: int = 5  # frames averaged by the window smoother
    max_tracks: int = 64

    def __post_init__(self) -> None:
        if self.mode not in MODE_CODES:
            raise ValueError(f"smoothing mode must be one of {list(MODE_CODES)}, got {self.mode!r}")
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"ema alpha must lie in (0, 1], got {self.alpha}")
        if self.window < 1 or self.max_tracks < 1:
            raise ValueError(f"window and max_tracks must be >= 1, got {self.window} and {self.max_tracks}")

    @classmethod
    def from_config(cls, head: object) -> SmoothingSpec:
        """From `edge.config.models.HeadConfig` (the `[head]` section of sensor.toml)."""
        return cls(
            mode=head.smoothing,  # type: ignore[attr-defined]
            alpha=head.ema_alpha,  # type: ignore[attr-defined]
            window=head.window,  # type: ignore[attr-defined]
            max_tracks=head.max_tracks,  # type: ignore[attr-defined]
        )

    @property
    def depth(self) -> int:
        """Stored frames per slot: the ring size for "window", one for "ema"/"none"."""
        return self.window if self.mode == "window" else 1


def check_slots(slots: np.ndarray, fresh: np.ndarray, batch: int, max_tracks: int) -> tuple[np.ndarray, np.ndarray]:
    slots = np.asarray(slots)
    fresh = np.asarray(fresh)
    if slots.shape != (batch,) or fresh.shape != (batch,):
        raise ValueError(f"slots and fresh must have shape ({batch},), got {slots.shape} and {fresh.shape}")
    if not np.issubdtype(slots.dtype, np.integer):
        raise ValueError(f"slots must be integers, got {slots.dtype}")
    if np.any((slots < NO_SLOT) | (slots >= max_tracks)):
        raise ValueError(f"slots must be -1 (no track) or in [0, {max_tracks}), got {slots.tolist()}")
    tracked = slots[slots >= 0]
    if len(np.unique(tracked)) != len(tracked):
        raise ValueError(f"a slot appears twice in one batch: {slots.tolist()}")
    return slots.astype(np.int32), fresh.astype(bool)


class TrackSmoother:
    """Smoothing state for `max_tracks` slots; `update` smooths one batch of probability rows."""

    def __init__(self, spec: SmoothingSpec, channels: int) -> None:
        self.spec = spec
        self.channels = channels
        # values[slot, i] is the EMA (i = 0) or the i-th ring entry; counters[slot] = (fill, next ring index).
        self.values = np.zeros((spec.max_tracks, spec.depth, channels), dtype=np.float32)
        self.counters = np.zeros((spec.max_tracks, 2), dtype=np.int32)

    def update(self, p: np.ndarray, slots: np.ndarray, fresh: np.ndarray) -> np.ndarray:
        """Smoothed copy of `p` (B x channels); `fresh[i]` marks the first frame of a new track in slot i."""
        p = np.asarray(p, dtype=np.float32)
        if p.ndim != 2 or p.shape[1] != self.channels:
            raise ValueError(f"probabilities must have shape (batch, {self.channels}), got {p.shape}")
        slots, fresh = check_slots(slots, fresh, p.shape[0], self.spec.max_tracks)
        out = p.copy()
        if self.spec.mode == "none":
            return out
        finite = np.isfinite(p).all(axis=1)
        for i, slot in enumerate(slots):
            if slot == NO_SLOT:
                continue
            if fresh[i]:
                self.counters[slot] = 0
            if not finite[i]:  # passed through unsmoothed; the slot keeps its last good state
                continue
            if self.spec.mode == "ema":
                out[i] = self._ema(slot, p[i])
            else:
                out[i] = self._window(slot, p[i])
        return out

    def _ema(self, slot: int, p: np.ndarray) -> np.ndarray:
        if self.counters[slot, 0] == 0:
            self.values[slot, 0] = p
            self.counters[slot, 0] = 1
        else:
            a = np.float32(self.spec.alpha)
            self.values[slot, 0] = a * p + (np.float32(1) - a) * self.values[slot, 0]
        return self.values[slot, 0]

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of (values, counters), the layout the CUDA kernel keeps on the device."""
        return self.values.copy(), self.counters.copy()

    def load_state(self, values: np.ndarray, counters: np.ndarray) -> None:
        """Take over another smoother's state (a hot swap with the same label space and layout)."""
        if values.shape != self.values.shape or counters.shape != self.counters.shape:
            raise ValueError(f"smoothing state of shape {values.shape}/{counters.shape} does not fit "
                             f"{self.values.shape}/{self.counters.shape}")
        self.values[...] = values
        self.counters[...] = counters

    def _window(self, slot: int, p: np.ndarray) -> np.ndarray:
        fill, head = (int(v) for v in self.counters[slot])
        self.values[slot, head] = p
        fill = min(fill + 1, self.spec.window)
        self.counters[slot] = (fill, (head + 1) % self.spec.window)
        return self.values[slot, :fill].sum(axis=0) / np.float32(fill)


class TrackSlots:
    """Tracker id -> smoothing slot. The lowest free slot is reused first; new tracks start fresh.

    A track keeps its slot while the tracker keeps it alive, also on frames it is
    not fed to the model (missed by the detector). When every slot is held, the
    track seen longest ago that is not in this batch gives its slot up: if it
    returns it starts fresh, which costs its smoothing history, never the frame.
    """

    def __init__(self, max_tracks: int) -> None:
        self.max_tracks = max_tracks
        self._slot_of: OrderedDict[int, int] = OrderedDict()  # least recently assigned first
        self._free = list(range(max_tracks))  # a heap
        self.evictions = 0

    def assign(self, track_ids: list[int] | tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Slots and fresh flags for one batch of faces (one track id per face)."""
        if len(set(track_ids)) != len(track_ids):
            raise ValueError(f"a track id appears twice in one batch: {list(track_ids)}")
        if len(track_ids) > self.max_tracks:
            raise SlotsExhaustedError(
                f"{len(track_ids)} faces in one batch but only {self.max_tracks} smoothing slots; raise head.max_tracks"
            )
        batch = set(track_ids)
        slots = np.empty(len(track_ids), dtype=np.int32)
        fresh = np.zeros(len(track_ids), dtype=bool)
        for i, tid in enumerate(track_ids):
            if tid not in self._slot_of:
                if not self._free:
                    self._evict(batch)
                self._slot_of[tid] = heapq.heappop(self._free)
                fresh[i] = True
            self._slot_of.move_to_end(tid)
            slots[i] = self._slot_of[tid]
        return slots, fresh

    def _evict(self, keep: set[int]) -> None:
        oldest = next(tid for tid in self._slot_of if tid not in keep)  # exists: len(batch) <= max_tracks
        heapq.heappush(self._free, self._slot_of.pop(oldest))
        self.evictions += 1

    def release(self, track_id: int) -> None:
        """The track disappeared: its slot is free and the next track in it starts fresh."""
        slot = self._slot_of.pop(track_id, None)
        if slot is not None:
            heapq.heappush(self._free, slot)

    def clear(self) -> None:
        """Forget every assignment: each live track starts fresh on its next frame (new smoothing layout)."""
        self._slot_of.clear()
        self._free = list(range(self.max_tracks))

    @property
    def active(self) -> dict[int, int]:
        return dict(self._slot_of)
