"""Resume in simulation (issue 18): `fedllm simulate` killed with SIGKILL after round 2 of 4
(``FEDLLM_CRASH_AFTER_ROUND``: the ServerApp kills its own process once round 2 is
checkpointed, the driver and the whole engine with it) and resumed with `resume-from` ends
with 4 rounds, each once in metrics.json; every virtual site's ledger verifies, records the 4
trainings (ledger kind ``train``) under one run id and the run's noised example count once
(kind ``count``: the resumed rounds reuse it), and the run's epsilon is within its target.

The same in deployment, and a resumed run asking a larger target: tests/integration/
test_deployment.py (one federation for all deployment tests)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fedllm.cli import main as fedllm
from fedllm.privacy import PrivacyLedger, spent
from fedllm.privacy.chain import COUNT, TRAIN
from server.recorder import CRASH_AFTER_ROUND

pytestmark = pytest.mark.slow  # two runs on Flower's simulation engine (Ray)

ROOT = Path(__file__).resolve().parents[2]
TARGET = 1.0
RUN = ("num-sites=3", "num-server-rounds=4", 'partitioner="iid"', 'accountant="rdp"')


START_WITHIN = 240.0  # seconds to a run's first checkpoint; longer: Ray hung at start-up


def simulate(
    out: Path, *overrides: str, first: Path, crash: str = ""
) -> tuple[subprocess.CompletedProcess[str], bool]:
    """`fedllm simulate` in its own process group (its Ray processes too), removed after;
    and whether it stalled: no checkpoint ``first`` within START_WITHIN seconds (on a loaded
    machine Ray's processes sometimes die at start-up and the driver then waits forever)."""
    args = [arg for o in overrides for arg in ("-c", o)]
    # Ray's own folder, short: its socket paths must stay within AF_UNIX's 107 bytes, which a
    # folder under pytest's numbered base temp (pytest-191/resume1/...) does not.
    ray_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "RAY_TMPDIR": ray_dir}
    if crash:
        env[CRASH_AFTER_ROUND] = crash
    log = out / f"simulate-{time.monotonic_ns()}.log"
    stalled = False
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedllm.cli", "simulate", *args, "-c", f'out-dir="{out}"'],
            cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        started = time.monotonic()
        try:
            while proc.poll() is None:
                waited = time.monotonic() - started
                stalled = waited > START_WITHIN and not first.exists()
                if stalled or waited > 420:
                    break
                time.sleep(0.5)
        finally:
            with contextlib.suppress(ProcessLookupError):  # Ray's processes outlive the driver
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            shutil.rmtree(ray_dir, ignore_errors=True)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, log.read_text(), "")
    return done, stalled


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    checkpoints = Path("crashed") / "checkpoints"
    for _ in range(2):  # again, in a fresh folder, if Ray hung before round 1
        out = tmp_path_factory.mktemp("resume")
        crashed, stalled = simulate(
            out, *RUN, 'run-name="crashed"', first=out / checkpoints / "round-0001.ckpt",
            crash="crashed:2",
        )  # fmt: skip
        if not stalled:
            break
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout[-3000:]
    assert "killing the ServerApp after round 2" in crashed.stdout, crashed.stdout[-3000:]
    for _ in range(2):  # again if Ray hung before round 3 (a resume can be repeated)
        resume = f'resume-from="{out / "crashed"}"'
        done, stalled = simulate(out, *RUN, resume, first=out / checkpoints / "round-0003.ckpt")
        if not stalled:
            break
    assert done.returncode == 0, done.stdout[-3000:]
    return out / "crashed", crashed.stdout, done.stdout


def test_a_simulation_killed_after_round_2_resumes_and_ends_with_4_rounds(
    resumed: tuple[Path, str, str],
) -> None:
    run, crashed, done = resumed
    assert "killing the ServerApp after round 2" in crashed
    assert "resuming run crashed" in done and "after round 2 of 4" in done
    metrics = json.loads((run / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2, 3, 4]
    assert metrics["rounds"][2]["resumed"] == {"after-round": 2}
    assert {"metrics.json", "model.pt", "plot.png", "report.md"} <= {p.name for p in run.iterdir()}


def test_every_sites_ledger_verifies_with_one_run_within_its_target(
    resumed: tuple[Path, str, str],
) -> None:
    run = resumed[0]
    metrics = json.loads((run / "metrics.json").read_text())
    ledgers = sorted((run / "sites").glob("*/ledger.jsonl"))
    assert [p.parent.name for p in ledgers] == ["site-0", "site-1", "site-2"]
    for ledger in ledgers:
        assert fedllm(["ledger", "verify", str(ledger)]) == 0
        entries = PrivacyLedger(ledger).replay()
        assert [e.round for e in entries if e.kind == TRAIN] == [1, 2, 3, 4]  # nothing twice
        assert [e.kind for e in entries].count(COUNT) == 1  # released once, reused on resume
        (run_id,) = {e.run_id for e in entries}  # one run, before and after the restart
        epsilon = spent(entries, 1e-5, "rdp", run_id).epsilon()
        assert 0 < epsilon <= TARGET
        assert metrics["final"]["epsilon-per-site"][ledger.parent.name] == pytest.approx(epsilon)
