# Environment for Flower in this project (sourced by the scripts; source it yourself before
# running `flwr run .` by hand): the venv's commands on PATH (flwr starts flower-superlink),
# a project-local Flower home, no telemetry, and no runtime dependency installation (it would `uv sync` a multi-GB CUDA torch for every run).
_fedllm_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$_fedllm_root/.venv/bin:$PATH"
export FLWR_HOME="${FLWR_HOME:-$_fedllm_root/.flwr}"
export FLWR_TELEMETRY_ENABLED=0
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export RAY_ENABLE_UV_RUN_RUNTIME_ENV=0
unset _fedllm_root
