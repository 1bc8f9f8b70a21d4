"""Plain text for language modelling: read bytes, split a play by speaker, cut sequences.

Text is handled as bytes (a byte-level vocabulary of 256: no tokenizer to fit or share, every
site encodes alike). A site's text is cut into non-overlapping sequences of ``length + 1``
bytes (inputs and next-byte targets): each byte belongs to exactly one sequence, the unit of
privacy under DP-SGD.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedllm.errors import ConfigError, DataError

# A speech block of a play starts with the speaker's name alone on a line: `First Citizen:`.
PROLOGUE = "(before the first speaker)"
_SPEAKER = re.compile(rb"^([A-Za-z][A-Za-z '&.,-]*):$")


def read_text(path: str | Path) -> bytes:
    """The bytes of a text file; a missing, unreadable or empty file is a DataError."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"text file {p} does not exist (check `data-path`)")
    data = p.read_bytes()
    if not data.strip():
        raise DataError(f"text file {p} is empty")
    return data


@dataclass(frozen=True)
class Speech:
    speaker: str
    text: bytes  # the whole block, the `NAME:` line included


def speeches(text: bytes) -> list[Speech]:
    """The play's speech blocks (separated by blank lines, each opening with a `NAME:` line).
    Text before the first `NAME:` block is its own speech (speaker PROLOGUE); a text with no
    `NAME:` block is an error."""
    blocks = [b for b in re.split(rb"\n\s*\n", text) if b.strip()]
    out: list[Speech] = []
    for block in blocks:
        first = block.strip().split(b"\n", 1)[0].strip()
        match = _SPEAKER.match(first)
        if match:
            out.append(Speech(match.group(1).decode("ascii", "replace"), block.strip() + b"\n\n"))
        elif out:
            out[-1] = Speech(out[-1].speaker, out[-1].text + block.strip() + b"\n\n")
        else:
            out.append(Speech(PROLOGUE, block.strip() + b"\n\n"))
    if not any(s.speaker != PROLOGUE for s in out):
        raise DataError(
            "partitioner 'natural' splits a play by speaker, but this text has no speech "
            "blocks opening with a `NAME:` line; use partitioner 'iid'"
        )
    return out


def split_by_speaker(text: bytes, num_sites: int) -> list[tuple[str, bytes]]:
    """One site per group of speakers: speakers (largest first) go to the site with the least
    text so far, so sites get similar amounts; a speaker's whole text stays at one site.
    Returns (site label: its largest speaker, text) per site."""
    by_speaker: dict[str, list[bytes]] = {}
    for speech in speeches(text):
        by_speaker.setdefault(speech.speaker, []).append(speech.text)
    if num_sites > len(by_speaker):
        raise ConfigError(
            f"`num-sites` {num_sites} exceeds the {len(by_speaker)} speakers of the play"
        )
    sizes = sorted(
        ((sum(map(len, t)), name) for name, t in by_speaker.items()), key=lambda s: (-s[0], s[1])
    )
    loads = [0] * num_sites
    members: list[list[str]] = [[] for _ in range(num_sites)]
    for size, name in sizes:
        site = int(np.argmin(loads))
        loads[site] += size
        members[site].append(name)
    return [(names[0], b"".join(b"".join(by_speaker[n]) for n in names)) for names in members]


def sequences(text: bytes, length: int) -> np.ndarray:
    """Non-overlapping windows of ``length + 1`` bytes: (N, length + 1) int64; the tail that
    fills no window is dropped."""
    window = length + 1
    count = len(text) // window
    arr = np.frombuffer(text[: count * window], dtype=np.uint8).astype(np.int64)
    return arr.reshape(count, window)
