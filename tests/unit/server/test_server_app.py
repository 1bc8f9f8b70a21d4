"""The ServerApp's ``main`` end to end in one process: the real ClientApp functions as four
virtual sites behind an in-process grid (no Ray), one run per strategy, and what the run
folder holds afterwards."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import Context, RecordDict

from clients import client_app, secagg
from fedllm import protocol as proto
from fedllm.checkpoint import load_checkpoint
from fedllm.crypto.seal import SealKey
from server.server_app import main
from tests.loopback_grid import LoopbackGrid
from tests.messages import instruction

NODES = [11, 12, 13, 14]


class _Lines(logging.Handler):
    """Flower's log lines (its logger does not propagate to pytest's)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _run(defaults: dict[str, Any], out: Path, **values: Any) -> tuple[dict[str, Any], str]:
    run_config = {
        **defaults,
        "num-server-rounds": 2,
        "accountant": "rdp",
        "out-dir": str(out),
        "run-name": "run",
        **{k.replace("_", "-"): v for k, v in values.items()},
    }
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
    grid = LoopbackGrid(NODES, handlers, run_config, node_configs)
    server = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    main(grid, server)
    return json.loads((out / "run" / "metrics.json").read_text()), str(out / "run")


@pytest.mark.parametrize(
    "values",
    [
        {"strategy": "fedadam", "server_learning_rate": 0.05, "site_evaluations": 1},
        {"strategy": "fedprox", "proximal_mu": 0.1, "secagg": False, "site_evaluations": 2},
    ],
    ids=["fedadam-secagg", "fedprox-plain"],  # FedAvg over SecAgg+: tests/integration
)
def test_a_run_leaves_metrics_checkpoints_model_and_report(
    defaults: dict[str, Any],
    tmp_path: Path,
    values: dict[str, Any],
) -> None:
    printed = _Lines()
    logging.getLogger("flwr").addHandler(printed)
    try:
        metrics, run = _run(defaults, tmp_path, **values)
    finally:
        logging.getLogger("flwr").removeHandler(printed)
    progress = [line for line in printed.lines if line.startswith("fedllm round")]
    assert len(progress) == 2 and "| epsilon site-0 " in progress[-1]
    sites = {f"site-{i}" for i in range(len(NODES))}
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    # Under DP the sites evaluate only the last `site-evaluations` rounds' models (noised): the
    # first round's model, if asked, with the second round's train message.
    evaluated = {1: [2], 2: [1, 2]}[values["site_evaluations"]]
    for entry in metrics["rounds"]:
        assert set(entry["epsilon"]) == sites and set(entry["sites"]) == sites
        assert entry["refused"] == {} and entry["rejected"] == {}
        assert "accuracy" in entry
        if entry["round"] in evaluated:
            assert 0 <= entry["federated-accuracy"] <= 1
        else:
            assert "federated-accuracy" not in entry
    for site in sites:  # each evaluation is a noised release in the site's ledger
        ledger = (Path(run) / "sites" / site / "ledger.jsonl").read_text().splitlines()
        kinds = [json.loads(line).get("kind", "train") for line in ledger]
        assert kinds.count("evaluate") == len(evaluated) and kinds.count("count") == 1
    final = metrics["final"]
    assert final["rounds-completed"] == 2 and final["stopped"] is None
    assert final["epsilon"] == max(final["epsilon-per-site"].values()) <= 1.0
    assert metrics["config"]["strategy"] == values.get("strategy", "fedavg")
    folder = Path(run)
    assert {"metrics.json", "model.pt", "model.json", "plot.png", "report.md"} <= {
        p.name for p in folder.iterdir()
    }
    checkpoint = load_checkpoint(folder / "checkpoints" / "round-0002.ckpt", SealKey.resolve(""))
    assert checkpoint.server_round == 2
    assert checkpoint.privacy[proto.EPSILON] == final["epsilon-per-site"]
    state = torch.load(folder / "model.pt", weights_only=True)
    assert all(
        torch.equal(state[k], torch.from_numpy(a.numpy())) for k, a in checkpoint.arrays.items()
    )
