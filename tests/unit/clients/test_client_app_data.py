"""A deployed site whose own data file does not fit the task refuses (kind `data`) with a
reason naming the file, instead of crashing its ClientApp."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from clients.client_app import evaluate_global, train
from fedllm import protocol as proto
from fedllm.tasks import get_task
from fedllm.weights import to_arrays
from tests.conftest import write_heart_center


@pytest.fixture(autouse=True)
def task_identity() -> Iterator[None]:
    """What a ClientApp process knows about itself (Flower sets it before the app runs)."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, 7
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def _message(kind: str, arrays: ArrayRecord) -> Message:
    content = RecordDict(
        {proto.ARRAYS: arrays, proto.CONFIG: ConfigRecord({proto.SERVER_ROUND: 1})}
    )
    return Message(content=content, dst_node_id=7, message_type=kind)


def _context(defaults: dict[str, Any], data: Path, site: Path) -> Context:
    run_config = {**defaults, "task": "heart-disease", "num-sites": 1, "min-available-nodes": 1,
                  "secagg": False}  # fmt: skip
    node_config = {
        "data-path": str(data),
        "site-name": "hospital-x",
        "policy-path": str(site / "policy.toml"),
        "ledger-path": str(site / "ledger.jsonl"),
        "site-key": str(site / "site-key.pem"),
    }
    return Context(7, 7, node_config, RecordDict(), run_config)


def _arrays(config: Any) -> ArrayRecord:
    return to_arrays(get_task("heart-disease").build_model(config(task="heart-disease"), (10,)))


def test_a_wrong_data_file_is_refused_with_the_reason(
    tmp_path: Path, defaults: dict[str, Any], config: Any
) -> None:
    wrong = tmp_path / "loans.csv"
    wrong.write_text("age,income,default\n30,1000,0\n40,2000,1\n")
    for handler, kind in ((train, "train"), (evaluate_global, "evaluate")):
        reply = handler(_message(kind, _arrays(config)), _context(defaults, wrong, tmp_path))

        assert not reply.has_error()
        refusal = reply.content.config_records[proto.REFUSAL]
        assert refusal[proto.REFUSAL_KIND] == "data"
        assert str(wrong) in str(refusal[proto.REFUSAL_REASON])
        assert "expected 14 comma-separated values" in str(refusal[proto.REFUSAL_REASON])
        assert reply.content.config_records[proto.SITE][proto.SITE_NAME] == "hospital-x"


def test_a_file_with_other_features_than_the_global_model_is_refused(
    tmp_path: Path, defaults: dict[str, Any], config: Any
) -> None:
    data = tmp_path / "processed.x.data"
    write_heart_center(data, 30, 0)
    model = get_task("heart-disease").build_model(config(task="heart-disease"), (12,))
    reply = evaluate_global(
        _message("evaluate", to_arrays(model)), _context(defaults, data, tmp_path)
    )

    refusal = reply.content.config_records[proto.REFUSAL]
    assert refusal[proto.REFUSAL_KIND] == "data"
