"""Secure averaging (with site records, as a run uses it) and the sites' real SecAgg+ handlers
over an in-process grid: dropouts, fail-closed rounds and malformed masked vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)

from clients import secagg
from fedllm import protocol as proto
from fedllm.errors import FedLLMError, SecAggError
from fedllm.secagg import Ring, SecAggSettings
from fedllm.secagg.vector import QUANTIZATION_BITS
from fedllm.tasks.tabular import TabularModel
from fedllm.weights import to_arrays
from server.secagg import SecureAveraging
from server.site_records import SiteRecords
from server.strategies import FedAvg
from tests.loopback_grid import LoopbackGrid
from tests.messages import instruction
from tests.secagg_run import memory_identity

NODES = [21, 22, 23, 24, 25]
CLIP = 8.0
MALFORMED: set[int] = set()
DIVERGED: set[int] = set()  # sites whose local update holds a NaN
GRIDS: list[LoopbackGrid] = []
RINGS: list[tuple[int, int, int]] = []  # (round, ring bits, level bits) of every train request
WEIGHTS: dict[int, int] = {}  # round -> every site's weight that round (default 10 x node id)
RELAYED: dict[str, int] = {}  # values a lying server puts in every train request's record
IDENTITY = memory_identity(NODES)


def _local(global_arrays: ArrayRecord, node: int) -> ArrayRecord:
    return ArrayRecord(
        {k: Array(a.numpy() + 0.01 * node) for k, a in global_arrays.items()}  # type: ignore[misc]
    )


def _train(msg: Message, context: Context) -> Message:
    """A site's train reply under secure aggregation: a known update, masked."""
    arrays = msg.content.array_records[proto.ARRAYS]
    request = msg.content.config_records[proto.SECAGG]
    server_round = int(request[proto.SA_ROUND])  # type: ignore[call-overload]
    bits = request.get(proto.SA_RING_BITS, 64), request.get(proto.SA_LEVEL_BITS, QUANTIZATION_BITS)
    RINGS.append((server_round, *(int(b) for b in bits)))  # type: ignore[call-overload]
    weight = WEIGHTS.get(server_round, 10 * context.node_id)
    metrics = MetricRecord({proto.NUM_EXAMPLES: weight, proto.TRAIN_LOSS: 0.1})
    for key, value in RELAYED.items():
        request[key] = value
    local = _local(arrays, context.node_id)
    if context.node_id in DIVERGED:
        first = next(iter(local.keys()))
        values = local[first].numpy().copy()
        values.flat[0] = np.nan
        local[first] = Array(values)
    try:
        records = secagg.masked_update(
            msg, context, arrays, local, metrics, CLIP, identity=IDENTITY
        )
    except SecAggError as err:  # as Flower turns a ClientApp's exception into an error reply
        return Message(Error(code=0, reason=str(err)), reply_to=msg)
    if context.node_id in MALFORMED:
        records[proto.SECAGG_MASKED] = ArrayRecord(
            {proto.SECAGG_VECTOR: Array(np.zeros(3, dtype=np.uint64))}
        )
    content = RecordDict(
        {
            proto.METRICS: metrics,
            proto.SITE: ConfigRecord({proto.SITE_NAME: f"site-{context.node_id}"}),
            **records,
        }
    )
    return Message(content=content, reply_to=msg)


