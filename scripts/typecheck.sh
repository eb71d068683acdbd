#!/usr/bin/env bash
# mypy over the installed namespace: the stage folders install as exitflow.<stage> (setup.py), so
# mypy reads them through a tree of links that mirrors that layout.
set -euo pipefail
cd "$(dirname "$0")/.."
root=.cache/typecheck
rm -rf "$root" && mkdir -p "$root/exitflow"
cp exitflow/__init__.py "$root/exitflow/__init__.py"
for stage in devices encoders scheduler pipeline; do ln -s "$PWD/$stage" "$root/exitflow/$stage"; done
MYPYPATH="$root" "${PYTHON:-.venv/bin/python}" -m mypy --config-file pyproject.toml \
  -p exitflow.scheduler -p exitflow.devices -p exitflow.encoders -p exitflow.pipeline.inference -p exitflow.pipeline.evaluation "$@"
