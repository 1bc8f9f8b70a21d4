from __future__ import annotations

from typing import Any

import pytest

from fedllm.config import GLOBAL_DEFAULTS, KEYS, TASK_DEFAULT_KEYS, RunConfig, TrainingDefaults
from fedllm.errors import ConfigError
from fedllm.tasks import TASKS


def test_pyproject_defaults_parse_and_cover_every_key(defaults: dict[str, Any]) -> None:
    cfg = RunConfig.from_flower(defaults)
    assert set(defaults) == set(KEYS)
    assert cfg.task == "breast-cancer" and cfg.dp and cfg.target_epsilon == 1.0
    assert cfg.target_delta == 1e-5 and cfg.partitioner == "dirichlet"


def test_round_trip_keeps_kebab_case_and_the_sources(defaults: dict[str, Any]) -> None:
    cfg = RunConfig.from_flower({**defaults, "batch-size": 64})
    # What a simulation hands the apps is what the user gave: they resolve the same config.
    assert cfg.as_given() == {**defaults, "batch-size": 64}
    again = RunConfig.from_flower(cfg.as_given())
    assert again == cfg and again.sources == cfg.sources
    # metrics.json's `config` holds resolved values: parsed back, every value is explicit.
    assert RunConfig.from_flower(cfg.to_flower()) == cfg
    assert set(cfg.to_flower()) == set(KEYS)


def test_breast_cancer_keeps_the_tuned_tabular_values(defaults: dict[str, Any]) -> None:
    cfg = RunConfig.from_flower(defaults)
    assert (cfg.num_server_rounds, cfg.local_epochs, cfg.batch_size) == (10, 1, 128)
    assert (cfg.learning_rate, cfg.max_grad_norm) == (4.0, 0.5)
    assert cfg.config_sources() == dict.fromkeys(TASK_DEFAULT_KEYS, "task")


def test_each_task_resolves_to_its_own_defaults(defaults: dict[str, Any]) -> None:
    for name, task in TASKS.items():
        cfg = RunConfig.from_flower({**defaults, "task": name})
        for key in TASK_DEFAULT_KEYS:
            attr = key.replace("-", "_")
            declared = getattr(task.defaults, attr)
            expected = declared if declared is not None else getattr(GLOBAL_DEFAULTS, attr)
            assert getattr(cfg, attr) == expected, (name, key)
            assert cfg.source(key) == ("task" if declared is not None else "global"), (name, key)


def test_mnist_declares_its_own_training_values(defaults: dict[str, Any]) -> None:
    cfg = RunConfig.from_flower({**defaults, "task": "mnist"})
    assert cfg.batch_size != GLOBAL_DEFAULTS.batch_size
    assert cfg.max_grad_norm != GLOBAL_DEFAULTS.max_grad_norm
    assert cfg.source("batch-size") == "task"


def test_a_task_without_defaults_gets_the_global_ones(defaults: dict[str, Any]) -> None:
    cfg = RunConfig.from_flower({**defaults, "task": "csv"})
    assert cfg.batch_size == GLOBAL_DEFAULTS.batch_size and cfg.source("batch-size") == "global"
    assert "batch-size 128 (global)" in cfg.describe_training()


def test_a_value_the_user_sets_wins_even_when_it_equals_the_default(
    defaults: dict[str, Any],
) -> None:
    task_value = TASKS["mnist"].defaults.learning_rate
    cfg = RunConfig.from_flower(
        {**defaults, "task": "mnist", "batch-size": 32, "learning-rate": task_value}
    )
    assert cfg.batch_size == 32 and cfg.learning_rate == task_value
    assert cfg.source("batch-size") == cfg.source("learning-rate") == "user"
    assert cfg.source("max-grad-norm") == "task"
    assert cfg.config_sources()["batch-size"] == "user"


