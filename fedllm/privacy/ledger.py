"""A site's privacy ledger: every release it made (DP trainings, noised counts and evaluations,
statistics its policy allows), across runs, in an append-only file.

The format (hash chain, signatures, signed head) is in :mod:`fedllm.privacy.chain`; what the
entries spend is in :mod:`fedllm.privacy.budget`. A sidecar head file (``<ledger>.head``)
holds the number of entries and the last hash, signed, so removing entries from the end is
detected. What the site alone cannot detect: all files deleted (a fresh site) or an older
signed (ledger, head) pair restored; the signed reports it has handed out record its spend.

Every write replaces the whole file atomically (temp file, fsync, rename, fsync of the
folder): a crash leaves either the old ledger or the new one, never a torn line. The ledger is
written before the head; a crash between the two leaves one entry the head does not cover yet,
which is accepted (it is signed by the site key and can only add spend, never hide it) and
covered by the next append's head. Writers hold an exclusive lock on ``<ledger>.lock`` from
the budget check to the append, so two runs at one site cannot both spend the last of its
budget.

Reading is incremental within a process: the bytes a read verified are remembered per file,
and the next read of a file that still begins with them checks only the entries after them
(see :func:`fedllm.privacy.chain.verify`). Each append's composition is remembered under the
new head, so the next round's checks compose only that round's event.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fedllm.crypto.signing import PublicKey, SiteKey
from fedllm.errors import LedgerError
from fedllm.privacy.budget import Scope, recorded, remember, replay, spent
from fedllm.privacy.chain import (
    GENESIS,
    TRAIN,
    LedgerEntry,
    LedgerState,
    Verified,
    head_message,
    verify,
)
from fedllm.privacy.events import DPEvent
from fedllm.privacy.memo import Memo

_VERIFIED: Memo[Verified] = Memo(64)  # resolved ledger path -> what its last read verified


class PrivacyLedger:
    """The ledger at ``path``; ``key`` (the site's signing key) is needed only to append."""

    def __init__(self, path: Path | str, key: SiteKey | None = None) -> None:
        self.path = Path(path)
        self.head_path = self.path.with_name(self.path.name + ".head")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.key = key

    # -- reading -----------------------------------------------------------------------
    def read(self, public_key: PublicKey | None = None) -> LedgerState:
        """Every entry, after checking the chain and the signed head; raises LedgerError
        naming the first bad entry. ``public_key`` pins the key the head must be signed with
        (default: the site key's, when this ledger has one)."""
        data = self.path.read_bytes() if self.path.exists() else b""
        head = self.head_path.read_bytes() if self.head_path.exists() else None
        pinned = public_key or (self.key.public if self.key else None)
        memo_key = str(self.path.resolve())
        try:
            state = verify(data, head, f"ledger {self.path}", pinned, _VERIFIED.get(memo_key))
        except LedgerError:
            _VERIFIED.pop(memo_key)
            raise
        verified = Verified.of(data, state)
        if verified is not None:
            _VERIFIED.put(memo_key, verified)
        return state

    def entries(self) -> list[LedgerEntry]:
        return self.read().entries

    def replay(self, public_key: PublicKey | None = None) -> list[LedgerEntry]:
        """Verify, then recompute every entry's epsilon with fresh compositions."""
        entries = self.read(public_key).entries
        replay(entries, f"ledger {self.path}")
        return entries

    # -- writing -----------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[LedgerState]:
        """Exclusive access from the budget check to the append; yields the verified state."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = self.read()
                if self.key is not None and not self.head_path.exists():
                    # A new ledger gets a signed empty head before its first entry, so a missing
                    # head next to entries always means tampering, never a crash.
                    self._write_head(self.key, 0, GENESIS)
                    state = self.read()
                yield state
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def append(
        self,
        state: LedgerState,
        *,
        site: str,
        run_id: str,
        server_round: int,
        event: DPEvent,
        clip_norm: float,
        delta: float,
        accountant: str,
        kind: str = TRAIN,
        value: float | None = None,
    ) -> LedgerEntry:
        """Record one release, a training by default (call inside :meth:`locked`, with the
        state it yielded); ``value``: what the release gave, where the site needs it again
        (the noised example count).

        The entry is durable on disk when this returns: write it before sending anything.
        """
        key = self.key
        if key is None:
            raise LedgerError(f"ledger {self.path}: appending needs the site's signing key")
        previous = state.entries
        composition = spent(previous, delta, accountant).then(event)
        figure = recorded(composition, accountant)  # the run's accountant's, or PLD's
        entry = LedgerEntry(
            seq=len(previous) + 1,
            time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            site=site,
            run_id=run_id,
            round=server_round,
            steps=event.steps,
            sample_rate=event.sample_rate,
            noise_multiplier=event.noise_multiplier,
            clip_norm=clip_norm,
            delta=delta,
            accountant=figure.accountant,
            epsilon=figure.epsilon if math.isfinite(figure.epsilon) else None,
            prev=previous[-1].hash if previous else GENESIS,
            kind=kind,
            value=value,
        )
        entry = _replace(entry, hash=entry.digest())
        entry = _replace(entry, sig=key.sign(entry.hash.encode()))
        memo_key = str(self.path.resolve())
        data = self._bytes_of(memo_key, previous) + entry.line()
        _atomic_write(self.path, data)
        self._write_head(key, entry.seq, entry.hash)
        state.entries.append(entry)
        _VERIFIED.put(memo_key, Verified(data, tuple(state.entries), key.public.raw))
        remember(state.entries, composition, Scope(accountant, delta))
        return entry

    def _bytes_of(self, memo_key: str, entries: list[LedgerEntry]) -> bytes:
        """The file's bytes holding exactly ``entries``: as last verified, when they are."""
        known = _VERIFIED.get(memo_key)
        last = entries[-1].hash if entries else GENESIS
        if known is not None and len(known.entries) == len(entries):
            known_last = known.entries[-1].hash if known.entries else GENESIS
            if known_last == last:
                return known.data
        return b"".join(e.line() for e in entries)

    def _write_head(self, key: SiteKey, count: int, last: str) -> None:
        head = {
            "entries": count,
            "hash": last,
            "public-key": key.public.text,
            "signature": key.sign(head_message(count, last)),
        }
        _atomic_write(self.head_path, json.dumps(head, indent=2).encode() + b"\n")


def _replace(entry: LedgerEntry, **changes: Any) -> LedgerEntry:
    return LedgerEntry(**{**asdict(entry), **changes})


def _atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so a crash leaves the old or the new file, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise LedgerError(f"cannot write {path}: {err.strerror}") from None
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
