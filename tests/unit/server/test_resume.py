"""Resuming a run (`resume-from`): the ServerApp's ``main`` in one process, the real ClientApp
functions as virtual sites behind an in-process grid. A FedAdam run cut after round 2 (its
process gone at that point, as SIGKILL would leave it) and resumed ends with the same model as
the same run uninterrupted: the global model, the round and Adam's moments all came back. A
resume that would change the model or the strategy is refused before any site is asked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import Context, RecordDict

from clients import client_app, secagg
from fedllm import protocol as proto
from fedllm.errors import CheckpointError
from server import recorder
from server.server_app import main
from tests.loopback_grid import LoopbackGrid
from tests.messages import instruction

NODES = [21, 22, 23]
RUN = {  # deterministic without DP: two runs agree up to float summation order
    "num-sites": len(NODES),
    "num-server-rounds": 4,
    "strategy": "fedadam",
    "server-learning-rate": 0.05,
    "dp": False,
    "secagg": False,
    "checkpoint": "plain",
    "min-available-nodes": len(NODES),
}


class Crash(Exception):
    """The ServerApp's process ends here (in these tests: the exception unwinds ``main``)."""


def _main(defaults: dict[str, Any], out: Path, name: str, **values: Any) -> Path:
    run_config = {**defaults, **RUN, "out-dir": str(out), "run-name": name, **values}
    handlers = {
        "train": client_app.train,
        "evaluate": client_app.evaluate_global,
        **{f"train.{k}": v for k, v in secagg.HANDLERS.items()},
    }
    node_configs = {
        n: {proto.NODE_PARTITION_ID: i, proto.NODE_NUM_PARTITIONS: len(NODES)}
        for i, n in enumerate(NODES)
    }
    instruction(NODES[0], RecordDict())  # sets Flower's task identity for messages
    grid = LoopbackGrid(NODES, handlers, run_config, node_configs)  # fresh node state: a new run
    server = Context(run_id=5, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    main(grid, server)
    return out / name


def _crash_after_round_2(monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(run_name: str, server_round: int) -> None:
        if server_round == 2:
            raise Crash(run_name)

    monkeypatch.setattr(recorder, "_crash_if_asked", crash)


@pytest.mark.slow  # three runs of the ServerApp with three sites: ~20 s
def test_a_resumed_fedadam_run_ends_with_the_uninterrupted_runs_model(
    defaults: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = _main(defaults, tmp_path, "whole")
    with monkeypatch.context() as patch:
        _crash_after_round_2(patch)
        with pytest.raises(Crash):
            _main(defaults, tmp_path, "cut")
    cut = tmp_path / "cut"
    assert not (cut / "model.pt").exists()
    _main(defaults, tmp_path, "ignored", **{"resume-from": str(cut)})
    assert not (tmp_path / "ignored").exists()  # the run went on in its own folder
    expected = torch.load(whole / "model.pt", weights_only=True)
    resumed = torch.load(cut / "model.pt", weights_only=True)
    for name, array in expected.items():  # the model, the round and Adam's moments came back
        assert torch.allclose(resumed[name], array, rtol=0, atol=1e-6), name
    metrics = json.loads((cut / "metrics.json").read_text())
    rounds = [r["round"] for r in metrics["rounds"]]
    assert rounds == [1, 2, 3, 4]
    assert metrics["rounds"][2]["resumed"] == {"after-round": 2}
    ledgers = sorted((cut / "sites").glob("*/ledger.jsonl"))
    assert len(ledgers) == len(NODES)
    for ledger in ledgers:  # one run at every site, each round once
        entries = [json.loads(line) for line in ledger.read_text().splitlines()]
        assert [e["round"] for e in entries] == [1, 2, 3, 4]
        assert len({e["run_id"] for e in entries}) == 1


@pytest.mark.slow  # two short runs of the ServerApp: ~10 s
@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        ({"strategy": "fedavg"}, "with `strategy` 'fedavg': the run was 'fedadam'"),
        ({"hidden-units": 8}, "the model differs from the checkpoint's .*hidden-units 0 -> 8"),
    ],
    ids=["strategy", "model"],
)
def test_a_resume_that_changes_the_model_or_the_strategy_is_refused(
    defaults: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    change: dict[str, Any],
    refusal: str,
) -> None:
    _crash_after_round_2(monkeypatch)
    with pytest.raises(Crash):
        _main(defaults, tmp_path, "cut")
    before = (tmp_path / "cut" / "metrics.json").read_text()
    with pytest.raises(CheckpointError, match=refusal):
        _main(defaults, tmp_path, "x", **{"resume-from": str(tmp_path / "cut"), **change})
    assert (tmp_path / "cut" / "metrics.json").read_text() == before  # untouched
