"""A site's signed privacy report: what its ledger says it spent, checkable by anyone.

A data-protection officer gets one self-contained Markdown or HTML file and the site's public
key (from the site, never from the operator). The file states the site's cumulative epsilon and
every training behind it, and embeds the exact ledger and head bytes in a machine-readable
block, so the officer re-verifies the hash chain and the signed head and replays the accounting
instead of trusting the numbers in the text. The last line signs every byte before it with the
site's Ed25519 key, so a one-byte edit anywhere (text, plot, embedded ledger, trailer) fails::

    <!-- fedllm-signature: ed25519 key=<base64 public key> sig=<base64 signature> -->

The block is JSON (``"format": "fedllm-site-report/1"``): in Markdown a fenced block opened by
```` ```json fedllm-ledger ````, in HTML ``<script type="application/json" id="fedllm-ledger">``.
``ledger`` is the ledger file split at each newline and ``head`` the head file's text, so
joining them back gives the verified bytes exactly; ``epsilon`` (null: not private) is the
cumulative epsilon the report states, at ``delta`` with ``accountant`` of the last entry.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fedllm.crypto.signing import PublicKey, SiteKey
from fedllm.errors import LedgerError, PrivacyError, SignatureError
from fedllm.files import write_new
from fedllm.privacy.budget import history_epsilon
from fedllm.privacy.budget import replay as replay_ledger
from fedllm.privacy.chain import LedgerEntry, LedgerState
from fedllm.privacy.chain import verify as verify_ledger
from fedllm.privacy.ledger import PrivacyLedger
from fedllm.privacy.policy import SitePolicy
from fedllm.privacy.report_layout import (
    BLOCKS,
    ReportParts,
    entry_cells,
    format_epsilon,
    markdown,
    plot,
    render_html,
    rounds_text,
    runs,
    sites,
)

ReportFormat = Literal["md", "html"]
SCHEMA = "fedllm-site-report/1"
_TRAILER = re.compile(
    rb"<!-- fedllm-signature: ed25519 key=([A-Za-z0-9+/=]+) sig=([A-Za-z0-9+/=]+) -->\n"
)


@dataclass(frozen=True)
class ReportCheck:
    """What a verified report proves: ``epsilon`` is replayed from its embedded ledger."""

    site: str
    fingerprint: str
    entries: int
    epsilon: float  # math.inf once any entry was not private
    delta: float
    accountant: str


@dataclass(frozen=True)
class VerifiedLedger:
    """A ledger file's bytes, its head's bytes, and the state they verified to (replayed)."""

    data: bytes
    head: bytes | None
    state: LedgerState

    @property
    def entries(self) -> list[LedgerEntry]:
        return self.state.entries

    @property
    def epsilon(self) -> float:
        """The site's cumulative epsilon at the last entry's delta and accountant, replayed."""
        last = self.entries[-1]
        return history_epsilon(self.entries, last.delta, last.accountant)


def read_verified(path: Path, pinned: PublicKey | None = None) -> VerifiedLedger:
    """The ledger at ``path`` after checking its chain, its head (signed by ``pinned`` when
    given) and replaying every entry's epsilon; raises LedgerError naming the first bad entry.
    Read under the ledger's lock, so a concurrent append cannot pair a new file with an old
    head.
    """
    if not path.is_file():
        raise LedgerError(f"ledger {path} does not exist")
    source = f"ledger {path}"
    try:
        data, head = _snapshot(PrivacyLedger(path))
    except OSError as err:
        raise LedgerError(f"cannot read {source}: {err.strerror}") from None
    return VerifiedLedger(data, head, _checked(data, head, source, pinned))


def _checked(data: bytes, head: bytes | None, source: str, pinned: PublicKey | None) -> LedgerState:
    """Chain, head and replay; an entry the ledger code cannot even evaluate (a NaN, a wrong
    type, an unknown accountant) is refused as a LedgerError too, never a bare crash."""
    try:
        state = verify_ledger(data, head, source, pinned)
        replay_ledger(state.entries, source)
    except LedgerError:
        raise
    except (PrivacyError, ValueError, TypeError) as err:
        raise LedgerError(f"{source}: an entry cannot be evaluated ({err}): edited") from None
    return state


def _snapshot(ledger: PrivacyLedger) -> tuple[bytes, bytes | None]:
    """The ledger's and its head's bytes, read under a shared lock when a writer ever ran
    here; never creates a file, so a read-only copy of a site's folder can be checked."""

    def read() -> tuple[bytes, bytes | None]:
        head = ledger.head_path.read_bytes() if ledger.head_path.exists() else None
        return ledger.path.read_bytes(), head

    if not ledger.lock_path.exists():  # no writer has run here: nothing to wait for
        return read()
    with open(ledger.lock_path, "rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        return read()


def write_site_report(
    ledger_path: Path,
    key: SiteKey,
    out: Path,
    fmt: ReportFormat = "md",
    policy: SitePolicy | None = None,
) -> Path:
    """Verify the ledger (head signed by ``key``, epsilons replayed), then write its signed
    report to ``out`` (new file only: an existing one is never replaced). Returns ``out``."""
    if fmt not in BLOCKS:
        raise ValueError(f"report `fmt` must be one of {', '.join(BLOCKS)}, got {fmt!r}")
    if out.exists():
        raise LedgerError(f"site report {out} already exists; not overwriting it")
    ledger = read_verified(ledger_path, key.public)
    if not ledger.entries:
        raise LedgerError(f"ledger {ledger_path} has no entries: there is nothing to report")
    body = _render(ledger, key.public, fmt, policy).encode()
    trailer = f"<!-- fedllm-signature: ed25519 key={key.public.text} sig={key.sign(body)} -->\n"
    write_new(out, body + trailer.encode(), 0o644, LedgerError, "site report")
    return out


def verify_site_report(path: Path, public_key: PublicKey | None = None) -> ReportCheck:
    """Check a report's signature (by ``public_key`` when given), then re-verify and replay the
    ledger it embeds and compare what it states; raises SignatureError or LedgerError."""
    source = f"site report {path}"
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SignatureError(f"cannot read {source}: {err.strerror}") from None
    signer, body = _check_signature(data, source, public_key)
    doc = _extract(body, source)
    ledger_bytes, head_bytes = _embedded_bytes(doc, source)
    inner = f"{source}: embedded ledger"
    state = _checked(ledger_bytes, head_bytes, inner, signer)
    if not state.entries or state.public_key != signer:
        raise LedgerError(f"{inner} has no entries signed by the report's key {signer.fingerprint}")
    ledger = VerifiedLedger(ledger_bytes, head_bytes, state)
    check = ReportCheck(
        site=", ".join(sites(state.entries)),
        fingerprint=signer.fingerprint,
        entries=len(state.entries),
        epsilon=ledger.epsilon,
        delta=state.entries[-1].delta,
        accountant=state.entries[-1].accountant,
    )
    _compare_stated(doc, check, source)
    return check


# -- verification -------------------------------------------------------------------------
def _check_signature(data: bytes, source: str, pinned: PublicKey | None) -> tuple[PublicKey, bytes]:
    """The trailer's key and the signed bytes before it, once the signature verifies."""
    cut = data.rfind(b"\n", 0, len(data) - 1) + 1
    body, line = data[:cut], data[cut:]
    match = _TRAILER.fullmatch(line)
    if match is None:
        raise SignatureError(
            f"{source}: its last line is not a fedllm signature trailer: it was edited or cut"
        )
    key_text, sig_text = match.group(1).decode(), match.group(2).decode()
    try:
        signer = PublicKey.from_text(key_text)
    except SignatureError as err:
        raise SignatureError(f"{source}: its signature trailer's key is not valid: {err}") from None
    # Base64 leaves spare bits in the last character: demand the canonical spelling, so that
    # no byte of the trailer can change without failing.
    if signer.text != key_text or _canonical_b64(sig_text) != sig_text:
        raise SignatureError(f"{source}: its signature trailer is not canonical base64: edited")
    if pinned is not None and signer != pinned:
        raise SignatureError(
            f"{source} is signed by key {signer.fingerprint}, not by the site's key "
            f"{pinned.fingerprint}"
        )
    try:
        signer.verify(sig_text, body)
    except SignatureError:
        raise SignatureError(
            f"{source}: its signature does not verify with key {signer.fingerprint}: the report "
            "was edited after it was signed"
        ) from None
    return signer, body


def _canonical_b64(text: str) -> str:
    try:
        return base64.b64encode(base64.b64decode(text, validate=True)).decode()
    except binascii.Error:
        return ""


def _extract(body: bytes, source: str) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise LedgerError(f"{source} is not UTF-8 text") from None
    found = [(o, c) for o, c in BLOCKS.values() if o in text]
    if len(found) != 1 or text.count(found[0][0]) != 1:
        raise LedgerError(f"{source} does not hold exactly one fedllm-ledger block")
    opening, closing = found[0]
    start = text.index(opening) + len(opening)
    end = text.find(closing, start)
    try:
        doc = json.loads(text[start:end]) if end >= 0 else None
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or doc.get("format") != SCHEMA:
        raise LedgerError(f"{source}: its fedllm-ledger block is not a {SCHEMA} JSON object")
    return doc


def _embedded_bytes(doc: dict[str, Any], source: str) -> tuple[bytes, bytes | None]:
    lines, head = doc.get("ledger"), doc.get("head")
    if not (isinstance(lines, list) and all(isinstance(x, str) for x in lines)):
        raise LedgerError(f"{source}: its block's `ledger` is not a list of lines")
    if head is not None and not isinstance(head, str):
        raise LedgerError(f"{source}: its block's `head` is not the head file's text")
    return "\n".join(lines).encode(), None if head is None else head.encode()


def _compare_stated(doc: dict[str, Any], check: ReportCheck, source: str) -> None:
    stated = doc.get("epsilon")
    stated_eps = math.inf if stated is None else stated
    if (
        isinstance(stated_eps, bool)
        or not isinstance(stated_eps, int | float)
        or not math.isclose(stated_eps, check.epsilon, rel_tol=1e-9, abs_tol=1e-12)
    ):
        raise LedgerError(
            f"{source} states cumulative epsilon {stated}, replaying its ledger gives "
            f"{check.epsilon}"
        )
    for name, value in (
        ("site", check.site),
        ("fingerprint", check.fingerprint),
        ("entries", check.entries),
        ("delta", check.delta),
        ("accountant", check.accountant),
    ):
        if doc.get(name) != value:
            raise LedgerError(
                f"{source} states {name} {doc.get(name)!r}, its ledger gives {value!r}"
            )


def _document(ledger: VerifiedLedger, key: PublicKey) -> dict[str, Any]:
    last = ledger.entries[-1]
    eps = ledger.epsilon
    return {
        "format": SCHEMA,
        "site": ", ".join(sites(ledger.entries)),
        "fingerprint": key.fingerprint,
        "public-key": key.text,
        "entries": len(ledger.entries),
        "epsilon": eps if math.isfinite(eps) else None,
        "delta": last.delta,
        "accountant": last.accountant,
        "ledger": _text(ledger.data, "ledger").split("\n"),
        "head": None if ledger.head is None else _text(ledger.head, "ledger head"),
    }


def _text(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise LedgerError(f"the {what} is not UTF-8 text, so it cannot be embedded") from None


def _block_json(doc: dict[str, Any]) -> str:
    # These characters occur only inside JSON strings; escaping them keeps the block from ever
    # closing its fence or script element early.
    text = json.dumps(doc, indent=1, ensure_ascii=True, allow_nan=False)
    for char in "`<>&":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text


def _render(
    ledger: VerifiedLedger, key: PublicKey, fmt: ReportFormat, policy: SitePolicy | None
) -> str:
    entries, last, eps = ledger.entries, ledger.entries[-1], ledger.epsilon
    facts = [
        ("Site", ", ".join(sites(entries))),
        ("Signing key fingerprint", key.fingerprint),
        ("Public key (base64)", key.text),
        ("Generated", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
        ("Ledger entries", str(len(entries))),
        (
            "Cumulative epsilon",
            f"{format_epsilon(eps)} at delta {last.delta:g}, {last.accountant} accountant",
        ),
    ]
    if policy is not None:
        left = policy.max_epsilon - eps
        facts.append(
            (
                "Policy max-epsilon",
                f"{policy.max_epsilon:g} ({format_epsilon(max(left, 0.0))} left)",
            )
        )
    mixed = sorted({(e.delta, e.accountant) for e in entries})
    if len(mixed) > 1:  # the stated epsilon depends on which delta: say it was not uniform
        used = ", ".join(f"delta {d:g} ({a})" for d, a in mixed)
        facts.append(("Note", f"entries use {used}; the epsilon above is at the last entry's"))
    if ledger.state.head_pending:
        facts.append(("Note", f"entry {last.seq} is not yet covered by the signed head"))
    run_rows = [
        [r.run_id, rounds_text(r.rounds), str(r.steps), r.first, r.last, format_epsilon(r.epsilon)]
        for r in runs(entries)
    ]
    parts = ReportParts(
        title=f"Privacy report: {', '.join(sites(entries))}",
        facts=facts,
        policy=None if policy is None else policy.to_toml(),
        runs=run_rows,
        rows=[entry_cells(e) for e in entries],
        plot=plot(entries, policy),
        block=_block_json(_document(ledger, key)),
    )
    return (markdown if fmt == "md" else render_html)(parts)
