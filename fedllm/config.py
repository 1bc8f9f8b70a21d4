"""Typed, validated run configuration parsed once from Flower's run config.

Defaults live in ``pyproject.toml`` under ``[tool.flwr.app.config]``; this module parses,
resolves and validates. Every key keeps one kebab-case spelling (see :data:`KEYS`).

Local training belongs to the task: the keys in :data:`TASK_DEFAULT_KEYS` default to 0 in
pyproject, meaning "the task decides", and :meth:`RunConfig.from_flower` replaces that 0 with
the task's tuned value (``Task.defaults``), else :data:`GLOBAL_DEFAULTS`. A value the user sets
always wins. ``flwr run .`` hands the apps pyproject defaults fused with the overrides, so this
0 is the only way an app can tell "not set" from "set"; the server and every site resolve the
same run config with the same code, so they agree on every value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from fedllm.data.partition import PARTITIONERS
from fedllm.errors import ConfigError
from fedllm.privacy.accountants import ACCOUNTANTS
from fedllm.privacy.engine import GRAD_SAMPLE_MODES

# "site": each site scales features with its own rows' statistics (nothing leaves the site).
# "federated": sites release per-feature count/sum/sum of squares; all use the pooled scaling.
FEATURE_SCALING = ("site", "federated")
# Server checkpoints each round: AES-256-GCM (default), plain (research), or none.
CHECKPOINT_MODES = ("encrypted", "plain", "off")
# The sites' local optimizer (DP-SGD noises the gradient either way; Adam only post-processes it).
OPTIMIZERS = ("sgd", "adam")
# The server's strategy: the names of server/strategies' registry (fedllm/ cannot import it;
# tests/unit/server/test_strategies.py checks the two agree).
STRATEGIES = ("fedavg", "fedadam", "fedprox")


def _key(name: str) -> str:
    return name.replace("_", "-")


# The pyproject value of a key in TASK_DEFAULT_KEYS that means "the task's default".
TASK_DECIDES = 0


class ValueSource(StrEnum):
    """Where a resolved local-training value came from (metrics.json `config-sources`)."""

    USER = "user"  # set in the run config (`-c key=value`, `--run-config`, a non-0 pyproject)
    TASK = "task"  # the task's tuned default (`Task.defaults`)
    GLOBAL = "global"  # the task does not tune it: GLOBAL_DEFAULTS


@dataclass(frozen=True)
class TrainingDefaults:
    """Local-training values a task tunes for itself; None leaves a key to GLOBAL_DEFAULTS."""

    num_server_rounds: int | None = None
    local_epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    max_grad_norm: float | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"a task default for `{_key(f.name)}` must be > 0, got {value}")


# Tuned for the tabular tasks (benchmarks/explore.py on breast cancer at epsilon 1); a task
# that declares no value for a key gets this one.
GLOBAL_DEFAULTS = TrainingDefaults(
    num_server_rounds=10, local_epochs=1, batch_size=128, learning_rate=4.0, max_grad_norm=0.5
)
TASK_DEFAULT_KEYS: tuple[str, ...] = tuple(_key(f.name) for f in fields(TrainingDefaults))


@dataclass(frozen=True)
class RunConfig:
    """One federated run: task, data split, schedule, local training and privacy."""

    task: str
    data_path: str
    label_column: str
    site_column: str
    feature_scaling: str
    num_sites: int
    partitioner: str
    dirichlet_alpha: float
    test_fraction: float
    seed: int
    num_server_rounds: int
    fraction_train: float
    fraction_evaluate: float
    min_available_nodes: int
    round_timeout: float
    local_epochs: int
    batch_size: int
    learning_rate: float
    hidden_units: int
    dp: bool
    target_epsilon: float
    target_delta: float
    max_grad_norm: float
    accountant: str
    grad_sample_mode: str
    ledger_dir: str
    out_dir: str
    run_name: str
    secagg: bool
    secagg_shares: int
    secagg_threshold: int
    secagg_clip_range: float
    checkpoint: str
    checkpoint_key: str
    # Client-level (site-level) DP: each site's whole update clipped to `client-clip` and
    # noised before masking so the released sum is (client-epsilon, client-delta)-DP per site.
    client_dp: bool
    client_epsilon: float
    client_delta: float
    client_clip: float

    # Language-model task (`text`): architecture, pretrained base, LoRA adapters.
    base_model: str = ""
    base_model_sha256: str = ""
    context_length: int = 64
    lm_layers: int = 2
    lm_heads: int = 4
    lm_width: int = 128
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: str = "q,k,v,o,up,down"
    # Local optimizer: plain SGD, or Adam (state fresh each round, as local Adam in FL is).
    optimizer: str = "sgd"
    # Research only: DP noise and Poisson batches derived from `seed` (public) instead of fresh
    # OS entropy; not private against the coordinator. Site policies refuse it by default.
    reproducible_noise: bool = False
    # Server strategy: FedAvg, FedAdam (Adam on the mean, learning rate `server-learning-rate`)
    # or FedProx (the sites add (mu/2) ||w - w_global||^2, mu = `proximal-mu`, outside DP).
    strategy: str = "fedavg"
    server_learning_rate: float = 0.1
    proximal_mu: float = 0.0
    # A run folder to continue from its last checkpoint (global model, round, strategy state,
    # metrics, the run's identity at the sites); empty: a new run.
    resume_from: str = ""
    # Releases besides DP-SGD, each a Gaussian mechanism in the sites' epsilon: the example
    # count once per run (noise std in records), and under DP the global models of the last
    # `site-evaluations` rounds evaluated at the sites (noise multiplier `evaluation-noise`).
    count_noise: float = 20.0
    site_evaluations: int = 0
    evaluation_noise: float = 10.0
    # Privacy audit (`fedllm audit`, simulation only): the canary file the audited site plants.
    audit_canaries: str = ""
    # Not a run-config key: where each TASK_DEFAULT_KEYS value came from, set by from_flower
    # (a key absent here was given explicitly). Metadata, so it takes no part in equality.
    sources: tuple[tuple[str, ValueSource], ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        self._check_positive("num_sites", "num_server_rounds", "local_epochs", "batch_size")
        self._check_positive("learning_rate", "dirichlet_alpha", "round_timeout")
        self._check_positive("context_length", "lm_layers", "lm_heads", "lm_width", "lora_alpha")
        if self.lora_rank < 0:
            raise ConfigError(
                f"`lora-rank` must be >= 0 (0 = full fine-tuning), got {self.lora_rank}"
            )
        if self.hidden_units < 0:
            raise ConfigError(f"`hidden-units` must be >= 0, got {self.hidden_units}")
        if self.partitioner not in PARTITIONERS:
            raise ConfigError(
                f"`partitioner` must be one of {', '.join(PARTITIONERS)}, got {self.partitioner!r}"
            )
        if self.feature_scaling not in FEATURE_SCALING:
            raise ConfigError(
                f"`feature-scaling` must be one of {', '.join(FEATURE_SCALING)}, "
                f"got {self.feature_scaling!r}"
            )
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ConfigError(
                f"`grad-sample-mode` must be one of {', '.join(GRAD_SAMPLE_MODES)}, "
                f"got {self.grad_sample_mode!r}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"`optimizer` must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"
            )
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(
                f"`accountant` must be one of {', '.join(ACCOUNTANTS)}, got {self.accountant!r}"
            )
        for name in ("fraction_train", "fraction_evaluate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"`{_key(name)}` must be in [0, 1], got {value}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"`test-fraction` must be in (0, 1), got {self.test_fraction}")
        if self.min_available_nodes < 1:
            raise ConfigError(f"`min-available-nodes` must be >= 1, got {self.min_available_nodes}")
        if self.min_available_nodes > self.num_sites:
            raise ConfigError(
                f"`min-available-nodes` ({self.min_available_nodes}) exceeds "
                f"`num-sites` ({self.num_sites})"
            )
        # Privacy parameters are validated even with dp off: a typo must not wait for dp = true.
        self._check_positive("target_epsilon", "max_grad_norm")
        if not 0.0 < self.target_delta < 1.0:
            raise ConfigError(f"`target-delta` must be in (0, 1), got {self.target_delta}")

        self._check_positive("count_noise", "evaluation_noise")
        if self.site_evaluations < 0:
            raise ConfigError(f"`site-evaluations` must be >= 0, got {self.site_evaluations}")
        self._check_secagg()
        self._check_client_dp()
        self._check_strategy()
        if self.checkpoint not in CHECKPOINT_MODES:
            raise ConfigError(
                f"`checkpoint` must be one of {', '.join(CHECKPOINT_MODES)}, "
                f"got {self.checkpoint!r}"
            )

    def _check_secagg(self) -> None:
        """SecAgg+: shares per site (0 = sized for the federation), threshold (0 = the
        sizing's; never below a majority, which sites refuse)."""
        if self.secagg_shares != 0 and self.secagg_shares < 2:
            raise ConfigError(f"`secagg-shares` must be 0 (all) or >= 2, got {self.secagg_shares}")
        if self.secagg_threshold != 0 and self.secagg_threshold < 2:
            raise ConfigError(
                f"`secagg-threshold` must be 0 (a majority) or >= 2, got {self.secagg_threshold}"
            )
        if self.secagg_shares and self.secagg_threshold > self.secagg_shares:
            raise ConfigError(
                f"`secagg-threshold` ({self.secagg_threshold}) exceeds `secagg-shares` "
                f"({self.secagg_shares})"
            )
        if self.secagg and self.num_sites < 2:
            raise ConfigError(
                "secure aggregation needs at least 2 sites (one site's sum is its update): "
                "`num-sites` is 1; set secagg=false for a single site"
            )
        if self.secagg and self.secagg_threshold > self.num_sites:
            raise ConfigError(
                f"`secagg-threshold` ({self.secagg_threshold}) exceeds `num-sites` "
                f"({self.num_sites}): no round could ever be unmasked"
            )
        self._check_positive("secagg_clip_range")

    def _check_client_dp(self) -> None:
        """Site-level DP: validated even when off, so a typo does not wait for client-dp."""
        self._check_positive("client_epsilon", "client_clip")
        if not 0.0 < self.client_delta < 1.0:
            raise ConfigError(f"`client-delta` must be in (0, 1), got {self.client_delta}")
        # With delta >= 1/N a mechanism that releases one random site's update in the clear
        # meets (0, delta)-DP at the site level: such a delta protects no one.
        if self.client_dp and self.client_delta >= 1.0 / self.num_sites:
            raise ConfigError(
                f"`client-delta` ({self.client_delta}) must be below 1 / `num-sites` "
                f"(1/{self.num_sites} = {1.0 / self.num_sites:.3g}): a larger delta allows "
                "releasing a whole site's update in the clear"
            )

    def _check_strategy(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(
                f"`strategy` must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}"
            )
        self._check_positive("server_learning_rate")
        if not (math.isfinite(self.proximal_mu) and self.proximal_mu >= 0.0):
            raise ConfigError(f"`proximal-mu` must be >= 0, got {self.proximal_mu}")
        if self.proximal_mu and self.strategy != "fedprox":
            raise ConfigError(
                f"`proximal-mu` is {self.proximal_mu} but `strategy` is {self.strategy!r}: the "
                'proximal term is FedProx\'s; set strategy = "fedprox" or proximal-mu = 0'
            )

    def _check_positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"`{_key(name)}` must be > 0, got {value}")

    @classmethod
    def from_flower(cls, run_config: Mapping[str, Any]) -> RunConfig:
        """Parse Flower's flat run config (kebab-case keys; unknown keys are an error) and
        resolve every "task decides" (0) local-training value."""
        unknown = sorted(set(run_config) - set(KEYS))
        if unknown:
            raise ConfigError(f"unknown run-config key(s): {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for f in _key_fields():
            key = _key(f.name)
            if key not in run_config:
                raise ConfigError(f"run-config key `{key}` is missing (defaults: pyproject.toml)")
            values[f.name] = _coerce(key, run_config[key], f.type)
        sources = _resolve_training(values)
        return cls(**values, sources=tuple(sources.items()))

    def to_flower(self) -> dict[str, Any]:
        """The resolved values, kebab-case: metrics.json's `config`, checkpoints."""
        return {_key(f.name): getattr(self, f.name) for f in _key_fields()}

    def as_given(self) -> dict[str, Any]:
        """The run config as the user gave it: resolved values back to 0 where the task or
        the global default decided. What a simulation hands the apps (as `flwr run` would);
        ``from_flower(cfg.as_given())`` gives back ``cfg`` and its sources."""
        given = self.to_flower()
        for key, source in self.sources:
            if source is not ValueSource.USER:
                given[key] = TASK_DECIDES
        return given

    def source(self, key: str) -> ValueSource:
        """Where the value of ``key`` came from (user for every key outside TASK_DEFAULT_KEYS)."""
        return dict(self.sources).get(key, ValueSource.USER)

    def config_sources(self) -> dict[str, str]:
        """``{key: "user" | "task" | "global"}`` for every task-decided key (metrics.json)."""
        return {key: self.source(key).value for key in TASK_DEFAULT_KEYS}

    def describe_training(self) -> str:
        """One line for logs: each local-training value and where it came from."""
        return ", ".join(
            f"{key} {getattr(self, key.replace('-', '_'))} ({self.source(key).value})"
            for key in TASK_DEFAULT_KEYS
        )


def _key_fields() -> tuple[Any, ...]:
    """The dataclass fields that are run-config keys (all but `sources`)."""
    return tuple(f for f in fields(RunConfig) if f.name != "sources")


def _resolve_training(values: dict[str, Any]) -> dict[str, ValueSource]:
    """Replace each "task decides" (0) local-training value in ``values`` with the task's
    default, else the global one; returns where every such value came from."""
    # Tasks import this module (their models read RunConfig), so their registry is imported
    # when a config is resolved, not when this module is.
    from fedllm.tasks.registry import task_defaults

    defaults = task_defaults(values["task"])
    sources: dict[str, ValueSource] = {}
    for f in fields(TrainingDefaults):
        key, value = _key(f.name), values[f.name]
        if value < 0:
            raise ConfigError(f"`{key}` must be > 0, got {value} (0 = the task's default)")
        if value != TASK_DECIDES:
            sources[key] = ValueSource.USER
        elif getattr(defaults, f.name) is not None:
            values[f.name] = getattr(defaults, f.name)
            sources[key] = ValueSource.TASK
        else:
            values[f.name] = getattr(GLOBAL_DEFAULTS, f.name)
            sources[key] = ValueSource.GLOBAL
    return sources


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    kind = annotation if isinstance(annotation, str) else annotation.__name__
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "on", "off"):
            return value.lower() in ("true", "on")
        raise ConfigError(f"`{key}` must be true or false, got {value!r}")
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise ConfigError(f"`{key}` must be an integer, got {value!r}")
        return int(value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"`{key}` must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"`{key}` must be a string, got {value!r}")
    return value


KEYS: tuple[str, ...] = tuple(_key(f.name) for f in _key_fields())
