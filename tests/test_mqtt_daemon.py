"""The daemon and CLI on the subscriber's and the journal's side: the last result arrives at shutdown, and no
secret (a literal MQTT password, a camera URL's password) reaches an error, a log line or printed config."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from mqtt_broker import Collector, Mosquitto, free_port

from edge.pipeline.daemon import Daemon, RunLimits
from edge.redact import redact_url

pytestmark = pytest.mark.timeout(180)
CLI = [sys.executable, "-m", "edge.cli.main"]
# A password with '@', ':' and a percent escape: the kinds that broke the old split-at-the-first-'@' redaction.
CAMERA_PASSWORD = "s3:cr@t%40x"
MQTT_PASSWORD = "hunter2-literal-in-config"


def test_the_daemon_sends_the_last_result_the_rate_limit_held_when_it_stops(tmp_path, tiny_bundle):
    topic = "affect/cam-last/results"
    with Mosquitto(tmp_path / "broker") as broker, Collector(broker.plain_port, [topic]) as col:
        daemon = Daemon(None, [f'model.bundle="{tiny_bundle}"', "mqtt.enabled=true", f"mqtt.port={broker.plain_port}",
                               'device.id="cam-last"', "mqtt.results_max_hz=0.2",
                               "source.fps=30"], limits=RunLimits(max_frames=8))
        assert daemon.run() == 0
        assert col.wait_for(lambda _: 7 in [json.loads(m.payload)["frame_id"] for m in col.on(topic)], 10), \
            [json.loads(m.payload)["frame_id"] for m in col.on(topic)]
        assert [json.loads(m.payload)["frame_id"] for m in col.on(topic)] == [0, 7]


def _write(tmp_path, text: str):
    path = tmp_path / "sensor.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("command", [["run"], ["update-agent"], ["check-config"], ["listen", "--once"],
                                     ["fleet", "status"]])
def test_a_literal_password_in_the_config_is_never_echoed(tmp_path, command):
    config = _write(tmp_path, f'[mqtt]\nenabled = true\nusername = "sensor"\npassword = "{MQTT_PASSWORD}"\n'
                              '[update]\nenabled = true\n')
    args = [*command, "--config", str(config)] if command != ["check-config"] else [*command, str(config)]
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert MQTT_PASSWORD not in proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"affect-sensor: error: {config}: mqtt.password: a secret is never a literal value: give "
        '{ file = "/path" } or { env = "VARIABLE" } (the value given is not shown)'], proc.stderr


def test_a_camera_password_stays_out_of_the_daemon_log_and_the_printed_config(tmp_path, tiny_bundle):
    uri = f"rtsp://admin:{CAMERA_PASSWORD}@127.0.0.1:{free_port()}/live"  # nothing listens: it keeps retrying
    config = _write(tmp_path, f'[source]\nuri = "{uri}"\nreconnect_initial_s = 0.2\n[model]\nbundle = '
                              f'"{tiny_bundle}"\n')
    proc = subprocess.run([*CLI, "run", "--config", str(config), "--duration", "3"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    started = [line for line in proc.stderr.splitlines() if "started:" in line]
    assert len(started) == 1 and "source rtsp://admin:***@127.0.0.1:" in started[0], proc.stderr
    shown = subprocess.run([*CLI, "check-config", str(config)], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "rtsp://admin:***@127.0.0.1:" in shown.stdout, shown.stdout + shown.stderr
    for output in (proc.stdout + proc.stderr, shown.stdout + shown.stderr):
        for piece in ("s3:", "cr@t", "%40x", CAMERA_PASSWORD):
            assert piece not in output, (piece, output[-2000:])


@pytest.mark.parametrize("uri, shown", [
    ("rtsp://admin:s3cr@t@cam.local:554/live", "rtsp://admin:***@cam.local:554/live"),
    ("rtsp://admin:a:b:c@cam.local/live", "rtsp://admin:***@cam.local/live"),
    ("rtsp://admin:p%40ss%3Aw@cam.local/live?x=1", "rtsp://admin:***@cam.local/live?x=1"),
    ("rtsps://:only-password@10.0.0.5/", "rtsps://:***@10.0.0.5/"),
    ("rtsp://viewer@cam.local/live", "rtsp://viewer@cam.local/live"),
    ("rtsp://admin:pa/ss@cam.local/live", "rtsp://***@cam.local/live"),  # unescaped '/': hide all before '@'
    ("http://cam.local/snapshot?email=a@b", "http://cam.local/snapshot?email=a@b"),
    ("v4l2:/dev/video0", "v4l2:/dev/video0"),
    ("demo", "demo"),
])
def test_url_credentials_are_redacted_by_parsing(uri, shown):
    assert redact_url(uri) == shown
