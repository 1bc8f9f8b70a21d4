"""A site killed at any point keeps every spend it recorded (real processes, real SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedllm.privacy import PrivacyLedger
from fedllm.privacy.chain import TRAIN

# Starts real site processes and kills them (~15 s a test): left out of `-m "not slow"`.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("site_process.py")


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "FLWR_TELEMETRY_ENABLED": "0"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _train_then_kill(folder: Path, server_round: int) -> float:
    proc = _start("train", str(folder), "--round", str(server_round))
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("ledger-written"), line + (proc.stderr.read() if proc.stderr else "")
    proc.send_signal(signal.SIGKILL)  # after the ledger write, before any reply
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return float(line.split()[1])


def test_a_site_killed_before_replying_still_knows_its_spend(tmp_path: Path) -> None:
    first = _train_then_kill(tmp_path, 1)
    second = _train_then_kill(tmp_path, 2)  # a new process: it must start from round 1's spend
    entries = [e for e in PrivacyLedger(tmp_path / "ledger.jsonl").replay() if e.kind == TRAIN]
    assert [e.round for e in entries] == [1, 2]
    assert entries[0].epsilon == first
    assert second == entries[1].epsilon and second > first


def test_killing_a_site_mid_write_never_loses_or_corrupts_a_durable_entry(
    tmp_path: Path,
) -> None:
    for delay in (0.3, 0.7, 1.1):
        proc = _start("append-forever", str(tmp_path))
        assert proc.stdout is not None
        durable = 0
        deadline = time.monotonic() + 60
        while durable == 0 and time.monotonic() < deadline:  # wait for the first append
            durable = int(proc.stdout.readline().split()[1])
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        rest = proc.stdout.read()
        proc.wait(timeout=30)
        reported = [
            int(line.split()[1]) for line in rest.splitlines() if line.startswith("durable")
        ]
        durable = max([durable, *reported])
        state = PrivacyLedger(tmp_path / "ledger.jsonl").read()  # chain and head still verify
        assert len(state.entries) >= durable  # nothing reported durable was lost
        assert len(state.entries) <= durable + 1  # at most the one being written when killed
