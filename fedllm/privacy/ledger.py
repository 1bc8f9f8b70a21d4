"""A site's privacy ledger: every DP training it did, across runs, in an append-only file.

One JSON object a line, each entry chained to the one before by SHA-256 (``prev`` is the
previous entry's ``hash``; the first entry's is 64 zeros) and its hash signed with the site's
Ed25519 key (``sig``), so an edited, deleted, inserted or reordered entry breaks the chain and
no entry can be added without the key. A sidecar head file (``<ledger>.head``) holds the number
of entries and the last hash, signed too, so removing entries from the end is detected.
What the site alone cannot detect: all files deleted (a fresh site) or an older signed
(ledger, head) pair restored; the signed reports it has handed out record its spend.

Every write replaces the whole file atomically (temp file, fsync, rename, fsync of the
folder): a crash leaves either the old ledger or the new one, never a torn line. The ledger is
written before the head; a crash between the two leaves one entry the head does not cover yet,
which is accepted (it is signed by the site key and can only add spend, never hide it) and
covered by the next append's head. Writers hold an exclusive lock on ``<ledger>.lock`` from
the budget check to the append, so two runs at one site cannot both spend the last of its
budget.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedllm.crypto.signing import PublicKey, SiteKey
from fedllm.errors import LedgerError, PrivacyBudgetExceededError, SignatureError
from fedllm.privacy.accounting import ACCOUNTANTS, DPEvent, epsilon

GENESIS = "0" * 64
_HEAD_LABEL = "fedllm-ledger-head"


@dataclass(frozen=True)
class LedgerEntry:
    """One DP training a site did (one round of one run); ``epsilon`` is cumulative over this
    entry and every one before it, at ``delta`` with ``accountant`` (None: not private)."""

    seq: int
    time: str
    site: str
    run_id: str
    round: int
    steps: int
    sample_rate: float
    noise_multiplier: float
    clip_norm: float
    delta: float
    accountant: str
    epsilon: float | None
    prev: str
    hash: str = ""
    sig: str = ""  # the site key's signature of ``hash``

    @property
    def private(self) -> bool:
        return self.noise_multiplier > 0

    @property
    def event(self) -> DPEvent:
        return DPEvent(self.noise_multiplier, self.sample_rate, self.steps)

    @classmethod
    def planned(cls, event: DPEvent) -> LedgerEntry:
        """A stand-in for a round not yet trained, to compute the epsilon it would bring."""
        return cls(
            seq=0, time="", site="", run_id="", round=0,
            steps=event.steps, sample_rate=event.sample_rate,
            noise_multiplier=event.noise_multiplier,
            clip_norm=0.0, delta=0.0, accountant="", epsilon=None, prev="",
        )  # fmt: skip

    def body(self) -> dict[str, Any]:
        out = asdict(self)
        del out["hash"], out["sig"]
        return out

    def digest(self) -> str:
        return hashlib.sha256(canonical(self.body())).hexdigest()

    def line(self) -> bytes:
        return canonical(asdict(self)) + b"\n"


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def history_epsilon(entries: list[LedgerEntry], delta: float, accountant: str) -> float:
    """Cumulative epsilon of ``entries`` at ``delta``: infinite once any was not private."""
    if any(not e.private for e in entries):
        return math.inf
    return epsilon([e.event for e in entries], delta, accountant)


@dataclass(frozen=True)
class LedgerState:
    """A verified ledger as read from disk."""

    entries: list[LedgerEntry]
    public_key: PublicKey | None  # from the signed head; None for an empty ledger
    head_pending: bool  # the last entry is not yet covered by the signed head (crash window)


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
        return verify(
            data, head, f"ledger {self.path}", public_key or (self.key.public if self.key else None)
        )

    def entries(self) -> list[LedgerEntry]:
        return self.read().entries

    def replay(self, public_key: PublicKey | None = None) -> list[LedgerEntry]:
        """Verify, then recompute every entry's epsilon with a fresh accountant."""
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
    ) -> LedgerEntry:
        """Record one training (call inside :meth:`locked`, with the state it yielded).

        The entry is durable on disk when this returns: write it before sending the update.
        """
        key = self.key
        if key is None:
            raise LedgerError(f"ledger {self.path}: appending needs the site's signing key")
        previous = state.entries
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
            accountant=accountant,
            epsilon=None,
            prev=previous[-1].hash if previous else GENESIS,
        )
        spent = history_epsilon([*previous, entry], delta, accountant)
        entry = _with_hash(_replace(entry, epsilon=spent if math.isfinite(spent) else None))
        entry = _replace(entry, sig=key.sign(entry.hash.encode()))
        data = b"".join(e.line() for e in [*previous, entry])
        _atomic_write(self.path, data)
        self._write_head(key, entry.seq, entry.hash)
        state.entries.append(entry)
        return entry

    def _write_head(self, key: SiteKey, count: int, last: str) -> None:
        head = {
            "entries": count,
            "hash": last,
            "public-key": key.public.text,
            "signature": key.sign(_head_message(count, last)),
        }
        _atomic_write(self.head_path, json.dumps(head, indent=2).encode() + b"\n")


