"""A site's evaluation of a global model on its own test rows, as it may release it.

Without DP (a baseline run the site's policy allows) the loss and accuracy go out as they are.
Under DP an evaluation is a release from private rows like any other: the sum of the test
examples' accuracies and their count, each with Gaussian noise (multiplier `evaluation-noise`,
sensitivity sqrt 2 whatever model the server sent), recorded in the ledger (kind ``evaluate``)
in the same cumulative epsilon, and no more of them per run than the policy's
`max-evaluations`. The server estimates the accuracy as the ratio of the (summed) noised sums.
"""

from __future__ import annotations

import torch
from flwr.app import MetricRecord

from clients.site import SiteGuard
from fedllm import protocol as proto
from fedllm.privacy import DPEvent, LedgerState
from fedllm.privacy.chain import EVALUATE
from fedllm.privacy.randomness import release_generator
from fedllm.privacy.releases import EVALUATION_SENSITIVITY, gaussian_event, noised_scores
from fedllm.tasks import SiteData, Task
from fedllm.training import evaluate, per_example_accuracy


def clear_scores(task: Task, model: torch.nn.Module, data: SiteData) -> MetricRecord:
    """Loss, accuracy and test-row count, in clear (runs without DP only)."""
    scores = evaluate(task, model, data.test)
    # AUC needs both classes, which a small site's test rows may lack: keys must agree.
    return MetricRecord(
        {
            proto.LOSS: scores[proto.LOSS],
            proto.ACCURACY: scores[proto.ACCURACY],
            proto.NUM_EXAMPLES: len(data.test),
        }
    )


def evaluations_done(ledger: LedgerState, run_id: str) -> int:
    """Noised evaluations this site released in run ``run_id``."""
    return sum(1 for e in ledger.entries if e.run_id == run_id and e.kind == EVALUATE)


def evaluation_event(noise_multiplier: float) -> DPEvent:
    return gaussian_event(noise_multiplier)


def release_noised(
    task: Task,
    model: torch.nn.Module,
    data: SiteData,
    guard: SiteGuard,
    ledger: LedgerState,
    *,
    run_id: str,
    server_round: int,
    noise_multiplier: float,
    delta: float,
    accountant: str,
    seed: int | None,
) -> MetricRecord:
    """Evaluate, record the release in the ledger (durably), and return what may be sent: the
    noised sum of accuracies and the noised count. The caller has checked the policy's count
    and the budget (inside ``guard.ledger.locked()``, which yielded ``ledger``)."""
    accuracy = per_example_accuracy(task, model, data.test)  # (N,), each in [0, 1]
    released = noised_scores(
        float(accuracy.sum()), len(data.test), noise_multiplier, release_generator(seed)
    )
    guard.ledger.append(
        ledger,
        site=data.name,
        run_id=run_id,
        server_round=server_round,
        event=evaluation_event(noise_multiplier),
        clip_norm=EVALUATION_SENSITIVITY,
        delta=delta,
        accountant=accountant,
        kind=EVALUATE,
    )
    return MetricRecord({proto.CORRECT: released.correct, proto.NUM_EXAMPLES: released.count})
