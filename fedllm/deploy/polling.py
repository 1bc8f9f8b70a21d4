"""How often a site asks for work: a backed-off poll, and a wake-up pipe between the SuperNode
and its executor.

Flower 1.42's SuperNode sleeps a fixed 3 s after every empty pull from the SuperLink, so each
message of a round (setup, key sharing, train, unmask, evaluate) waits 1.5 s on average, and up
to 3 s, before a site even sees it. :class:`Backoff` waits in proportion to how long the site
has been idle instead: right after a message (in the middle of a round, when the next stage is
due any moment) it asks every ``fastest`` seconds (0.1 s), and the wait grows with the idle
time (``growth`` x idle, 10 %) up to ``slowest`` (Flower's own 3 s, between runs). A message
that becomes available ``t`` seconds after the last one is seen within
``max(fastest, growth * t)``: 50 ms on average between the stages of a round, not 1.5 s.

Why not faster: a pull is not free. Measured on the 2-core machine this was built on (with
other jobs running), one authenticated pull costs the SuperLink's side 15-30 ms of CPU
(flower-superlink with its state database about two thirds, fedllm's gate the rest) and the
SuperNode 4-6 ms; three sites polling every 50 ms during a round would take a whole core.

What it costs the SuperLink (one authenticated pull a request): an idle site asks once per
``slowest`` (100 idle sites: 100 / 3 = 33 requests per second, as with Flower's fixed 3 s);
after a message a site asks ``1 / fastest`` times a second for ``fastest / growth`` seconds,
then ``1 / (growth * t)`` times: ``(1 + ln(slowest / fastest)) / growth`` requests in all (44
with the defaults) until it is back at the idle rate ``slowest / growth`` seconds (30 s) later;
a stage that follows a site's reply after 1 s costs it 10 requests. Each site can choose
another schedule (``python -m fedllm.deploy.supernode --poll-fastest/--poll-growth/
--poll-slowest``).

Between the SuperNode and its executor (the same machine) the wait need not be guessed: the
SuperNode writes one byte to a pipe (:class:`Wakeup`) when it has stored a task, and the
executor, blocked on the pipe, asks for it at once. The byte carries no authority: taking the
task still needs the SuperExec secret.

A prompt poll meets a race Flower's 3 s sleep hid: a message is visible before its sender has
uploaded all its objects, and Flower retries such an object after 1 s (doubling up to 10 s).
:func:`quick_object_retries` makes that first retry 10 ms (doubling up to 1 s), in the
processes that pull messages: the SuperNode (from the SuperLink), its ClientApp workers (from
the SuperNode) and the ServerApp (replies, from the SuperLink).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import select
import time
from dataclasses import dataclass
from types import ModuleType

from fedllm.errors import ConfigError

FIRST_RETRY = 0.01  # seconds before asking again for an object not uploaded yet (Flower: 1)
RETRY_CAP = 1.0  # the longest wait between two asks (Flower: 10)
_PULLS = ("pull_objects", "pull_and_inflate_object_from_tree")  # Flower's retrying pulls


def quick_object_retries(module: ModuleType) -> None:
    """Flower's retrying object pulls, as ``module`` calls them, with a 10 ms first retry; the
    rest (the total time, the tries per object, the concurrency) stays Flower's."""
    for name in _PULLS:
        pull = getattr(module, name, None)
        if pull is not None and not isinstance(pull, functools.partial):
            quick = functools.partial(pull, initial_backoff=FIRST_RETRY, backoff_cap=RETRY_CAP)
            setattr(module, name, quick)


@dataclass(frozen=True)
class Backoff:
    """A poll interval that grows with the time since the last message (seconds)."""

    fastest: float = 0.1
    slowest: float = 3.0
    growth: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.fastest <= self.slowest:
            raise ConfigError(
                f"poll intervals must satisfy 0 < fastest <= slowest, got {self.fastest} and "
                f"{self.slowest}"
            )
        if not 0 <= self.growth <= 1:
            raise ConfigError(f"poll growth must be in [0, 1], got {self.growth}")

    def wait(self, idle: float) -> float:
        """Seconds to wait before the next poll, ``idle`` seconds after the last message."""
        return min(self.slowest, max(self.fastest, self.growth * idle))

    def requests(self, seconds: float) -> float:
        """How many polls a site makes in the ``seconds`` after a message: the integral of
        ``1 / wait(t)`` (flat at ``fastest``, then ``growth * t``, then flat at ``slowest``)."""
        if self.growth == 0:
            return seconds / self.fastest
        start, end = self.fastest / self.growth, self.slowest / self.growth
        count = min(seconds, start) / self.fastest
        if seconds > start:
            count += math.log(min(seconds, end) / start) / self.growth
        return count + max(0.0, seconds - end) / self.slowest


class Wakeup:
    """One end of a pipe between a SuperNode (writes) and its executor (waits)."""

    def __init__(self, fd: int) -> None:
        try:
            os.fstat(fd)
        except OSError:
            raise ConfigError(f"wake-up file descriptor {fd} is not open") from None
        self.fd = fd
        self.closed = False  # the other end is gone: only the timeout wakes

    def notify(self) -> None:
        """Wake the executor; never blocks (a full pipe already holds a wake-up)."""
        os.set_blocking(self.fd, False)
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(self.fd, b"\x01")

    def wait(self, timeout: float) -> bool:
        """Until woken (True) or ``timeout`` seconds passed (False); drains pending wake-ups.
        Once the writer is gone, it only waits out the timeout."""
        if self.closed:
            time.sleep(timeout)
            return False
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        os.set_blocking(self.fd, False)
        woken = False
        with contextlib.suppress(BlockingIOError):
            while os.read(self.fd, 4096):
                woken = True
            self.closed = True  # end of file: the SuperNode closed its end
        return woken
