"""Everything a run leaves behind, in one place: the run folder, ``metrics.json`` (rewritten
after every round), one checkpoint a round, the progress line, and at the end the final model
(``model.pt`` + ``model.json``), ``plot.png``, ``report.md`` and the final table.

The strategy reports each round through one :class:`~server.round_log.RoundLog`
(:class:`server.site_records.SiteRecords` hands it over after the central evaluation). Each
round's checkpoint also holds what resuming the run needs (:mod:`server.resume`): the run's
identity, metrics.json's rounds so far and the strategy's state; a resumed run's recorder
(:meth:`RunRecorder.resume`) goes on in the same folder from the checkpoint's metrics, so
metrics.json holds every round once.

``FEDLLM_CRASH_AFTER_ROUND = "<run-name>:<round>"`` (tests, ``benchmarks/soak.py``) makes the
ServerApp SIGKILL itself once that round is checkpointed and recorded: a crash at a known point.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from logging import INFO, WARNING
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from flwr.app import ArrayRecord
from flwr.common.logger import log

from fedllm import metrics as m
from fedllm import protocol as proto
from fedllm.checkpoint import RUN_ID, RUN_NAME, Checkpointer
from fedllm.config import RunConfig
from fedllm.metrics import RunMetrics, clean
from fedllm.report import final_table, plot_run, write_report
from fedllm.rundir import create_run_dir
from fedllm.tasks import Federation
from fedllm.weights import exchanged_state, load_arrays, state_bytes
from server.progress import progress_line
from server.round_log import Refusal, RoundLog

if TYPE_CHECKING:
    from server.resume import Resumed

CRASH_AFTER_ROUND = "FEDLLM_CRASH_AFTER_ROUND"  # "<run-name>:<round>": SIGKILL after it


def model_card(
    cfg: RunConfig, federation: Federation, model: torch.nn.Module, shared: dict[str, Any]
) -> dict[str, Any]:
    """What a user of the saved model needs to know to feed it inputs (``shared``: what every
    site was sent besides, e.g. the pooled feature scaler), and what a round costs to send."""
    return {
        "task": cfg.task,
        "input-shape": list(federation.input_shape),
        "hidden-units": cfg.hidden_units,
        "num-classes": federation.num_classes,
        "feature-scaling": cfg.feature_scaling,
        # Per site per round: what an update carries; the whole model, for comparison.
        proto.UPDATE_BYTES: state_bytes(exchanged_state(model)),
        m.MODEL_BYTES: state_bytes(model.state_dict()),
        **shared,
    }


class RunRecorder:
    """The run folder of one run and everything written into it."""

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: Path,
        card: dict[str, Any],
        checkpoints: Checkpointer | None,
    ) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.card = card
        self.checkpoints = checkpoints
        self.metrics = RunMetrics(
            run_dir / "metrics.json", cfg.to_flower(), cfg.target_delta if cfg.dp else None
        )
        self.metrics.traffic = {k: int(card[k]) for k in (proto.UPDATE_BYTES, m.MODEL_BYTES)}
        self.metrics.config_sources = cfg.config_sources()  # user, task or global default
        self._started = time.monotonic()
        # The strategy's state for each checkpoint (build_strategy connects it).
        self.strategy_state: Callable[[], ArrayRecord] = ArrayRecord
        self._resumed: dict[str, Any] | None = None  # noted in the first round after resume

    @classmethod
    def create(
        cls, cfg: RunConfig, card: dict[str, Any], run_id: str = "", run_dir: Path | None = None
    ) -> RunRecorder:
        """A fresh run folder (never an earlier run's; ``run_dir``: one just made with
        :func:`~fedllm.rundir.create_run_dir`) and the run's checkpoint writer; ``run_id``:
        what the sites' ledgers record the run under."""
        run_dir = run_dir or create_run_dir(cfg)
        log(
            INFO,
            "fedllm: task %s, %d sites, %d rounds, DP %s (target epsilon %s per site), "
            "run folder %s",
            cfg.task,
            cfg.num_sites,
            cfg.num_server_rounds,
            "on" if cfg.dp else "OFF",
            cfg.target_epsilon,
            run_dir,
        )
        log(INFO, "fedllm: local training: %s", cfg.describe_training())
        log(
            INFO,
            "fedllm: each site sends %d bytes per round (full model: %d bytes)",
            card[proto.UPDATE_BYTES],
            card[m.MODEL_BYTES],
        )
        return cls._open(cfg, run_dir, card, run_id)

    @classmethod
    def _open(cls, cfg: RunConfig, run_dir: Path, card: dict[str, Any], run_id: str) -> RunRecorder:
        run = {RUN_ID: run_id, RUN_NAME: run_dir.name}
        checkpoints = Checkpointer.for_run(
            cfg.checkpoint, cfg.checkpoint_key, run_dir, cfg.to_flower(), card, run
        )
        if checkpoints is not None:
            log(INFO, "fedllm: %s", checkpoints.describe())
        return cls(cfg, run_dir, card, checkpoints)

    @classmethod
    def resume(cls, cfg: RunConfig, card: dict[str, Any], resumed: Resumed) -> RunRecorder:
        """The recorder of a resumed run: its folder, metrics.json rewritten from the
        checkpoint's (so a round recorded after the checkpoint is not kept twice), its clock
        where the checkpoint left it."""
        recorder = cls._open(cfg, resumed.run_dir, card, resumed.run_id)
        history = resumed.checkpoint.history
        metrics = recorder.metrics
        metrics.initial = dict(history.get("initial", {}))
        metrics.rounds = [dict(entry) for entry in history.get("rounds", [])]
        metrics.config_sources = dict(history.get("config-sources", metrics.config_sources))
        if metrics.rounds:
            metrics.epsilon = dict(metrics.rounds[-1].get(proto.EPSILON, {}))
            elapsed = float(metrics.rounds[-1].get("elapsed-s", 0.0))
            recorder._started = time.monotonic() - elapsed
        metrics.write()
        recorder._resumed = {"after-round": resumed.checkpoint.server_round}
        if resumed.changed:
            recorder._resumed["changed"] = resumed.changed
        return recorder

    def initial(self, scores: dict[str, float]) -> None:
        """The central scores of the initial model; the run's clock starts here."""
        self.metrics.initial = {k: clean(v) for k, v in scores.items()}
        self._started = time.monotonic()

    def record_round(self, record: RoundLog, scores: dict[str, float], arrays: ArrayRecord) -> None:
        """One finished round: metrics.json rewritten, a checkpoint, the progress line."""
        entry = self.entry(record, scores)
        elapsed = time.monotonic() - self._started
        entry["elapsed-s"] = round(elapsed, 3)  # since the first round began
        if self._resumed is not None:
            entry["resumed"], self._resumed = self._resumed, None
        self.metrics.add_round(entry)  # entry's epsilon becomes every site's cumulative one
        if self.checkpoints is not None:
            spend: dict[str, object] = {
                proto.EPSILON: dict(self.metrics.epsilon),
                "delta": self.metrics.delta,
            }
            if m.CLIENT_EPSILON in entry:
                spend[m.CLIENT_EPSILON] = entry[m.CLIENT_EPSILON]
                spend[m.CLIENT_DELTA] = self.cfg.client_delta
            history = {
                "initial": self.metrics.initial,
                "rounds": self.metrics.rounds,
                "config-sources": self.metrics.config_sources,
            }
            self.checkpoints.save(
                record.server_round, arrays, spend, history, self.strategy_state()
            )
        log(INFO, "%s", progress_line(entry, self.cfg, elapsed))
        _crash_if_asked(self.run_dir.name, record.server_round)

    def entry(self, record: RoundLog, scores: dict[str, float]) -> dict[str, Any]:
        """The round as metrics.json holds it (epsilon: the sites that trained this round)."""
        entry: dict[str, Any] = {
            "round": record.server_round,
            **{k: clean(v) for k, v in scores.items()},
        }
        federated = record.federated_accuracy()
        if federated is not None:
            entry["federated-accuracy"] = federated
        entry[proto.EPSILON] = {
            site: (clean(values[proto.EPSILON]) if self.cfg.dp else None)
            for site, values in record.trained.items()
        }
        entry["sites"] = {
            site: {k: clean(x) for k, x in values.items()}
            for site, values in record.trained.items()
        }
        entry["refused"] = {site: r.to_dict() for site, r in record.refused.items()}
        entry["rejected"] = dict(record.rejected)
        if record.client_dp is not None:  # site-level: cumulative over the released sums
            entry.update(record.client_dp.to_dict())
        if record.dropped:
            entry["dropped"] = dict(record.dropped)
        if record.left_out:
            entry["left-out"] = dict(record.left_out)
        return entry

    def amend_evaluation(self, record: RoundLog) -> None:
        """The sites' evaluation of a recorded round's model, which came with the next round's
        train replies: its federated accuracy goes into that round's entry."""
        federated = record.federated_accuracy()
        for entry in self.metrics.rounds:
            if entry["round"] == record.server_round and federated is not None:
                entry["federated-accuracy"] = federated
                self.metrics.write()

    def released_statistics(self, sites: list[str]) -> None:
        """The sites that released feature statistics (outside DP, under their policies)."""
        self.metrics.releases[m.FEATURE_STATISTICS] = sorted(sites)
        self.metrics.write()

    def stop(self, server_round: int, reason: str, refusals: dict[str, Refusal]) -> None:
        """The sites' budgets (or the site-level budget) ended the run before its last round."""
        self.metrics.stop(server_round, reason, {s: r.to_dict() for s, r in refusals.items()})

    def finish(self, model: torch.nn.Module, arrays: ArrayRecord) -> None:
        """The final model, its card, the plot, the report and the final table."""
        load_arrays(model, arrays)
        torch.save(model.state_dict(), self.run_dir / "model.pt")
        (self.run_dir / "model.json").write_text(json.dumps(self.card, indent=2) + "\n")
        summary = self.metrics.to_dict()
        plot_run(summary, self.run_dir / "plot.png")
        write_report(summary, self.run_dir / "report.md")
        for line in final_table(summary).splitlines():
            log(INFO, "%s", line)
        log(INFO, "fedllm: results in %s", self.run_dir)


def _crash_if_asked(run_name: str, server_round: int) -> None:
    """SIGKILL this process when ``FEDLLM_CRASH_AFTER_ROUND`` names this run and round."""
    if os.environ.get(CRASH_AFTER_ROUND) == f"{run_name}:{server_round}":
        log(
            WARNING,
            "fedllm: %s: killing the ServerApp after round %d",
            CRASH_AFTER_ROUND,
            server_round,
        )
        os.kill(os.getpid(), signal.SIGKILL)
