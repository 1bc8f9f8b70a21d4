"""Shared fixtures: small data written in the real formats, and the default run config."""

from __future__ import annotations

import gzip
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
# The default checkpoint key lives under $XDG_CONFIG_HOME/fedllm: never the user's own in tests.
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="fedllm-test-config-")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def defaults() -> dict[str, Any]:
    from fedllm.simulation import default_config

    return default_config(ROOT)


@pytest.fixture
def config(defaults: dict[str, Any]) -> Any:
    from fedllm.config import RunConfig

    def make(**overrides: Any) -> RunConfig:
        values = dict(defaults)
        values.update({k.replace("_", "-"): v for k, v in overrides.items()})
        return RunConfig.from_flower(values)

    return make


def write_heart_center(path: Path, rows: int, seed: int) -> None:
    """A file in UCI's processed.<center>.data layout (14 values, '?' for missing)."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(rows):
        age = rng.integers(30, 75)
        num = int(rng.integers(0, 5)) if age > 50 else 0
        values = [
            age,
            rng.integers(0, 2),
            rng.integers(1, 5),
            rng.integers(100, 180),
            rng.integers(150, 350),
            rng.integers(0, 2),
            rng.integers(0, 3),
            rng.integers(90, 200),
            rng.integers(0, 2),
            round(float(rng.uniform(0, 4)), 1),
            "?",
            "?",
            rng.integers(3, 8),
            num,
        ]
        if i % 17 == 5:
            values[4] = "?"  # a missing cholesterol: the row is dropped
        lines.append(",".join(str(v) for v in values))
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def heart_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "heart"
    folder.mkdir()
    for seed, (center, rows) in enumerate(
        [("cleveland", 60), ("hungarian", 50), ("switzerland", 30), ("va", 40)]
    ):
        write_heart_center(folder / f"processed.{center}.data", rows, seed)
    return folder


def write_idx(path: Path, array: np.ndarray) -> None:
    code = {np.dtype(np.uint8): 0x08}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    path.write_bytes(gzip.compress(header + array.tobytes()))


@pytest.fixture
def mnist_dir(tmp_path: Path) -> Path:
    """Tiny MNIST-format files: each class is a bright square at its own position."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 600), ("t10k", 200)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            r, c = divmod(int(label), 5)
            images[i, 4 + 10 * r : 12 + 10 * r, 2 + 5 * c : 6 + 5 * c] = 255
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return folder
