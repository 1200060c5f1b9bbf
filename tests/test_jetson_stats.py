"""tegrastats lines -> the stats payload's `jetson` figures, and the payload still matches its JSON schema.

The lines are written from NVIDIA's documented tegrastats formats (docs/jetson.md); the parser has not yet
read the output of a real device.
"""

from __future__ import annotations

import jsonschema

from edge.pipeline.jetson_stats import parse_tegrastats
from edge.publish import schemas
from edge.publish.payloads import LatencyStats, stats_payload

# JetPack 6 on Orin prints the GPU frequency in brackets; older releases without.
ORIN = ("RAM 2448/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) CPU [2%@729,1%@729,0%@729,0%@729,0%@729,0%@729] "
        "EMC_FREQ 0%@2133 GR3D_FREQ 37%@[624] NVENC off NVDEC off VIC off APE 200 cpu@47.062C soc2@46.593C "
        "gpu@46.656C tj@47.062C VDD_IN 5364mW/4364mW VDD_CPU_GPU_CV 981mW/481mW VDD_SOC 1401mW/1401mW")
OLDER = "RAM 1990/3964MB (lfb 4x2MB) CPU [5%@1479,2%@1479] EMC_FREQ 3%@1600 GR3D_FREQ 12%@921 PLL@31C GPU@30.5C"


def test_orin_line_gives_gpu_load_power_and_temperatures() -> None:
    stats = parse_tegrastats(ORIN)
    assert (stats.gpu_load_percent, stats.gpu_freq_mhz) == (37.0, 624.0)
    assert (stats.ram_used_mb, stats.ram_total_mb) == (2448.0, 7620.0)
    assert stats.temperatures_c == {"cpu": 47.062, "soc2": 46.593, "gpu": 46.656, "tj": 47.062}
    assert stats.power_mw == {"VDD_IN": 5364.0, "VDD_CPU_GPU_CV": 981.0, "VDD_SOC": 1401.0}  # current, not average


def test_older_format_and_missing_fields() -> None:
    stats = parse_tegrastats(OLDER)
    assert (stats.gpu_load_percent, stats.gpu_freq_mhz) == (12.0, 921.0)
    assert stats.temperatures_c == {"pll": 31.0, "gpu": 30.5} and stats.power_mw == {}
    assert parse_tegrastats("") is None and parse_tegrastats("no figures here") is None


def test_stats_with_jetson_figures_match_the_published_schema() -> None:
    payload = stats_payload("cam-1", 10.0, 30.0, 29.5, 0, 1, {"frame": LatencyStats(p50=1, p95=2, p99=3, max=4)},
                            frame_errors=2, invalid_outputs=0, slot_evictions=1, jetson=parse_tegrastats(ORIN))
    schema = schemas.load("stats")
    jsonschema.validators.validator_for(schema)(schema).validate(payload.model_dump(mode="json"))
    assert schema["properties"]["jetson"] and schema["$defs"]["JetsonStats"]["properties"]["power_mw"]
