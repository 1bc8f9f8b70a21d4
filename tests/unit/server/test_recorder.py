"""The run recorder turns each round's log into metrics.json's entry, keeps every site's
epsilon cumulative, and records why a run stopped early."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedllm import metrics as m
from fedllm import protocol as proto
from server.recorder import RunRecorder
from server.round_log import ClientDPRound, Refusal, RoundLog

ARRAYS = ArrayRecord({"w": Array(np.zeros(2, dtype=np.float32))})


def _recorder(config: Any, tmp_path: Path, **values: Any) -> RunRecorder:
    cfg = config(checkpoint="off", **values)
    return RunRecorder(cfg, tmp_path, {proto.UPDATE_BYTES: 10, m.MODEL_BYTES: 20}, None)


def test_a_round_log_becomes_the_metrics_entry(config: Any, tmp_path: Path) -> None:
    recorder = _recorder(config, tmp_path, client_dp=True)
    recorder.initial({proto.ACCURACY: 0.5, proto.LOSS: float("nan")})
    record = RoundLog(
        1,
        trained={"site-0": {proto.EPSILON: 0.4, proto.NUM_EXAMPLES: 10.0}},
        refused={"site-1": Refusal("budget", "spent")},
        dropped={"site-2": "train: no reply before the round timeout"},
        rejected={"update from site-3": "update `w` has shape (3,)"},
        evaluated={
            "site-0": {proto.NUM_EXAMPLES: 10.0, proto.ACCURACY: 0.8},
            "site-3": {proto.NUM_EXAMPLES: 30.0, proto.ACCURACY: 0.4},
        },
        client_dp=ClientDPRound(1.5, 0.9, 1.0, 1, 2),
    )
    recorder.record_round(record, {proto.ACCURACY: 0.75, proto.LOSS: 0.4}, ARRAYS)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    entry = metrics["rounds"][0]
    assert entry.pop("elapsed-s") >= 0
    assert entry == {
        "round": 1,
        proto.ACCURACY: 0.75,
        proto.LOSS: 0.4,
        "federated-accuracy": pytest.approx(0.5),  # (0.8 * 10 + 0.4 * 30) / 40
        proto.EPSILON: {"site-0": 0.4},
        "sites": {"site-0": {proto.EPSILON: 0.4, proto.NUM_EXAMPLES: 10.0}},
        "refused": {"site-1": {"kind": "budget", "reason": "spent"}},
        "rejected": {"update from site-3": "update `w` has shape (3,)"},
        m.CLIENT_EPSILON: 1.5,
        m.CLIENT_NOISE_MULTIPLIER: 0.9,
        m.CLIENT_CLIP: 1.0,
        m.CLIENT_SUMMED: 1,
        proto.CLIENT_DP_SAMPLED: 2,
        "dropped": {"site-2": "train: no reply before the round timeout"},
    }
    assert metrics["initial"] == {proto.ACCURACY: 0.5, proto.LOSS: None}  # JSON has no NaN


def test_epsilon_stays_cumulative_and_an_early_stop_is_recorded(
    config: Any, tmp_path: Path
) -> None:
    recorder = _recorder(config, tmp_path)
    recorder.record_round(
        RoundLog(1, trained={"site-0": {proto.EPSILON: 0.4}, "site-1": {proto.EPSILON: 0.3}}),
        {proto.ACCURACY: 0.7},
        ARRAYS,
    )
    recorder.record_round(
        RoundLog(2, trained={"site-1": {proto.EPSILON: 0.6}}), {proto.ACCURACY: 0.8}, ARRAYS
    )
    recorder.stop(3, "round 3: no sampled site can train", {"site-0": Refusal("budget", "spent")})
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["rounds"][1][proto.EPSILON] == {"site-0": 0.4, "site-1": 0.6}
    assert metrics["final"]["epsilon"] == 0.6
    assert metrics["final"]["stopped"] == {
        "round": 3,
        "reason": "round 3: no sampled site can train",
        "refused": {"site-0": {"kind": "budget", "reason": "spent"}},
    }


def test_a_resumed_run_keeps_each_round_once(config: Any, tmp_path: Path) -> None:
    """metrics.json comes back from the last checkpoint: a round recorded after it (the crash
    came between metrics.json and the checkpoint) is dropped, then recorded once when run
    again."""
    from server.resume import Resumed

    cfg = config(checkpoint="plain", out_dir=str(tmp_path), run_name="r")
    card = {proto.UPDATE_BYTES: 10, m.MODEL_BYTES: 20}
    first = RunRecorder.create(cfg, card, "1234")
    for server_round in (1, 2, 3):
        first.record_round(RoundLog(server_round), {proto.ACCURACY: 0.5}, ARRAYS)
    (tmp_path / "r" / "checkpoints" / "round-0003.ckpt").unlink()
    resumed = Resumed.load(config(checkpoint="plain", resume_from=str(tmp_path / "r")))
    assert resumed.run_id == "1234" and resumed.first_round == 3 and resumed.changed == {}
    second = RunRecorder.resume(cfg, card, resumed)
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    second.record_round(RoundLog(3), {proto.ACCURACY: 0.6}, ARRAYS)
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2, 3]
    assert metrics["rounds"][2]["resumed"] == {"after-round": 2}
    assert metrics["rounds"][2]["elapsed-s"] >= metrics["rounds"][1]["elapsed-s"]
