"""The accountant interface: the epsilon of a history of DP-SGD events, composed one event at a
time, and the noise that keeps a planned schedule within a target.

A :class:`Composition` is the privacy loss of a history at one delta. It is immutable:
``then(event)`` returns the composition with one more event, so a site keeps the composition
of its verified ledger and composes only each new round onto it. Every accountant's figure is
a function of the merged history alone (consecutive events of one mechanism joined, as
Opacus's accountants do), so composing event by event gives what a fresh evaluation of the
whole history gives, and a whole planned run is one event.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from fedllm.errors import PrivacyError
from fedllm.privacy.calibration import smallest_noise
from fedllm.privacy.events import DPEvent, DPSchedule


@dataclass(frozen=True)
class Figure:
    """A cumulative epsilon and the accountant that computed it."""

    accountant: str
    epsilon: float


class Composition(ABC):
    """The privacy loss of ``history`` (merged, oldest first) at ``delta``."""

    accountant: str  # the registered name of the accountant that composed it

    def __init__(self, delta: float, history: tuple[DPEvent, ...]) -> None:
        self.delta = delta
        self.history = history

    def then(self, event: DPEvent) -> Composition:
        """This history followed by ``event``; ``self`` is unchanged."""
        _check(event)
        if event.steps == 0:
            return self
        if event.noise_multiplier == 0:
            return NotPrivate(self.delta, (*self.history, event), self.accountant)
        if self.history and self.history[-1].joins(event):
            last = self.history[-1]
            steps = last.steps + event.steps
            return self._joined(DPEvent(last.noise_multiplier, last.sample_rate, steps))
        return self._appended(event)

    def then_all(self, events: Iterable[DPEvent]) -> Composition:
        composition = self
        for event in events:
            composition = composition.then(event)
        return composition

    @abstractmethod
    def _joined(self, last: DPEvent) -> Composition:
        """This history with its last event replaced by ``last`` (same mechanism, more steps)."""

    @abstractmethod
    def _appended(self, event: DPEvent) -> Composition:
        """This history followed by ``event``, a mechanism other than the last event's."""

    @abstractmethod
    def epsilon(self) -> float:
        """The accountant's cumulative epsilon of the history at ``delta`` (0 when empty)."""

    def bound(self) -> float:
        """An upper bound on :meth:`epsilon`, cheap whatever the history; accountants whose
        figure is already cheap return the figure itself."""
        return self.epsilon()

    def counted(self) -> Composition:
        """The composition whose figure counts this history: this one, unless this
        accountant's figure is out of reach on it (then another tight accountant's composition
        of the same history). Deterministic in the merged history and delta."""
        return self

    def figure(self) -> Figure:
        """The cumulative epsilon that counts this history, and the accountant that gave it:
        what a ledger entry records."""
        counted = self.counted()
        return Figure(counted.accountant, counted.epsilon())

    def within(self, limit: float) -> bool:
        """``figure().epsilon <= limit``, deciding by :meth:`bound` alone whenever it
        suffices."""
        counted = self.counted()
        return counted.bound() <= limit or counted.epsilon() <= limit


class NotPrivate(Composition):
    """A history holding a step without noise: no finite epsilon, whatever follows, by any
    ``accountant`` (the one whose composition it continues)."""

    def __init__(self, delta: float, history: tuple[DPEvent, ...], accountant: str) -> None:
        super().__init__(delta, history)
        self.accountant = accountant

    def _joined(self, last: DPEvent) -> Composition:
        return NotPrivate(self.delta, (*self.history[:-1], last), self.accountant)

    def _appended(self, event: DPEvent) -> Composition:
        return NotPrivate(self.delta, (*self.history, event), self.accountant)

    def then(self, event: DPEvent) -> Composition:
        _check(event)
        if event.steps == 0:
            return self
        return NotPrivate(self.delta, (*self.history, event), self.accountant)

    def epsilon(self) -> float:
        return math.inf


class Accountant(ABC):
    """One accounting method, registered by ``name`` (the run config's `accountant`)."""

    name: ClassVar[str]
    about: ClassVar[str]  # one line: the method and where its numbers come from

    @abstractmethod
    def _start(self, delta: float) -> Composition:
        """The empty history."""

    def start(self, delta: float) -> Composition:
        """Nothing spent yet, at ``delta``."""
        if not (isinstance(delta, float | int) and 0 < delta < 1):
            raise PrivacyError(f"`delta` must be in (0, 1), got {delta!r}")
        return self._start(float(delta))

    def compose(self, events: Iterable[DPEvent], delta: float) -> Composition:
        """A fresh composition of every event, oldest first."""
        return self.start(delta).then_all(events)

    def epsilon(self, events: Iterable[DPEvent], delta: float) -> float:
        """Cumulative epsilon of every event at ``delta``, evaluated afresh: this accountant's
        figure, or where it is out of reach the one that counts instead (see
        :meth:`Composition.figure`)."""
        return self.compose(events, delta).figure().epsilon

    def calibrate(
        self, target_epsilon: float, delta: float, schedule: DPSchedule, rel_tol: float = 0.01
    ) -> float:
        """Smallest noise multiplier, to ``rel_tol`` of the target, whose epsilon over the
        whole ``schedule`` is <= ``target_epsilon``: the planned run spends at most the target.
        The rounds merge into one event, so the run's composed figure is exactly this one."""
        what = f"at delta {delta} over {schedule.total_steps} steps with the {self.name} accountant"
        return smallest_noise(
            lambda sigma: self.epsilon([schedule.whole_run(sigma)], delta),
            target_epsilon,
            what,
            rel_tol,
        )


def _check(event: DPEvent) -> None:
    if not (math.isfinite(event.noise_multiplier) and event.noise_multiplier >= 0):
        raise PrivacyError(f"a noise multiplier must be >= 0, got {event.noise_multiplier}")
    if not 0 < event.sample_rate <= 1:
        raise PrivacyError(f"a sample rate must be in (0, 1], got {event.sample_rate}")
    if event.steps < 0:
        raise PrivacyError(f"a step count must be >= 0, got {event.steps}")
