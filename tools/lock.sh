#!/usr/bin/env bash
# Regenerate the version locks in locks/ with uv (pip install uv). CI installs and tests
# locks/ci-py311.txt; docs/service.md and docs/jetson.md say how devices use them.
set -euo pipefail
cd "$(dirname "$0")/.."
torch_pin=$(mktemp)
trap 'rm -f "$torch_pin"' EXIT
echo "torch==2.13.0" >"$torch_pin"

# What CI tests: Python 3.11 on x86_64 Linux, CPU PyTorch (the wheel in $PIP_FIND_LINKS, e.g. /opt/wheels).
uv pip compile pyproject.toml --quiet --extra edge --extra quantize --extra dev \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  ${PIP_FIND_LINKS:+--find-links "$PIP_FIND_LINKS"} -c "$torch_pin" \
  --custom-compile-command "tools/lock.sh" -o locks/ci-py311.txt

# JetPack 6 (Ubuntu 22.04, Python 3.10, aarch64): the edge-jetson extra. Resolved, not tested by CI.
uv pip compile pyproject.toml --quiet --extra edge-jetson --extra dev \
  --python-version 3.10 --python-platform aarch64-manylinux_2_35 \
  --custom-compile-command "tools/lock.sh" -o locks/jetpack6-py310.txt
