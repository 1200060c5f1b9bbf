"""The daemon's fault containment and its SIGHUP: a bad frame costs a frame; a reload says what it applied."""

from __future__ import annotations

import json
import logging

import pytest

from edge.fleet.health import read_report
from edge.pipeline.daemon import Daemon, RunLimits


def daemon_on_demo(tiny_bundle, tmp_path, *extra: str, frames: int = 12) -> Daemon:
    # duration_s: a broken stop decision fails the test in a minute instead of hanging it
    return Daemon(None, [f'model.bundle="{tiny_bundle}"', f'sinks.jsonl="{tmp_path / "out.jsonl"}"',
                         "model.threads=1", "source.fps=100", *extra],
                  limits=RunLimits(max_frames=frames, duration_s=60))


def failing(daemon: Daemon, on_calls: set[int] | None):
    """Make the processor raise on the given call numbers (None: on every call)."""
    real, count = daemon.processor.process, [0]

    def process(*args, **kwargs):
        count[0] += 1
        if on_calls is None or count[0] in on_calls:
            raise ValueError(f"injected failure on call {count[0]}")
        return real(*args, **kwargs)

    daemon.processor.process = process  # type: ignore[method-assign]


def test_a_frame_that_raises_is_logged_counted_and_skipped(tiny_bundle, tmp_path, caplog):
    daemon = daemon_on_demo(tiny_bundle, tmp_path)
    failing(daemon, {3, 7})
    caplog.set_level(logging.ERROR)
    assert daemon.run() == 0  # the run went on to its frame limit
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(records) == 12 and daemon.state.frame_errors == 2
    assert [r.getMessage().split(":")[0] for r in caplog.records if "skipped" in r.getMessage()] == [
        "frame 3 skipped (1 in a row, limit 25)", "frame 7 skipped (1 in a row, limit 25)"]
    snapshot = daemon.stats_snapshot(_Capture(), 1.0)
    assert snapshot["frame_errors"] == 2


def test_consecutive_failures_end_the_daemon_non_zero_with_one_clear_message(tiny_bundle, tmp_path):
    daemon = daemon_on_demo(tiny_bundle, tmp_path, "daemon.max_consecutive_frame_errors=3")
    failing(daemon, None)
    assert daemon.run() == 1  # systemd's Restart=on-failure restarts it (exit 2 would stop the restarts)
    assert daemon.exit_message == ("3 frames in a row failed (last: ValueError: injected failure on call 3); "
                                   "exiting so systemd restarts the daemon (daemon.max_consecutive_frame_errors)")


def test_a_good_frame_resets_the_run_of_failures(tiny_bundle, tmp_path):
    daemon = daemon_on_demo(tiny_bundle, tmp_path, "daemon.max_consecutive_frame_errors=3")
    failing(daemon, {1, 2, 4, 5, 7, 8})  # never three in a row
    assert daemon.run() == 0 and daemon.state.frame_errors == 6


def test_the_health_report_counts_faces_and_frame_errors(tiny_bundle, tmp_path):
    health = tmp_path / "health.json"
    daemon = daemon_on_demo(tiny_bundle, tmp_path, f'update.health_file="{health}"')
    failing(daemon, {2})
    daemon.store = object()  # write_report only needs the config's path
    daemon.run()
    daemon._write_health()
    report = read_report(health)
    assert report.frame_errors == 1 and report.faces_inferred == daemon.state.faces_inferred > 0


class _Capture:
    """What stats_snapshot reads of the capture thread."""

    def stats(self):
        from edge.capture.reader import CaptureStats

        return CaptureStats(frames=12)


# ---------------------------------------------------------------- SIGHUP


def write(path, text: str):
    path.write_text(text)
    return path


BASE = '[source]\nfps = 30\n[model]\nthreads = 1\nbundle = "{bundle}"\n[stats]\ninterval_s = 10.0\n' \
       '[detection]\nevery_k_frames = 3\n[mqtt]\nport = 1883\n'


def test_sighup_applies_live_sections_and_names_the_ones_that_need_a_restart(tiny_bundle, tmp_path, caplog):
    config = write(tmp_path / "sensor.toml", BASE.format(bundle=tiny_bundle))
    daemon = Daemon(config, limits=RunLimits(max_frames=1))
    front = daemon.processor.front
    runtime = daemon.processor.runtime
    changed = BASE.format(bundle=tiny_bundle).replace("interval_s = 10.0", "interval_s = 2.5") \
        .replace("every_k_frames = 3", "every_k_frames = 2").replace("port = 1883", "port = 1999") \
        .replace("fps = 30", "fps = 12")
    write(config, changed)
    caplog.set_level(logging.INFO)
    daemon._reload()
    text = caplog.text
    assert "restart needed for [source]" in text and "restart needed for [mqtt]" in text
    assert "[detection] applied live (detector and tracker rebuilt: tracks restart)" in text
    assert "[stats] applied live" in text
    c = daemon.config
    assert (c.stats.interval_s, c.detection.every_k_frames) == (2.5, 2)  # applied
    assert (c.source.fps, c.mqtt.port) == (30, 1883)  # still what runs, until a restart
    assert daemon.processor.front is not front and daemon.processor.runtime is runtime  # no model swap
    assert daemon.swapper is None


def test_sighup_with_a_head_change_swaps_the_runtime_and_applies_it_then(tiny_bundle, tmp_path, caplog):
    config = write(tmp_path / "sensor.toml", BASE.format(bundle=tiny_bundle))
    daemon = Daemon(config, limits=RunLimits(max_frames=1))
    write(config, BASE.format(bundle=tiny_bundle) + '[head]\nsmoothing = "window"\nwindow = 3\n')
    caplog.set_level(logging.INFO)
    daemon._reload()
    assert "[head] applied with the next model swap" in caplog.text
    assert daemon.config.head.smoothing == "ema"  # not yet: the new runtime is loading
    daemon.swapper.done.wait(60)
    daemon._finish_swap()
    assert daemon.config.head.smoothing == "window" and daemon.processor.runtime.spec.window == 3
    assert "kept 0 tracks, restarted their smoothing: the smoothing layout changed" in caplog.text


def test_sighup_with_a_broken_file_keeps_everything(tiny_bundle, tmp_path, caplog):
    config = write(tmp_path / "sensor.toml", BASE.format(bundle=tiny_bundle))
    daemon = Daemon(config, limits=RunLimits(max_frames=1))
    before = daemon.config
    write(config, "[stats]\ninterval_s = -1\n")
    daemon._reload()
    assert daemon.config is before and "config reload failed" in caplog.text


@pytest.mark.parametrize("key", ["update.keep=5", "update.health_window_s=5"])
def test_agent_only_update_keys_need_no_daemon_restart(tiny_bundle, tmp_path, caplog, key):
    config = write(tmp_path / "sensor.toml", BASE.format(bundle=tiny_bundle))
    daemon = Daemon(config, limits=RunLimits(max_frames=1))
    _, _, value = key.partition(".")
    write(config, BASE.format(bundle=tiny_bundle) + f"[update]\n{value}\n")
    caplog.set_level(logging.INFO)
    daemon._reload()
    assert "restart needed" not in caplog.text and "agent-only keys" in caplog.text
