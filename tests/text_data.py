"""A small generated play (speech blocks opening with `NAME:` lines) for the text task's tests:
a few speakers, each with its own habits, so a model can learn something in seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SPEAKERS = {
    "ALICE": ["the cat sat on the mat", "a cat is a fine thing"],
    "BOB": ["my horse is in the barn", "the barn is red and old"],
    "CAROL": ["we sail at dawn my friends", "the sea is calm at dawn"],
    "DAVE": ["bring the bread and the wine", "the wine is sweet tonight"],
}


def play(blocks: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    names = list(SPEAKERS)
    out = []
    for _ in range(blocks):
        name = names[int(rng.integers(len(names)))]
        lines = [SPEAKERS[name][int(rng.integers(2))] for _ in range(int(rng.integers(1, 4)))]
        out.append(f"{name}:\n" + "\n".join(lines) + "\n")
    return "\n".join(out)


def write_play(path: Path, blocks: int, seed: int = 0) -> Path:
    path.write_text(play(blocks, seed))
    return path
