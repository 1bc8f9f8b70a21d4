#!/usr/bin/env bash
# Install the project with its test tools, then lint, format-check, type-check and test.
# Arguments go to pytest: CI runs everything; the quick loop is ./scripts/test.sh -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh test
source scripts/env.sh
echo "== ruff check"; .venv/bin/ruff check .
echo "== ruff format --check"; .venv/bin/ruff format --check .
echo "== mypy fedllm server clients"; .venv/bin/mypy fedllm server clients
echo "== pytest"
status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi
exit "$status"
