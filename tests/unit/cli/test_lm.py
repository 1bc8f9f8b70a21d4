"""`fedllm pretrain` writes a base checkpoint; `fedllm generate` samples from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedllm.cli import main
from tests.text_data import write_play

TINY = ["-c", "context-length=16", "-c", "lm-layers=1", "-c", "lm-heads=2", "-c", "lm-width=16"]


def test_pretrain_then_generate_from_the_base(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, base = write_play(tmp_path / "public.txt", 50), tmp_path / "base.pt"
    assert main(["pretrain", "--text", str(text), "--out", str(base), "--steps", "3", *TINY]) == 0
    assert "base-model-sha256" in capsys.readouterr().out
    assert main(["generate", "--model", str(base), "--prompt", "BOB:\n", "--tokens", "30"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("BOB:\n") and len(out) > len("BOB:\n") + 10  # bytes, some not UTF-8
    # never overwrites a base
    assert main(["pretrain", "--text", str(text), "--out", str(base), "--steps", "3"]) == 2
    assert "exists" in capsys.readouterr().err


def test_generate_names_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--model", str(tmp_path), "--prompt", "x"]) == 2
    assert "no metrics.json" in capsys.readouterr().err
