"""The project's exception hierarchy: every error a user can cause names what was wrong."""

from __future__ import annotations


class FedLLMError(Exception):
    """Base class of every error fedllm raises on purpose."""


class ConfigError(FedLLMError, ValueError):
    """A run-config key has a missing, malformed or out-of-range value."""


class DataError(FedLLMError, ValueError):
    """A data file is missing, malformed or does not fit the task."""


class PrivacyError(FedLLMError):
    """A privacy parameter or accounting state is invalid."""


class PrivacyBudgetExceededError(PrivacyError):
    """Training this round would take a site past its target epsilon."""


class UpdateError(FedLLMError, ValueError):
    """Exchanged model arrays do not match the model (keys, shapes, dtypes, finiteness)."""


class SecAggError(FedLLMError):
    """Secure aggregation cannot go on (too few sites, a malformed message): fail closed."""


class CheckpointError(FedLLMError):
    """A checkpoint is missing, tampered with, or its key is wrong or unavailable."""


class PolicyError(PrivacyError):
    """The run asks for weaker privacy than the site's policy allows, or the policy is bad."""


class LedgerError(PrivacyError):
    """A site's privacy ledger is damaged, edited, or cannot be written."""


class SignatureError(FedLLMError):
    """A key is malformed, or a signature does not verify."""


def refusal_kind(err: FedLLMError) -> str:
    """What a site's refusal is about, as the server records it."""
    for cls, kind in _REFUSALS:
        if isinstance(err, cls):
            return kind
    return "privacy"


_REFUSALS: tuple[tuple[type[FedLLMError], str], ...] = (
    (PrivacyBudgetExceededError, "budget"),
    (PolicyError, "policy"),
    (LedgerError, "ledger"),
    # A deployed site's own data file does not fit the task (schema, shape, labels).
    (DataError, "data"),
    (UpdateError, "data"),
)


class CertificateError(FedLLMError):
    """A certificate or key file is missing, malformed, expired, or does not fit its use."""


class DeployError(FedLLMError):
    """A deployment command cannot start: a missing file, a refused key, a dead process."""


class AppNotTrustedError(FedLLMError):
    """A run ships an app (FAB) the site has not pinned: refused before any of its code runs."""
