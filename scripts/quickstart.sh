#!/usr/bin/env bash
# The main job on a fresh machine: set up, then simulate hospitals training a shared model
# with DP (breast cancer, Dirichlet split, epsilon 1 per site). Extra arguments go to
# `fedllm simulate` (e.g. -c num-server-rounds=5).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
source scripts/env.sh
exec .venv/bin/fedllm simulate "$@"
