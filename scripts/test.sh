#!/usr/bin/env bash
# Install the project with its test tools, then lint, format-check, type-check and test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh test
source scripts/env.sh
echo "== ruff check"; .venv/bin/ruff check .
echo "== ruff format --check"; .venv/bin/ruff format --check .
echo "== mypy fedllm"; .venv/bin/mypy fedllm
echo "== pytest"
status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi
exit "$status"
