"""A site process for the kill-and-restart tests: it records spend in its ledger, reports
what is durable on stdout, then waits (as if about to send its reply) until it is killed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedllm.crypto import SiteKey
from fedllm.privacy import DPEvent, PrivacyLedger


def train(folder: Path, server_round: int) -> None:
    from flwr.app import Context, RecordDict

    from clients.site import SiteGuard
    from clients.train import SiteRuntime, privacy_request, train_round
    from fedllm import protocol as proto
    from fedllm.simulation import default_config
    from fedllm.weights import to_arrays

    run_config = {**default_config(), "num-sites": 3, "num-server-rounds": 3, "accountant": "rdp"}
    context = Context(
        run_id=11,
        node_id=1,
        node_config={"partition-id": 0, "num-partitions": 3},
        state=RecordDict(),
        run_config=run_config,
    )
    site = SiteRuntime.from_context(context)
    guard = SiteGuard.simulated(folder, privacy_request(site.cfg))
    arrays = to_arrays(site.task.build_model(site.cfg, tuple(site.data.train.x.shape[1:])))
    metrics = train_round(site, guard, arrays, server_round, "11", context.state).metrics
    print(f"ledger-written {metrics[proto.EPSILON]!r}", flush=True)


def append_forever(folder: Path) -> None:
    key = SiteKey.load_or_generate(folder / "site-key.pem")
    ledger = PrivacyLedger(folder / "ledger.jsonl", key)
    while True:
        with ledger.locked() as state:
            entry = ledger.append(
                state,
                site="site-0",
                run_id="loop",
                server_round=len(state.entries) + 1,
                event=DPEvent(50.0, 0.01, 1),
                clip_norm=1.0,
                delta=1e-5,
                accountant="rdp",
            )
        print(f"durable {entry.seq}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["train", "append-forever"])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--round", type=int, default=1)
    args = parser.parse_args()
    if args.mode == "train":
        train(args.folder, args.round)
        sys.stdin.readline()  # the reply is never sent: the test kills us here
    else:
        append_forever(args.folder)
