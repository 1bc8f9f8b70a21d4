#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv, torch 2.13.0 (CPU wheel) first,
# then fedllm itself (editable) with the optional extras named in $1 (e.g. "test").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "fedllm setup: creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
echo "fedllm setup: installing torch==2.13.0, then fedllm${1:+[$1]}"
.venv/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${1:+[$1]}"
