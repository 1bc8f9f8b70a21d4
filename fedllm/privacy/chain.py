"""The ledger's format: entries hash-chained and signed, a signed head, verified from bytes.

One JSON object a line, each entry chained to the one before by SHA-256 (``prev`` is the
previous entry's ``hash``; the first entry's is 64 zeros) and its hash signed with the site's
Ed25519 key (``sig``), so an edited, deleted, inserted or reordered entry breaks the chain and
no entry can be added without the key. The head file holds the number of entries and the last
hash, signed too, so removing entries from the end is detected.

Every entry is one release the site made, by ``kind`` (:data:`KINDS`): DP-SGD steps (``train``),
its example count released with Gaussian noise (``count``, with the released value), an
evaluation released with Gaussian noise (``evaluate``), or feature statistics its policy lets
it release outside DP (``statistics``: no steps, composes nothing; the entry says they left).
An entry of kind ``train`` without a value is written exactly as before kinds existed (no
``kind`` or ``value`` key), so older ledgers verify unchanged.

Verification can start from what an earlier verification of the same file established
(:class:`Verified`): when the file still begins with exactly the bytes verified then, only the
entries after them are parsed and their signatures checked; any other change (an edit, a
deletion, a reordering anywhere, another key) verifies the whole chain again.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from fedllm.crypto.signing import PublicKey
from fedllm.errors import LedgerError, SignatureError
from fedllm.privacy.accountants import ACCOUNTANTS
from fedllm.privacy.events import DPEvent

GENESIS = "0" * 64
_HEAD_LABEL = "fedllm-ledger-head"

TRAIN, COUNT, EVALUATE, STATISTICS = "train", "count", "evaluate", "statistics"
KINDS = (TRAIN, COUNT, EVALUATE, STATISTICS)


@dataclass(frozen=True)
class LedgerEntry:
    """One release a site made (a DP training, a noised count or evaluation, statistics; see
    :data:`KINDS`) in one round of one run; ``epsilon`` is cumulative over this entry and every
    one before it, at ``delta`` with ``accountant`` (None: not private). A Gaussian release
    (count, evaluation) is one step at sample rate 1, ``noise_multiplier`` = noise std /
    sensitivity and ``clip_norm`` = the sensitivity."""

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
    kind: str = TRAIN
    value: float | None = None  # what a release gave, where the site keeps it (count: n)

    @property
    def private(self) -> bool:
        return self.noise_multiplier > 0

    @property
    def event(self) -> DPEvent:
        return DPEvent(self.noise_multiplier, self.sample_rate, self.steps)

    def fields(self) -> dict[str, Any]:
        """Every field, without ``kind`` and ``value`` where they hold their defaults."""
        out = asdict(self)
        if out["kind"] == TRAIN:
            del out["kind"]
        if out["value"] is None:
            del out["value"]
        return out

    def body(self) -> dict[str, Any]:
        out = self.fields()
        del out["hash"], out["sig"]
        return out

    def digest(self) -> str:
        return hashlib.sha256(canonical(self.body())).hexdigest()

    def line(self) -> bytes:
        return canonical(self.fields()) + b"\n"


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


@dataclass(frozen=True)
class LedgerState:
    """A verified ledger as read from disk."""

    entries: list[LedgerEntry]
    public_key: PublicKey | None  # from the signed head; None for an empty ledger
    head_pending: bool  # the last entry is not yet covered by the signed head (crash window)


@dataclass(frozen=True)
class Verified:
    """The bytes a ledger file held when it last verified, their entries, and the key that
    signed them (raw bytes): a later verification of a file beginning with these bytes
    checks only what follows them."""

    data: bytes
    entries: tuple[LedgerEntry, ...]
    key: bytes

    @classmethod
    def of(cls, data: bytes, state: LedgerState) -> Verified | None:
        if state.public_key is None:
            return None
        return cls(data, tuple(state.entries), state.public_key.raw)


def verify(
    data: bytes,
    head: bytes | None,
    source: str,
    pinned: PublicKey | None = None,
    known: Verified | None = None,
) -> LedgerState:
    """Check a ledger's bytes and its head file's bytes (None: no head file): the hash chain,
    the head's signature (by ``pinned`` when given) and that the head covers every entry but
    at most the last. Raises LedgerError naming the first bad entry. With ``known``, from an
    earlier verification of this file, a file that still begins with ``known.data`` is checked
    from there on; any other file is checked whole."""
    start: tuple[LedgerEntry, ...] = ()
    rest = data
    if known is not None and data.startswith(known.data):  # byte for byte: unchanged so far
        start, rest = known.entries, data[len(known.data) :]
    entries = [*start, *_parse(rest, source, start)]
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
    signed_before = len(start) if known is not None and known.key == key.raw else 0
    for entry in entries[signed_before:]:
        try:
            key.verify(entry.sig, entry.hash.encode())
        except SignatureError:
            raise LedgerError(
                f"{source}: entry {entry.seq} is not signed by the ledger's key {key.fingerprint}"
            ) from None
    return LedgerState(entries, key, head_pending=len(entries) == count + 1)


def head_message(count: int, last: str) -> bytes:
    return f"{_HEAD_LABEL}\n{count}\n{last}\n".encode()


def _parse(data: bytes, source: str, before: tuple[LedgerEntry, ...] = ()) -> list[LedgerEntry]:
    """Entries of a ledger file, exactly as written: one canonical line each, no blank lines;
    ``before``: the verified entries the file's bytes up to ``data`` held."""
    if not data:
        return []
    if not data.endswith(b"\n"):
        raise LedgerError(f"{source}: the file does not end with a complete entry: it was cut")
    entries: list[LedgerEntry] = []
    previous = before[-1].hash if before else GENESIS
    for number, line in enumerate(data[:-1].split(b"\n"), start=len(before) + 1):
        expected_seq = number  # one entry a line
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
    "value": (float, type(None)),
    **{name: str for name in ("time", "site", "run_id", "accountant", "prev", "hash", "sig")},
    "kind": str,
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
    if entry.kind not in KINDS or (entry.value is not None and not math.isfinite(entry.value)):
        raise ValueError("the kind is unknown or the value is not finite")
    if not (0 < entry.sample_rate <= 1 and 0 < entry.delta < 1 and entry.steps >= 0):
        raise ValueError("a value is out of range")
    if entry.noise_multiplier < 0 or entry.clip_norm < 0:
        raise ValueError("a value is out of range")


def _parse_head(data: bytes, source: str) -> tuple[int, str, PublicKey]:
    try:
        head = json.loads(data)
        count, last = int(head["entries"]), str(head["hash"])
        key = PublicKey.from_text(str(head["public-key"]))
        key.verify(str(head["signature"]), head_message(count, last))
    except (ValueError, TypeError, KeyError):
        raise LedgerError(f"{source}: its head is not valid: it was edited or damaged") from None
    except SignatureError:
        raise LedgerError(f"{source}: its head's signature does not verify") from None
    return count, last, key
