"""fedllm: federated, differentially private training with honest, per-site privacy accounting.

The library behind the Flower apps in ``server/`` and ``clients/``: typed run config, tasks
(model + data + train/evaluate), data loaders and partitioners, privacy (calibration,
accounting, Opacus wrapping), weights exchange, metrics and reports.
"""

from typing import TYPE_CHECKING, Any

from fedllm.errors import (
    ConfigError,
    DataError,
    FedLLMError,
    PrivacyBudgetExceededError,
    PrivacyError,
    UpdateError,
)

if TYPE_CHECKING:
    from fedllm.config import RunConfig

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # RunConfig imports opacus (seconds): only code that uses it pays, not `fedllm --help`,
    # `fedllm certs` or a SuperNode's start-up.
    if name == "RunConfig":
        from fedllm.config import RunConfig

        return RunConfig
    raise AttributeError(f"module 'fedllm' has no attribute {name!r}")


__all__ = [
    "ConfigError",
    "DataError",
    "FedLLMError",
    "PrivacyBudgetExceededError",
    "PrivacyError",
    "RunConfig",
    "UpdateError",
    "__version__",
]