def _round(
    drop: list[int],
    malformed: frozenset[int] = frozenset(),
    rounds: int = 1,
    diverged: frozenset[int] = frozenset(),
    stage: str = "train",
) -> tuple[SiteRecords, ArrayRecord, ArrayRecord | None]:
    instruction(NODES[0], RecordDict())  # sets Flower's task identity for messages
    MALFORMED.clear()
    MALFORMED.update(malformed)
    DIVERGED.clear()
    DIVERGED.update(diverged)
    RINGS.clear()
    grid = LoopbackGrid(
        NODES,
        {"train": _train, **{f"train.{k}": v for k, v in secagg.handlers(IDENTITY).items()}},
    )
    grid.dropped = dict.fromkeys(drop, stage)  # by default after key sharing
    torch.manual_seed(0)
    current = to_arrays(TabularModel(6, 4))
    averaging = SecureAveraging(SecAggSettings(0, 3), CLIP)
    strategy = SiteRecords(
        FedAvg(averaging, min_available_nodes=len(NODES), min_train_nodes=len(NODES)), averaging
    )
    arrays: ArrayRecord | None = current
    for server_round in range(1, rounds + 1):
        current = arrays or current
        messages = strategy.configure_train(server_round, current, ConfigRecord(), grid)
        arrays, _ = strategy.aggregate_train(server_round, grid.send_and_receive(messages))
    GRIDS.append(grid)
    return strategy, current, arrays


def _fedavg(current: ArrayRecord, nodes: list[int]) -> dict[str, np.ndarray]:
    total = sum(10 * n for n in nodes)
    return {
        k: sum(_local(current, n)[k].numpy().astype(np.float64) * 10 * n for n in nodes) / total
        for k in current
    }


def test_one_site_dropping_after_key_sharing_leaves_fedavg_of_the_other_four() -> None:
    strategy, current, arrays = _round(drop=[23])
    assert arrays is not None
    expected = _fedavg(current, [21, 22, 24, 25])
    for key, value in expected.items():
        assert np.abs(arrays[key].numpy() - value).max() <= 2 * CLIP / 2**QUANTIZATION_BITS + 1e-6
    assert sorted(strategy.logs[1].trained) == ["site-21", "site-22", "site-24", "site-25"]
    assert strategy.logs[1].rejected == {}
    assert strategy.logs[1].dropped == {"node-23": "train: node 23 dropped"}


def test_a_site_lost_in_key_sharing_is_named_with_the_stage_and_the_others_summed() -> None:
    strategy, current, arrays = _round(drop=[23], stage="train.secagg_share_keys")
    assert arrays is not None
    for key, value in _fedavg(current, [21, 22, 24, 25]).items():
        assert np.abs(arrays[key].numpy() - value).max() <= 2 * CLIP / 2**QUANTIZATION_BITS + 1e-6
    assert strategy.logs[1].dropped == {"node-23": "train: secagg_share_keys: node 23 dropped"}


def test_three_sites_dropping_fails_closed_and_keeps_the_model() -> None:
    strategy, _, arrays = _round(drop=[21, 22, 23])
    assert arrays is None  # Flower's loop keeps the previous global model
    why = strategy.logs[1].rejected["secure aggregation"]
    assert "stopped after masking" in why and "below the reconstruction threshold 3" in why
    assert "no partial sum is applied" in why


def test_a_site_whose_update_diverged_sends_nothing_and_the_others_are_summed() -> None:
    """A NaN in a site's own update is refused at the site (it would round to an arbitrary
    ring value the server cannot see in the sum): the site drops out with the reason, its
    neighbours' shares remove its masks, and the others' FedAvg is exact."""
    strategy, current, arrays = _round(drop=[], diverged=frozenset({24}))
    assert arrays is not None
    assert "holds NaN or infinite values" in strategy.logs[1].dropped["node-24"]
    for key, value in _fedavg(current, [21, 22, 23, 25]).items():
        assert np.abs(arrays[key].numpy() - value).max() <= 2 * CLIP / 2**QUANTIZATION_BITS + 1e-6


def test_a_malformed_masked_vector_is_rejected_and_the_others_summed() -> None:
    strategy, current, arrays = _round(drop=[], malformed=frozenset({25}))
    assert arrays is not None
    assert "update from site-25" in strategy.logs[1].rejected
    expected = _fedavg(current, [21, 22, 23, 24])
    for key, value in expected.items():
        assert np.abs(arrays[key].numpy() - value).max() <= 2 * CLIP / 2**QUANTIZATION_BITS + 1e-6