def test_an_unknown_task_is_refused_while_resolving(defaults: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="unknown `task` 'mnst'; known tasks: breast-cancer"):
        RunConfig.from_flower({**defaults, "task": "mnst"})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("target-epsilon", -1.0, "`target-epsilon` must be > 0, got -1.0"),
        ("target-epsilon", 0.0, "`target-epsilon` must be > 0"),
        ("max-grad-norm", -1.0, "`max-grad-norm` must be > 0, got -1.0 (0 = the task's default)"),
        ("batch-size", -8, "`batch-size` must be > 0, got -8 (0 = the task's default)"),
        ("learning-rate", float("nan"), "`learning-rate` must be > 0, got nan"),
        ("target-delta", 1.5, "`target-delta` must be in (0, 1)"),
        ("partitioner", "random", "`partitioner` must be one of"),
        ("accountant", "gdp", "`accountant` must be one of"),
        ("num-sites", 0, "`num-sites` must be > 0"),
        ("batch-size", 2.5, "`batch-size` must be an integer"),
        ("dp", "maybe", "`dp` must be true or false"),
        ("fraction-train", 1.5, "`fraction-train` must be in [0, 1]"),
        ("feature-scaling", "global", "`feature-scaling` must be one of site, federated"),
        ("secagg-threshold", 1, "`secagg-threshold` must be 0 (a majority) or >= 2, got 1"),
        ("secagg-threshold", 5, "`secagg-threshold` (5) exceeds `num-sites` (4)"),
        ("secagg-shares", 1, "`secagg-shares` must be 0 (all) or >= 2, got 1"),
        ("secagg-clip-range", 0.0, "`secagg-clip-range` must be > 0"),
        ("client-epsilon", 0.0, "`client-epsilon` must be > 0, got 0.0"),
        ("client-clip", -1.0, "`client-clip` must be > 0, got -1.0"),
        ("client-delta", 1.0, "`client-delta` must be in (0, 1), got 1.0"),
        ("client-dp", "yes", "`client-dp` must be true or false"),
        ("optimizer", "lamb", "`optimizer` must be one of sgd, adam, got 'lamb'"),
    ],
)
def test_bad_values_name_the_key_and_value(
    defaults: dict[str, Any], key: str, value: Any, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_flower({**defaults, key: value})
    assert message in str(err.value)


def test_unknown_and_missing_keys_are_refused(defaults: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="unknown run-config key"):
        RunConfig.from_flower({**defaults, "target-epsilom": 1.0})
    partial = dict(defaults)
    del partial["seed"]
    with pytest.raises(ConfigError, match="`seed` is missing"):
        RunConfig.from_flower(partial)


def test_dp_off_accepts_toml_and_string_spellings(defaults: dict[str, Any]) -> None:
    assert RunConfig.from_flower({**defaults, "dp": False}).dp is False
    assert RunConfig.from_flower({**defaults, "dp": "off"}).dp is False


def test_a_single_site_cannot_run_secure_aggregation(defaults: dict[str, Any]) -> None:
    one = {**defaults, "num-sites": 1, "min-available-nodes": 1}
    with pytest.raises(ConfigError, match="secure aggregation needs at least 2 sites"):
        RunConfig.from_flower(one)
    assert RunConfig.from_flower({**one, "secagg": False}).num_sites == 1


def test_client_delta_must_be_below_one_over_the_sites(defaults: dict[str, Any]) -> None:
    loose = {**defaults, "client-dp": True, "client-delta": 0.3}
    with pytest.raises(ConfigError, match=r"`client-delta` \(0.3\) must be below 1 / `num-sites`"):
        RunConfig.from_flower(loose)
    assert RunConfig.from_flower({**loose, "client-dp": False}).client_delta == 0.3


def test_a_task_cannot_declare_a_non_positive_default() -> None:
    with pytest.raises(ValueError, match="a task default for `batch-size` must be > 0, got 0"):
        TrainingDefaults(batch_size=0)
