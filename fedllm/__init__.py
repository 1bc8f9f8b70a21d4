"""fedllm: federated, differentially private training with honest, per-site privacy accounting.

The library behind the Flower apps in ``server/`` and ``clients/``: typed run config, tasks
(model + data + train/evaluate), data loaders and partitioners, privacy (calibration,
accounting, Opacus wrapping), weights exchange, metrics and reports.
"""

from fedllm.config import RunConfig
from fedllm.errors import (
    ConfigError,
    DataError,
    FedLLMError,
    PrivacyBudgetExceededError,
    PrivacyError,
    UpdateError,
)

__version__ = "0.1.0"

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