def test_from_the_second_round_on_both_key_stages_ride_on_the_round_before() -> None:
    _, current, arrays = _round(drop=[], rounds=3)
    assert arrays is not None
    # Rounds 2 and 3 sum in the 32-bit ring: 5 sites of weight <= 250 allow 2**21 levels.
    ring = Ring.for_weights([10 * n for n in NODES])
    assert (ring.bits, ring.levels) == (32, 21)
    assert sorted(set(RINGS)) == [(1, 64, 24), (2, 32, 21), (3, 32, 21)]
    for key, value in _fedavg(current, NODES).items():
        assert np.abs(arrays[key].numpy() - value).max() <= 2 * CLIP / 2**ring.levels + 1e-6
    delivered = GRIDS[-1].delivered
    assert delivered.count("train.secagg_setup") == len(NODES)  # round 1 only
    assert delivered.count("train.secagg_share_keys") == len(NODES)  # round 1 only
    assert delivered.count("train") == 3 * len(NODES)
    assert delivered.count("train.secagg_unmask") == 3 * len(NODES)


def test_a_site_lost_in_the_unmask_stage_sends_the_next_round_back_to_full_setup() -> None:
    # Site 23 answers round 1's training, then stops: round 1's unmask goes on without it
    # (its seed is rebuilt from the others' shares), and round 2 cannot use keys shared
    # ahead, since 23 shared none: it runs setup and key sharing again, then 23 drops.
    strategy, _, arrays = _round(drop=[23], rounds=2, stage="train.secagg_unmask")
    delivered = GRIDS[-1].delivered
    assert delivered.count("train.secagg_setup") == 2 * len(NODES)
    assert arrays is not None
    assert sorted(strategy.logs[1].trained) == [f"site-{n}" for n in NODES]
    assert sorted(strategy.logs[2].trained) == ["site-21", "site-22", "site-24", "site-25"]


def test_weights_that_outgrow_the_32_bit_ring_fail_closed() -> None:
    # Rounds 1-2 report weights 210..250: round 2 and 3 sum modulo 2**32 with 2**21 levels
    # (5 x 250 x 2**21 < 2**32). In round 3 every site reports 500: each site's own vector
    # fits (500 x 2**21 < 2**32) but the sum, 2500 x 2**21, does not: the server refuses it
    # rather than apply a sum that may have wrapped. Round 4 knows the new weights: 2**20
    # levels (5 x 500 x 2**20 < 2**32), and its sum is applied.
    WEIGHTS.clear()
    WEIGHTS[3] = 500
    try:
        strategy, _, arrays = _round(drop=[], rounds=4)
    finally:
        WEIGHTS.clear()
    assert sorted(set(RINGS)) == [(1, 64, 24), (2, 32, 21), (3, 32, 21), (4, 32, 20)]
    why = strategy.logs[3].rejected["secure aggregation"]
    assert "sum to 2500" in why and "exceeds the 2**32 ring" in why, why
    assert strategy.logs[4].rejected == {}
    assert arrays is not None


def test_sites_refuse_a_ring_they_do_not_use_or_one_their_vector_does_not_fit() -> None:
    """A ring announced as 2**16, or 2**32 with 2**24 levels for sites of weight 300
    (300 x 2**24 > 2**32 - 1): every site refuses to mask, and the round fails with the
    sites' reason."""
    for relayed, why in (
        ({proto.SA_RING_BITS: 16, proto.SA_LEVEL_BITS: 8}, "is not one this version uses"),
        ({proto.SA_RING_BITS: 32, proto.SA_LEVEL_BITS: 24}, "exceeds the round's 2\\*\\*32 ring"),
    ):
        RELAYED.update(relayed)
        WEIGHTS[1] = 300
        try:
            with pytest.raises(FedLLMError, match=f"no site returned a valid update.*{why}"):
                _round(drop=[])
        finally:
            RELAYED.clear()
            WEIGHTS.clear()
