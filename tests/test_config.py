import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from edge.cli.main import main as sensor_cli
from edge.config import ConfigError, SensorConfig, effective_config, load_config

TEMPLATE = Path(__file__).resolve().parents[1] / "firmware_cfg" / "sensor.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sensor.toml"
    path.write_text(text)
    return path


def test_template_loads_to_the_defaults():
    assert load_config(TEMPLATE) == SensorConfig()


def _keys(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel) and name not in ("password",):
            out.append((f"{prefix}{name}", "section"))
            out.extend(_keys(ann, f"{prefix}{name}."))
        else:
            out.append((f"{prefix}{name}", "key"))
    return out


def test_template_documents_every_key():
    text = TEMPLATE.read_text()
    sections = set(re.findall(r"^\[([a-z_.]+)\]", text, flags=re.M))
    missing = []
    for key, kind in _keys(SensorConfig):
        section, _, leaf = key.rpartition(".")
        if kind == "section":
            if key not in sections:
                missing.append(f"[{key}]")
        elif not re.search(rf"^#?\s*{leaf}\s*=", text, flags=re.M) or (section and section not in sections):
            missing.append(key)
    assert not missing, f"firmware_cfg/sensor.toml does not document: {missing}"


def test_malformed_toml_names_file_and_line(tmp_path):
    path = write(tmp_path, "[mqtt\nport = 1\n")
    with pytest.raises(ConfigError, match=r"sensor\.toml: malformed TOML: .*line 1"):
        load_config(path)


def test_unknown_key_is_rejected_with_its_path(tmp_path):
    path = write(tmp_path, "[mqtt]\nprot = 1884\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == "mqtt.prot"
    assert "unknown key" in err.value.message


def test_unknown_section_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="camera: unknown key"):
        load_config(write(tmp_path, "[camera]\nuri = 'x'\n"))


def test_wrong_type_names_key_and_value(tmp_path):
    path = write(tmp_path, '[source]\nfps = "fast"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == "source.fps"
    assert "'fast'" in err.value.message
    assert str(path) in str(err.value)


def test_out_of_range_value(tmp_path):
    with pytest.raises(ConfigError, match=r"mqtt\.port: .*less than or equal to 65535"):
        load_config(write(tmp_path, "[mqtt]\nport = 70000\n"))


def test_missing_secret_file_fails_at_load(tmp_path):
    path = write(tmp_path, f'[mqtt]\nusername = "u"\npassword = {{ file = "{tmp_path}/nope" }}\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == "mqtt.password"
    assert "nope" in err.value.message


def test_missing_secret_env_fails_at_load(tmp_path, monkeypatch):
    monkeypatch.delenv("AFFECT_TEST_SECRET", raising=False)
    path = write(tmp_path, '[mqtt]\nusername = "u"\npassword = { env = "AFFECT_TEST_SECRET" }\n')
    with pytest.raises(ConfigError, match="AFFECT_TEST_SECRET is not set"):
        load_config(path)


def test_secret_needs_exactly_one_source(tmp_path):
    path = write(tmp_path, '[mqtt]\nusername = "u"\npassword = { file = "/a", env = "B" }\n')
    with pytest.raises(ConfigError, match=r"exactly one of .file. or .env."):
        load_config(path)


def test_literal_secret_is_not_accepted(tmp_path):
    with pytest.raises(ConfigError, match=r"mqtt\.password"):
        load_config(write(tmp_path, '[mqtt]\nusername = "u"\npassword = "hunter2"\n'))


def test_secret_is_read_and_masked(tmp_path, monkeypatch):
    (tmp_path / "pw").write_text("s3cret-value\n")
    path = write(tmp_path, f'[mqtt]\nusername = "u"\npassword = {{ file = "{tmp_path}/pw" }}\n')
    config = load_config(path)
    assert config.mqtt.password.read() == "s3cret-value"
    shown = effective_config(config)["mqtt"]["password"]
    assert "s3cret" not in shown and shown.startswith("******")


def test_overrides_are_typed_and_validated(tmp_path):
    path = write(tmp_path, "")
    config = load_config(path, ["source.uri=v4l2:/dev/video1", "mqtt.port=1884", "detection.max_faces=2"])
    assert (config.source.uri, config.mqtt.port, config.detection.max_faces) == ("v4l2:/dev/video1", 1884, 2)
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(path, ["source.uri"])
    with pytest.raises(ConfigError, match=r"mqtt\.port"):
        load_config(path, ["mqtt.port=many"])


def test_check_config_cli_prints_masked_config(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AFFECT_TEST_PW", "pa55word")
    path = write(tmp_path, '[mqtt]\nusername = "u"\npassword = { env = "AFFECT_TEST_PW" }\n')
    assert sensor_cli(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "pa55word" not in out and "AFFECT_TEST_PW" in out


def test_check_config_cli_reports_errors_without_traceback(tmp_path, capsys):
    path = write(tmp_path, "[model]\nbackend = 'tpu'\n")
    assert sensor_cli(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "model.backend" in err and "Traceback" not in err
