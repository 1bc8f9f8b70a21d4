"""Continuing a run from its last checkpoint (`resume-from = "<run folder>"`).

A crash or restart of the coordinator would otherwise lose the run, after every site has
spent budget on its rounds. The run's last encrypted checkpoint holds what the next round
needs: the global model, the round number, the strategy's state (FedAdam's moments; secure
aggregation's keys are per round and start fresh), the metrics so far, and the run's identity,
which the sites' ledgers record their rounds under. A resumed run sends the sites that same
identity (``proto.RUN_ID``), so each site's run-level target epsilon covers the rounds before
and after the restart: nothing is charged to a fresh run, nothing already spent is forgotten.
A round in flight at the crash is run again; a site that had trained it spends on it twice
(two trainings, two releases), which its run-level target then counts.

What may not change on resume: the task and the model (the architecture, hence the model card
and the arrays' shapes) and the strategy. Anything else in the run config may (a longer round
timeout, another checkpoint key file); a changed privacy key, e.g. a larger target-epsilon, is
put to the sites' policies as in any run, and every change is logged and recorded in the
first resumed round of metrics.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord
from flwr.common.logger import log

from fedllm import metrics as m
from fedllm import protocol as proto
from fedllm.checkpoint import RUN_ID, Checkpoint, load_for_resume
from fedllm.config import RunConfig
from fedllm.crypto.seal import SealKey
from fedllm.errors import CheckpointError, UpdateError
from fedllm.scaling import scale_split, scaler_config, scaler_from_config
from fedllm.tasks import Split
from fedllm.weights import check_arrays
from server.scaling import RunScaling
from server.site_records import SiteRecords
from server.strategies import Averaged

MUST_MATCH = ("task", "strategy")  # besides the model card: what defines the run's model
NOT_CARRIED = ("resume-from", "run-name", "out-dir")  # where a run is, not what it computes


@dataclass(frozen=True)
class Resumed:
    """A run being continued: its last checkpoint and the run folder it goes on in."""

    run_dir: Path
    checkpoint: Checkpoint
    changed: dict[str, list[Any]]  # run-config key -> [before, now]

    @classmethod
    def load(cls, cfg: RunConfig) -> Resumed:
        """The checkpoint to continue from; refuses another run's, a wrong key, a changed task
        or strategy (CheckpointError naming the file and the key)."""
        run_dir = Path(cfg.resume_from)
        key = (
            SealKey.resolve(cfg.checkpoint_key, create=False)
            if cfg.checkpoint == "encrypted"
            else None
        )
        checkpoint = load_for_resume(run_dir, cfg.checkpoint, key)
        now, before = cfg.to_flower(), checkpoint.config
        for name in MUST_MATCH:
            if before.get(name) != now[name]:
                raise CheckpointError(
                    f"cannot resume {run_dir} with `{name}` {now[name]!r}: the run was "
                    f"{before.get(name)!r}"
                )
        changed = {
            k: [before.get(k), v]
            for k, v in now.items()
            if k not in NOT_CARRIED and before.get(k) != v
        }
        resumed = cls(run_dir, checkpoint, changed)
        log(
            INFO,
            "fedllm: resuming run %s (run id %s) in %s after round %d of %d",
            run_dir.name,
            resumed.run_id,
            run_dir,
            checkpoint.server_round,
            cfg.num_server_rounds,
        )
        if changed:
            log(
                WARNING,
                "fedllm: the resumed run config differs: %s (each site's policy decides)",
                ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items())),
            )
        return resumed

    @property
    def run_id(self) -> str:
        return self.checkpoint.run[RUN_ID]

    @property
    def first_round(self) -> int:
        return self.checkpoint.server_round + 1

    def scaling(self, cfg: RunConfig, central_test: Split) -> RunScaling:
        """The run's scaling as it was: federated scaling's pooled scaler from the checkpoint's
        model card (the sites are not asked for their moments again)."""
        if cfg.feature_scaling != "federated":
            return RunScaling(central_test)
        card = self.checkpoint.model
        pooled = ConfigRecord(
            {k: card[k] for k in (proto.SCALER_MEAN, proto.SCALER_STD) if k in card}
        )
        scaler = scaler_from_config(pooled, int(central_test.x.shape[1]))
        return RunScaling(scale_split(central_test, scaler), scaler_config(scaler))

    def check_model(self, card: dict[str, Any], arrays: ArrayRecord) -> None:
        """The resumed run builds the model the checkpoint holds: same card, same arrays."""
        before = self.checkpoint.model
        differ = sorted(k for k in set(before) | set(card) if before.get(k) != card.get(k))
        if differ:
            raise CheckpointError(
                f"cannot resume {self.run_dir}: the model differs from the checkpoint's ("
                + ", ".join(f"{k} {before.get(k)!r} -> {card.get(k)!r}" for k in differ)
                + ")"
            )
        try:
            check_arrays(arrays, self.checkpoint.arrays)
        except UpdateError as err:
            raise CheckpointError(f"cannot resume {self.run_dir}: {err}") from None

    def restore(self, records: SiteRecords) -> None:
        """The strategy's state, and site-level DP's accountant replayed over the sums the
        run released so far."""
        strategy = records.strategy
        if not isinstance(strategy, Averaged):
            raise CheckpointError(f"cannot restore the state of {type(strategy).__name__}")
        strategy.restore(self.checkpoint.strategy, self.checkpoint.arrays)
        if records.client_dp is not None:
            for entry in self.checkpoint.history.get("rounds", []):
                if entry.get(m.CLIENT_SUMMED):  # a sum was released that round
                    records.client_dp.accountant.record(
                        int(entry[m.CLIENT_SUMMED]), int(entry[proto.CLIENT_DP_SAMPLED])
                    )
