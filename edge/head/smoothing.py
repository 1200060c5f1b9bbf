"""Per-track temporal smoothing (docs/head.md) with the same state layout as the CUDA kernel.

State lives in per-slot arrays, not per-track objects, because on a GPU it sits
in device memory indexed by slot; the NumPy smoother uses the identical layout
so the two can be compared value by value. `TrackSlots` maps tracker ids to
slots and says when a slot starts fresh, so freeing a slot needs no device write.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Literal

import numpy as np

SmoothingMode = Literal["none", "ema", "window"]
MODE_CODES: dict[str, int] = {"none": 0, "ema": 1, "window": 2}  # the kernel's `mode` argument
NO_SLOT = -1  # a face without a track: passed through unsmoothed


class SlotsExhaustedError(RuntimeError):
    """More simultaneous tracks than smoothing slots (raise `head.max_tracks`)."""


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
        for i, slot in enumerate(slots):
            if slot == NO_SLOT:
                continue
            if fresh[i]:
                self.counters[slot] = 0
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

    def _window(self, slot: int, p: np.ndarray) -> np.ndarray:
        fill, head = (int(v) for v in self.counters[slot])
        self.values[slot, head] = p
        fill = min(fill + 1, self.spec.window)
        self.counters[slot] = (fill, (head + 1) % self.spec.window)
        return self.values[slot, :fill].sum(axis=0) / np.float32(fill)


class TrackSlots:
    """Tracker id -> smoothing slot. The lowest free slot is reused first; new tracks start fresh."""

    def __init__(self, max_tracks: int) -> None:
        self.max_tracks = max_tracks
        self._slot_of: dict[int, int] = {}
        self._free = list(range(max_tracks))  # a heap

    def assign(self, track_ids: list[int] | tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Slots and fresh flags for one batch of faces (one track id per face)."""
        if len(set(track_ids)) != len(track_ids):
            raise ValueError(f"a track id appears twice in one batch: {list(track_ids)}")
        slots = np.empty(len(track_ids), dtype=np.int32)
        fresh = np.zeros(len(track_ids), dtype=bool)
        for i, tid in enumerate(track_ids):
            if tid not in self._slot_of:
                if not self._free:
                    raise SlotsExhaustedError(
                        f"all {self.max_tracks} smoothing slots are in use; raise head.max_tracks"
                    )
                self._slot_of[tid] = heapq.heappop(self._free)
                fresh[i] = True
            slots[i] = self._slot_of[tid]
        return slots, fresh

    def release(self, track_id: int) -> None:
        """The track disappeared: its slot is free and the next track in it starts fresh."""
        slot = self._slot_of.pop(track_id, None)
        if slot is not None:
            heapq.heappush(self._free, slot)

    @property
    def active(self) -> dict[int, int]:
        return dict(self._slot_of)
