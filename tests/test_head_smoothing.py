"""Per-track smoothing of the NumPy head: EMA, window, slot reuse and the slot table."""

from __future__ import annotations

import numpy as np
import pytest

from edge.config.models import HeadConfig
from edge.head import NumpyHead, SlotsExhaustedError, SmoothingSpec, TrackSlots, TrackSmoother
from edge.head.params import synthetic_params

C = 3


def frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, C)).astype(np.float32)


def test_ema_follows_the_recursion() -> None:
    alpha = 0.3
    sm = TrackSmoother(SmoothingSpec("ema", alpha=alpha, max_tracks=2), C)
    ps = frames(6)
    expected = ps[0].astype(np.float64)
    for t, p in enumerate(ps):
        out = sm.update(p[None], np.array([1]), np.array([t == 0]))
        if t:
            expected = alpha * p + (1 - alpha) * expected
        np.testing.assert_allclose(out[0], expected, atol=1e-6)
    assert sm.counters[0].tolist() == [0, 0]  # slot 0 untouched
    assert sm.counters[1].tolist() == [1, 0]


def test_window_is_the_mean_of_the_last_frames() -> None:
    sm = TrackSmoother(SmoothingSpec("window", window=3, max_tracks=1), C)
    ps = frames(7, seed=1)
    for t, p in enumerate(ps):
        out = sm.update(p[None], np.array([0]), np.array([t == 0]))
        np.testing.assert_allclose(out[0], ps[max(0, t - 2) : t + 1].mean(axis=0), atol=1e-6)
    assert sm.counters[0].tolist() == [3, 7 % 3]


def test_tracks_do_not_mix_and_untracked_faces_pass_through() -> None:
    sm = TrackSmoother(SmoothingSpec("window", window=2, max_tracks=4), C)
    a, b, c = frames(3, seed=2), frames(3, seed=3), frames(3, seed=4)
    for t in range(3):
        batch = np.stack([a[t], b[t], c[t]])
        out = sm.update(batch, np.array([2, 0, -1]), np.array([t == 0, t == 0, False]))
        np.testing.assert_allclose(out[0], a[max(0, t - 1) : t + 1].mean(axis=0), atol=1e-6)
        np.testing.assert_allclose(out[1], b[max(0, t - 1) : t + 1].mean(axis=0), atol=1e-6)
        np.testing.assert_array_equal(out[2], c[t])


@pytest.mark.parametrize("mode", ["ema", "window"])
def test_fresh_slot_forgets_the_previous_track(mode: str) -> None:
    sm = TrackSmoother(SmoothingSpec(mode, alpha=0.5, window=4, max_tracks=1), C)
    old, new = frames(5, seed=5), frames(2, seed=6)
    for t, p in enumerate(old):
        sm.update(p[None], np.array([0]), np.array([t == 0]))
    first = sm.update(new[0][None], np.array([0]), np.array([True]))
    np.testing.assert_array_equal(first[0], new[0])
    second = sm.update(new[1][None], np.array([0]), np.array([False]))
    expected = 0.5 * new[1] + 0.5 * new[0] if mode == "ema" else (new[0] + new[1]) / 2
    np.testing.assert_allclose(second[0], expected, atol=1e-6)


def test_mode_none_returns_the_input() -> None:
    sm = TrackSmoother(SmoothingSpec("none", max_tracks=2), C)
    ps = frames(2)
    for t in range(3):
        np.testing.assert_array_equal(sm.update(ps, np.array([0, 1]), np.array([t == 0] * 2)), ps)


def test_bad_slots_are_refused() -> None:
    sm = TrackSmoother(SmoothingSpec("ema", max_tracks=2), C)
    with pytest.raises(ValueError, match="twice"):
        sm.update(frames(2), np.array([1, 1]), np.array([True, True]))
    with pytest.raises(ValueError, match=r"in \[0, 2\)"):
        sm.update(frames(1), np.array([2]), np.array([True]))
    with pytest.raises(ValueError, match="shape"):
        sm.update(frames(2), np.array([0]), np.array([True]))


def test_slot_table_reuses_freed_slots_fresh() -> None:
    slots = TrackSlots(max_tracks=2)
    s, fresh = slots.assign([10, 11])
    assert s.tolist() == [0, 1] and fresh.tolist() == [True, True]
    s, fresh = slots.assign([11, 10])
    assert s.tolist() == [1, 0] and fresh.tolist() == [False, False]
    with pytest.raises(SlotsExhaustedError, match="max_tracks"):
        slots.assign([10, 11, 12])
    slots.release(10)
    slots.release(99)  # unknown id: nothing to free
    s, fresh = slots.assign([12, 11])
    assert s.tolist() == [0, 1] and fresh.tolist() == [True, False]
    assert slots.active == {11: 1, 12: 0}
    with pytest.raises(ValueError, match="twice"):
        slots.assign([11, 11])


def test_head_with_slot_table_end_to_end() -> None:
    """A track that leaves frees its slot; the next track there starts from its own first frame."""
    params = synthetic_params(n_fe=5, n_au=6, dim=32, seed=1)
    head = NumpyHead(params, SmoothingSpec.from_config(HeadConfig(smoothing="ema", ema_alpha=0.25, max_tracks=1)))
    table = TrackSlots(1)
    rng = np.random.default_rng(0)
    for _ in range(4):
        f, g = rng.standard_normal((2, 1, 32)).astype(np.float32)
        smoothed = head.run(f, g, *table.assign([7]))
    raw_fe, _ = head.folded.forward(f, g)
    assert not np.allclose(smoothed.fe_prob, raw_fe)  # smoothing changed something
    table.release(7)
    f, g = rng.standard_normal((2, 1, 32)).astype(np.float32)
    out = head.run(f, g, *table.assign([8]))
    raw_fe, raw_au = head.folded.forward(f, g)
    np.testing.assert_array_equal(out.fe_prob, raw_fe)
    np.testing.assert_array_equal(out.au_prob, raw_au)
    np.testing.assert_array_equal(out.au_active, raw_au >= params.au_threshold)


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="alpha"):
        SmoothingSpec("ema", alpha=0.0)
    with pytest.raises(ValueError, match="mode"):
        SmoothingSpec("median")  # type: ignore[arg-type]
    assert SmoothingSpec("window", window=4).depth == 4 and SmoothingSpec("ema", window=4).depth == 1


def test_a_full_slot_table_gives_the_slot_seen_longest_ago_instead_of_failing() -> None:
    """Issue 18: more live tracks than slots (tracks the detector missed keep theirs) must not stop the daemon."""
    slots = TrackSlots(max_tracks=2)
    slots.assign([1])
    slots.assign([2])
    slots.assign([1])  # 1 seen again: 2 is now the one seen longest ago
    s, fresh = slots.assign([3])
    assert s.tolist() == [1] and fresh.tolist() == [True] and slots.evictions == 1
    assert slots.active == {1: 0, 3: 1}
    s, fresh = slots.assign([2, 3])  # 2 comes back: a new start, in the slot of 1 (not in this batch)
    assert s.tolist() == [0, 1] and fresh.tolist() == [True, False] and slots.evictions == 2
    with pytest.raises(SlotsExhaustedError, match="3 faces in one batch but only 2 smoothing slots"):
        slots.assign([4, 5, 6])
