"""A SuperLink with its state in memory (`fedllm superlink start --in-memory`), restarted
between two runs: every site's SuperNode, which the restarted SuperLink no longer knows (401
on its signed requests: Flower's SuperNode would stop itself), activates again with its own
key and the next run trains with all of them. Real processes: TLS, node authentication, the
gate, three SuperNodes with the warm executor, DP and secure aggregation.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from fedllm import deploy
from fedllm.crypto import create_deployment
from tests.conftest import ROOT, write_heart_center
from tests.support.local_federation import LocalFederation, free_port, wait_for, write_rosters

pytestmark = [
    pytest.mark.slow,  # starts a real SuperLink and SuperNodes
    pytest.mark.filterwarnings("ignore::DeprecationWarning:pathspec"),
]

SITES = ("hospital-a", "hospital-b", "hospital-c")
REJOINED = "activating this node again"  # fedllm's SuperNode, after a 401


def _config(root: Path, name: str) -> str:
    values: dict[str, object] = {
        "task": "heart-disease",
        "data-path": str(root / "held-out"),
        "num-sites": 3,
        "partitioner": "iid",
        "min-available-nodes": 3,
        "num-server-rounds": 2,
        "batch-size": 16,
        "accountant": "rdp",
        "out-dir": str(root / "runs"),
        "run-name": name,
    }
    return " ".join(f"{k}={json.dumps(v)}" for k, v in values.items())


def _trained_by(root: Path, name: str) -> list[set[str]]:
    rounds = json.loads((root / "runs" / name / "metrics.json").read_text())["rounds"]
    return [set(r["sites"]) for r in rounds]


def test_sites_activate_again_after_an_in_memory_superlink_restarts(tmp_path: Path) -> None:
    made = create_deployment(tmp_path / "pki", ["localhost", "127.0.0.1"])
    (tmp_path / "held-out").mkdir()
    write_heart_center(tmp_path / "held-out" / "processed.cleveland.data", 45, 99)
    local = LocalFederation(tmp_path)
    pinned = deploy.FabInfo.of(deploy.build_fab(ROOT))
    try:
        files = {name: local.add_site(name, [pinned]) for name in SITES}
        write_rosters(files)
        keys = [tmp_path / "pki" / "nodes" / f"{name}.pub" for name in SITES]
        port = free_port()
        link = local.start_superlink(keys, port, in_memory=True)
        assert "--in-memory" in link.popen.args  # type: ignore[operator]
        for seed, (name, site) in enumerate(files.items()):
            data = site.folder / f"processed.{name}.data"
            write_heart_center(data, 40, seed)
            local.start_node(made.ca.cert, site.node_key, data, site.folder, name)
        nodes = {p.name: p for p in local.processes if p.name in SITES}
        for process in nodes.values():
            wait_for(process, "warm in", 300)

        first = local.run(ROOT, _config(tmp_path, "before"), timeout=600)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
        assert _trained_by(tmp_path, "before") == [set(SITES)] * 2

        link.kill(signal.SIGTERM)  # the SuperLink and its gate; its state is gone
        local.processes.remove(link)
        local.start_superlink(keys, port, in_memory=True)  # the same public port
        for process in nodes.values():
            wait_for(process, REJOINED, 180)
            assert process.popen.poll() is None, process.text()[-3000:]

        second = local.run(ROOT, _config(tmp_path, "after"), timeout=600)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-2000:]
        assert _trained_by(tmp_path, "after") == [set(SITES)] * 2
    finally:
        local.close()
