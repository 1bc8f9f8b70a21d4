"""Which global models the sites evaluate on their own test rows, and in which message.

The server's central evaluation (its own held-out set) runs after every round whatever this
says. The sites' evaluation is a release from their private rows:

- without DP (a baseline, which every site's policy must allow), every round's model, in clear;
- under DP, only the models of the last `site-evaluations` rounds (0 by default: none), each
  evaluation a noised, accounted release (:mod:`fedllm.privacy.releases`) that each site's
  policy bounds by `max-evaluations`.

When every site trains and evaluates (`fraction-train` and `fraction-evaluate` both 1), the
evaluation of round r's model rides on round r + 1's train message (the site evaluates the
model it receives before training it): a round needs one message stage fewer, and only the
last round's model has an evaluate message of its own. Server and sites derive this plan from
the same run config, so a site knows in advance, in order, what it will release (its DP-SGD
noise is calibrated for exactly that).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedllm.config import RunConfig


@dataclass(frozen=True)
class SiteEvaluation:
    """``rounds``: the rounds whose resulting global model the sites evaluate; ``carried``:
    whether that evaluation rides on the next round's train message."""

    rounds: frozenset[int]
    carried: bool
    num_rounds: int

    @classmethod
    def for_run(cls, cfg: RunConfig) -> SiteEvaluation:
        last = cfg.num_server_rounds
        if cfg.fraction_evaluate == 0.0:
            first = last + 1  # none
        elif not cfg.dp:
            first = 1
        else:
            first = last - min(cfg.site_evaluations, last) + 1
        carried = cfg.fraction_train == 1.0 and cfg.fraction_evaluate == 1.0
        return cls(frozenset(range(first, last + 1)), carried, last)

    def carried_by(self, server_round: int) -> bool:
        """Round ``server_round``'s train message carries the evaluation of the model it sends
        (the one round ``server_round - 1`` made)."""
        return self.carried and server_round >= 2 and server_round - 1 in self.rounds

    def own_message(self, server_round: int) -> bool:
        """The model round ``server_round`` made is evaluated in an evaluate message."""
        return server_round in self.rounds and (not self.carried or server_round == self.num_rounds)

    @property
    def before_training(self) -> frozenset[int]:
        """Rounds whose train message carries an evaluation (before the site trains)."""
        return frozenset(r for r in range(2, self.num_rounds + 1) if self.carried_by(r))

    @property
    def after_training(self) -> frozenset[int]:
        """Rounds followed by an evaluate message."""
        return frozenset(r for r in self.rounds if self.own_message(r))

    @property
    def count(self) -> int:
        """Evaluations one site is asked for over the run (when it takes part in every round)."""
        return len(self.rounds)
