"""JSON Schema files for every MQTT payload, generated from the pydantic models.

The files in `edge/schemas/` ship in the package so dashboard authors (and the
tests) can validate messages without this code. Regenerate after changing a
payload model:  python -m edge.publish.schemas --write
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path
from typing import Any

from edge.fsutil import atomic_write
from edge.publish import payloads as p

SCHEMA_BASE_URI = "https://affect-sensor.invalid/schemas/v1/"
# topic kind (file name) -> model; `status` also covers the Last Will.
MODELS: dict[str, type[p.Payload]] = {
    "status": p.StatusPayload,
    "info": p.InfoPayload,
    "results": p.ResultRecord,
    "events": p.EventPayload,
    "stats": p.StatsPayload,
    "update_desired": p.UpdateDesired,
    "update_state": p.UpdateState,
}


def generate(kind: str) -> dict[str, Any]:
    schema = MODELS[kind].model_json_schema(mode="serialization")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": f"{SCHEMA_BASE_URI}{kind}.json",
            **schema}


def render(kind: str) -> str:
    return json.dumps(generate(kind), indent=2, sort_keys=True) + "\n"


def load(kind: str) -> dict[str, Any]:
    """The shipped schema file for a topic kind."""
    if kind not in MODELS:
        raise KeyError(f"no schema for {kind!r}; known: {sorted(MODELS)}")
    text = resources.files("edge").joinpath("schemas", f"{kind}.json").read_text(encoding="utf-8")
    return json.loads(text)


def write_all(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in MODELS:
        target = directory / f"{kind}.json"
        atomic_write(target, render(kind).encode("utf-8"))
        written.append(target)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="(re)write edge/schemas/*.json")
    args = parser.parse_args()
    directory = Path(__file__).resolve().parent.parent / "schemas"
    if args.write:
        for path in write_all(directory):
            print(path)
    else:
        stale = [k for k in MODELS if not (directory / f"{k}.json").exists()
                 or (directory / f"{k}.json").read_text(encoding="utf-8") != render(k)]
        print("stale: " + ", ".join(stale) if stale else "up to date")
        return 1 if stale else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
