"""How often a site asks for work: a backed-off poll, and a wake-up pipe between the SuperNode
and its executor.

Flower 1.42's SuperNode sleeps a fixed 3 s after every empty pull from the SuperLink, so each
message of a round (setup, key sharing, train, unmask, evaluate) waits 1.5 s on average, and up
to 3 s, before a site even sees it. :class:`Backoff` waits in proportion to how long the site
has been idle instead: right after a message (in the middle of a round, when the next stage is
due any moment) it asks every ``fastest`` seconds, and the wait grows with the idle time
(``growth`` x idle) up to ``slowest`` (Flower's own 3 s, between runs). A message that becomes
available ``t`` seconds after the last one is seen within ``max(fastest, growth * t)``: tens of
milliseconds between the stages of a round.

What it costs the SuperLink (one authenticated pull a request): an idle site asks once per
``slowest`` (100 idle sites: 100 / 3 = 33 requests per second, as with Flower's fixed 3 s);
after a message a site asks ``1 / fastest`` times a second for ``fastest / growth`` seconds,
then ``1 / (growth * t)`` times: ``(1 + ln(slowest / fastest)) / growth`` requests in all (116
with the defaults) until it is back at the idle rate ``slowest / growth`` seconds (60 s) later.

Between the SuperNode and its executor (the same machine) the wait need not be guessed: the
SuperNode writes one byte to a pipe (:class:`Wakeup`) when it has stored a task, and the
executor, blocked on the pipe, asks for it at once. The byte carries no authority: taking the
task still needs the SuperExec secret.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import time
from dataclasses import dataclass

from fedllm.errors import ConfigError


@dataclass(frozen=True)
class Backoff:
    """A poll interval that grows with the time since the last message (seconds)."""

    fastest: float = 0.025
    slowest: float = 3.0
    growth: float = 0.05

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
