"""The release manifest against what the ClientApp actually sends.

Whole runs of the real ServerApp and ClientApp in one process (an in-process grid, no Ray)
in the modes that change what a site sends: DP with secure aggregation, noised site
evaluations (carried by a train message, and in an evaluate message of their own),
federated scaling and a site dropping after key sharing; no DP in the clear with
client-level DP; plus a refusal of each message type. Every reply is recorded as it leaves
its handler, and:

- no reply holds a record or key the manifest does not list for its message type and mode
  (a field added to a reply without an entry, with its reason, fails here);
- every field the manifest lists was sent by some reply (no stale entry).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict

from clients import client_app, secagg
from fedllm import protocol as proto
from fedllm.config import RunConfig
from server.server_app import main
from tests.loopback_grid import LoopbackGrid
from tests.messages import instruction

NODES = [31, 32, 33, 34]
Seen = list[tuple[Message, Message, Context]]  # (request, reply, the site's context)


def _recording(handler: Callable[[Message, Context], Message], seen: Seen) -> Any:
    def record(msg: Message, context: Context) -> Message:
        reply = handler(msg, context)
        seen.append((msg, reply, context))
        return reply

    return record


def _run(
    defaults: dict[str, Any],
    out: Path,
    name: str,
    seen: Seen,
    dropped: dict[int, str] | None = None,
    **values: Any,
) -> LoopbackGrid:
    """One whole run (2 rounds) of the real apps; every reply lands in ``seen``. A node in
    ``dropped`` stops answering from that message type on."""
    run_config = {
        **defaults,
        "num-server-rounds": 2,
        "accountant": "rdp",
        "out-dir": str(out),
        "run-name": name,
        **{k.replace("_", "-"): v for k, v in values.items()},
    }
    handlers = {
        "train": client_app.train,
        "evaluate": client_app.evaluate_global,
        "query": client_app.feature_moments,
        **{f"train.{k}": v for k, v in secagg.HANDLERS.items()},
    }
    node_configs = {
        n: {proto.NODE_PARTITION_ID: i, proto.NODE_NUM_PARTITIONS: len(NODES)}
        for i, n in enumerate(NODES)
    }
    instruction(NODES[0], RecordDict())  # sets Flower's task identity for messages
    recorded = {kind: _recording(h, seen) for kind, h in handlers.items()}
    grid = LoopbackGrid(NODES, recorded, run_config, node_configs)
    grid.dropped = dict(dropped or {})
    main(
        grid,
        Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config),
    )
    return grid


def _ask(grid: LoopbackGrid, node: int, kind: str, content: RecordDict) -> None:
    """One more message to ``node`` outside the run's own rounds (its reply is recorded)."""
    grid.send_and_receive([instruction(node, content, kind)])


def _model(grid: LoopbackGrid) -> Any:
    from fedllm.weights import to_arrays

    site = client_app.SiteRuntime.from_context(grid.contexts[NODES[0]])
    return to_arrays(site.task.build_model(site.cfg, tuple(site.data.train.x.shape[1:])))


def _mode(request: Message, context: Context) -> proto.Mode:
    cfg = RunConfig.from_flower(context.run_config)
    secure = request.metadata.message_type == "train" and (
        proto.SECAGG in request.content.config_records
    )
    return proto.Mode(cfg.dp, secure, cfg.client_dp)


def test_every_reply_field_is_in_the_manifest_and_every_manifest_field_is_sent(
    defaults: dict[str, Any], tmp_path: Path
) -> None:
    seen: Seen = []
    dp_run = _run(
        defaults,
        tmp_path,
        "dp",
        seen,
        site_evaluations=2,  # model 1 evaluated in round 2's train message, model 2 on its own
        feature_scaling="federated",  # the simulated policies allow feature statistics
        # after key sharing: its neighbours reveal its masking key's shares (secagg_reveal)
        dropped={NODES[3]: "train"},
    )
    plain_run = _run(
        defaults, tmp_path, "plain", seen, dp=False, secagg=False, client_dp=True
    )  # in the clear: loss and accuracy, the training loss, the client-level weight
    # Refusals: a third round the schedule never planned, a third evaluation the policy does
    # not allow, feature statistics where the policy does not allow them.
    card = json.loads((tmp_path / "dp" / "model.json").read_text())
    for kind in ("train", "evaluate"):
        config = ConfigRecord(
            {
                proto.SERVER_ROUND: 3,
                proto.RUN_DIR: str(tmp_path / "dp"),
                proto.SCALER_MEAN: card[proto.SCALER_MEAN],
                proto.SCALER_STD: card[proto.SCALER_STD],
            }
        )
        _ask(
            dp_run, NODES[0], kind, RecordDict({proto.ARRAYS: _model(dp_run), proto.CONFIG: config})
        )
    query = ConfigRecord({proto.RUN_DIR: str(tmp_path / "plain")})
    _ask(plain_run, NODES[0], "query", RecordDict({proto.CONFIG: query}))

    sent: set[tuple[str, str, str]] = set()
    for request, reply, context in seen:
        kind = request.metadata.message_type
        assert not reply.has_error(), reply.error.reason
        assert proto.unlisted(kind, reply.content, _mode(request, context)) == [], kind
        for record, keys in reply.content.items():
            sent.update(
                (kind, record, proto.ANY_KEY if record == proto.ARRAYS else k) for k in keys
            )
    refused = {r.metadata.message_type for _, r, _ in seen if proto.REFUSAL in r.content}
    assert refused == {"train", "evaluate", "query"}
    listed = {(kind, f.record, f.key) for kind, fields in proto.MANIFEST.items() for f in fields}
    assert listed - sent == set(), "listed in the manifest but never sent"
    assert sent - listed == set()
    metrics = json.loads((tmp_path / "dp" / "metrics.json").read_text())
    assert metrics["releases"]["feature-statistics"] == [f"site-{i}" for i in range(4)]


def test_readme_lists_the_manifest() -> None:
    """README's "The release manifest" table is the manifest, row for row."""
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    start = readme.index("|---|", readme.index("### The release manifest"))
    table = readme[start : readme.index("\n\n", start)]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert rows == proto.manifest_table()