def verify(
    data: bytes, head: bytes | None, source: str, pinned: PublicKey | None = None
) -> LedgerState:
    """Check a ledger's bytes and its head file's bytes (None: no head file): the hash chain,
    the head's signature (by ``pinned`` when given) and that the head covers every entry but
    at most the last. Raises LedgerError naming the first bad entry."""
    entries = _parse(data, source)
    if head is None:
        if entries:
            raise LedgerError(
                f"{source}: its signed head is missing, so its {len(entries)} entries cannot be "
                "checked for removals"
            )
        return LedgerState([], None, head_pending=False)
    count, last, key = _parse_head(head, source)
    if pinned is not None and key.raw != pinned.raw:
        raise LedgerError(
            f"{source}: head is signed by {key.fingerprint}, not by the site key "
            f"{pinned.fingerprint}"
        )
    covered = entries[:count]
    if len(covered) < count or (covered[-1].hash if covered else GENESIS) != last:
        raise LedgerError(
            f"{source}: the signed head records {count} entries ending in {last[:12]}..., the "
            f"file has {len(entries)}: entries were deleted or replaced"
        )
    if len(entries) > count + 1:
        raise LedgerError(
            f"{source}: entries {count + 2}-{len(entries)} are not covered by the signed head "
            "(added without the site key)"
        )
    for entry in entries:
        try:
            key.verify(entry.sig, entry.hash.encode())
        except SignatureError:
            raise LedgerError(
                f"{source}: entry {entry.seq} is not signed by the ledger's key {key.fingerprint}"
            ) from None
    return LedgerState(entries, key, head_pending=len(entries) == count + 1)


def replay(entries: list[LedgerEntry], source: str) -> None:
    """Recompute every entry's cumulative epsilon from the entries alone; raises LedgerError at
    the first whose recorded epsilon does not match (the accounting was not what it claims)."""
    for i, entry in enumerate(entries):
        again = history_epsilon(entries[: i + 1], entry.delta, entry.accountant)
        recorded = math.inf if entry.epsilon is None else entry.epsilon
        if not math.isclose(again, recorded, rel_tol=1e-9, abs_tol=1e-12):
            raise LedgerError(
                f"{source}: entry {entry.seq} records epsilon {recorded}, replaying its history "
                f"gives {again}"
            )


def check_budget(
    state: LedgerState, event: DPEvent, delta: float, accountant: str, max_epsilon: float
) -> float:
    """The site's cumulative epsilon after ``event``; refuses if it would exceed the maximum."""
    after = history_epsilon([*state.entries, LedgerEntry.planned(event)], delta, accountant)
    if after > max_epsilon:
        spent = history_epsilon(state.entries, delta, accountant)
        raise PrivacyBudgetExceededError(
            f"the site's budget is spent: epsilon is {spent:.4f} over {len(state.entries)} "
            f"ledger entries and this round would bring it to {after:.4f}, above the site's "
            f"max-epsilon {max_epsilon} (delta {delta})"
        )
    return after


def _replace(entry: LedgerEntry, **changes: Any) -> LedgerEntry:
    return LedgerEntry(**{**asdict(entry), **changes})


def _with_hash(entry: LedgerEntry) -> LedgerEntry:
    return _replace(entry, hash=entry.digest())


def _head_message(count: int, last: str) -> bytes:
    return f"{_HEAD_LABEL}\n{count}\n{last}\n".encode()


def _parse(data: bytes, source: str) -> list[LedgerEntry]:
    """Entries of a ledger file, exactly as written: one canonical line each, no blank lines."""
    if not data:
        return []
    if not data.endswith(b"\n"):
        raise LedgerError(f"{source}: the file does not end with a complete entry: it was cut")
    entries: list[LedgerEntry] = []
    previous = GENESIS
    for number, line in enumerate(data[:-1].split(b"\n"), start=1):
        expected_seq = len(entries) + 1
        try:
            values = json.loads(line)
            entry = LedgerEntry(**values)
            _check_fields(entry)
            intact = entry.digest() == entry.hash and line + b"\n" == entry.line()
        except (ValueError, TypeError):
            raise LedgerError(
                f"{source}: entry {expected_seq} (line {number}) is not a valid ledger entry: "
                "the file was edited or damaged"
            ) from None
        if not intact:
            raise LedgerError(
                f"{source}: entry {expected_seq} (line {number}) does not match its hash: "
                "it was edited"
            )
        if entry.seq != expected_seq or entry.prev != previous:
            raise LedgerError(
                f"{source}: entry {expected_seq} (line {number}, seq {entry.seq}) does not "
                f"follow entry {expected_seq - 1}: entries were deleted, inserted or reordered"
            )
        entries.append(entry)
        previous = entry.hash
    return entries


_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "seq": int,
    "round": int,
    "steps": int,
    "sample_rate": float,
    "noise_multiplier": float,
    "clip_norm": float,
    "delta": float,
    "epsilon": (float, type(None)),
    **{name: str for name in ("time", "site", "run_id", "accountant", "prev", "hash", "sig")},
}


def _check_fields(entry: LedgerEntry) -> None:
    """Types and ranges, so no entry can make the accountant fail or mean something odd."""
    for name, kind in _FIELD_TYPES.items():
        value = getattr(entry, name)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ValueError(f"{name} has the wrong type")
    numbers = (entry.sample_rate, entry.noise_multiplier, entry.clip_norm, entry.delta)
    if not all(math.isfinite(x) for x in numbers) or entry.accountant not in ACCOUNTANTS:
        raise ValueError("a number is not finite or the accountant is unknown")
    if not (0 < entry.sample_rate <= 1 and 0 < entry.delta < 1 and entry.steps >= 0):
        raise ValueError("a value is out of range")
    if entry.noise_multiplier < 0 or entry.clip_norm < 0:
        raise ValueError("a value is out of range")


def _parse_head(data: bytes, source: str) -> tuple[int, str, PublicKey]:
    try:
        head = json.loads(data)
        count, last = int(head["entries"]), str(head["hash"])
        key = PublicKey.from_text(str(head["public-key"]))
        key.verify(str(head["signature"]), _head_message(count, last))
    except (ValueError, TypeError, KeyError):
        raise LedgerError(f"{source}: its head is not valid: it was edited or damaged") from None
    except SignatureError:
        raise LedgerError(f"{source}: its head's signature does not verify") from None
    return count, last, key


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
