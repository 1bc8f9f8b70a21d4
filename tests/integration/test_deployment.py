"""Deployment mode with real processes: a TLS SuperLink with SuperNode authentication
(started by `fedllm superlink start`, which registers the sites' keys) and four SuperNodes,
each with its own node key, data file, policy, ledger and site key.

Where `ip netns` works (root), the SuperNodes run in their own network namespace and reach the
SuperLink across a veth link, so every byte crosses a real interface; elsewhere (or with
FEDLLM_DEPLOY_NETNS=0) everything runs on loopback. One federation serves the whole module
(start-up is the expensive part). Every process, and the namespace, is removed by the
fixture, also when a test fails.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fedllm import deploy
from fedllm.crypto import SiteKey, create_deployment
from fedllm.privacy import SitePolicy
from fedllm.secagg import ROSTER_FILE, Roster
from tests.conftest import ROOT, write_heart_center
from tests.support.local_federation import LocalFederation, free_port
from tests.support.netns import Netns

# Starts a real SuperLink and SuperNodes: left out of the quick loop, `-m "not slow"`.
pytestmark = pytest.mark.slow

SITES = ("hospital-a", "hospital-b", "hospital-c")
DOOMED = "hospital-d"  # a fourth site, killed once round 1 is recorded
INTRUDER = "intruder"  # has a node key pair, never registered
ROUND_TIMEOUT = 30.0  # longer than a normal round here; what a dead site costs the run


@dataclass
class Federation:
    local: LocalFederation
    root: Path
    sites: dict[str, deploy.SiteSettings]
    net: Netns | None
    no_netns: str  # why the SuperNodes share the SuperLink's namespace ("" when they do not)

    def run_config(self, name: str, rounds: int = 2, **extra: object) -> str:
        values: dict[str, object] = {
            "task": "heart-disease",
            "data-path": str(self.root / "held-out"),
            "num-sites": 3,
            "partitioner": "iid",
            "min-available-nodes": 3,
            "num-server-rounds": rounds,
            "batch-size": 16,
            "accountant": "rdp",
            "out-dir": str(self.root / "runs"),
            "run-name": name,
            **extra,
        }
        return " ".join(f"{k}={json.dumps(v)}" for k, v in values.items())

    def metrics(self, name: str) -> dict[str, Any]:
        return json.loads((self.root / "runs" / name / "metrics.json").read_text())  # type: ignore[no-any-return]


def make_site(root: Path, name: str, seed: int, rows: int = 40) -> Path:
    folder = root / "sites" / name
    folder.mkdir(parents=True)
    write_heart_center(folder / f"processed.{name}.data", rows, seed)
    SitePolicy(max_epsilon=10.0, delta=1e-5).write(folder / "policy.toml")
    SiteKey.generate(folder / "site-key.pem")
    return folder


def write_rosters(folder: Path, names: list[str]) -> None:
    """Each site's secagg-roster.toml: every member's identity key (exchanged out of band)."""
    roster = Roster({n: SiteKey.load(folder / n / "site-key.pem").public for n in names})
    for name in names:
        (folder / name / ROSTER_FILE).write_text(roster.to_toml())


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("deployment")
    if os.environ.get("FEDLLM_DEPLOY_NETNS", "1") == "0":
        made_net: Netns | str = "FEDLLM_DEPLOY_NETNS=0"
    else:
        made_net = Netns.create()
    net = made_net if isinstance(made_net, Netns) else None
    host = net.host_ip if net else "127.0.0.1"
    node_prefix = net.prefix if net else []
    hosts = ["localhost", "127.0.0.1", host]
    made = create_deployment(root / "pki", hosts, [*SITES, DOOMED, INTRUDER])
    (root / "held-out").mkdir()
    write_heart_center(root / "held-out" / "processed.cleveland.data", 45, 99)
    local = LocalFederation(root)
    try:
        members = [n for n in made.nodes if n.site != INTRUDER]
        local.start_superlink([n.pub for n in members], free_port(host), host=host)
        nodes = root / "pki" / "nodes"
        start_refused(local, made.ca.cert, made.nodes[0].key, nodes, node_prefix)
        sites = {}
        for seed, node in enumerate(members):
            folder = make_site(root, node.site, seed)
            sites[node.site] = local.start_node(
                made.ca.cert, node.key, folder / f"processed.{node.site}.data", folder, node.site,
                prefix=node_prefix,
            )  # fmt: skip
        write_rosters(root / "sites", list(sites))  # before any run: SecAgg+ reads them per stage
        yield Federation(local, root, sites, net, "" if net else str(made_net))
    finally:
        local.close()
        if net is not None:
            net.delete()


@pytest.fixture(scope="module")
def run(federation: Federation) -> tuple[dict[str, Any], str]:
    """Two rounds over TLS; hospital-d's SuperNode is killed (SIGKILL, with its executor)
    as soon as round 1 is in metrics.json."""
    name = "deployed"
    config = federation.run_config(name, **{"round-timeout": ROUND_TIMEOUT})
    process = subprocess.Popen(
        [
            *(deploy.executable("flwr"), "run", str(ROOT), deploy.CONNECTION, "--stream"),
            *("--run-config", config),
        ],
        env=federation.local.env,
        cwd=federation.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        metrics = federation.root / "runs" / name / "metrics.json"
        deadline = time.monotonic() + 200
        while not (metrics.exists() and json.loads(metrics.read_text())["rounds"]):
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.communicate(timeout=10)[0] if process.poll() is not None else ""
                pytest.fail(f"round 1 never ended:\n{output[-3000:]}")
            time.sleep(0.3)
        for started in federation.local.processes:
            if started.name.startswith(DOOMED):
                started.kill()
        output, _ = process.communicate(timeout=200)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    (federation.root / "logs" / "run.log").write_text(output)
    assert process.returncode == 0, output[-3000:]
    return federation.metrics(name), output


def test_three_sites_train_two_rounds_over_tls(
    federation: Federation, run: tuple[dict[str, Any], str]
) -> None:
    metrics, _ = run
    rounds = metrics["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    for entry in rounds:
        assert set(SITES) <= set(entry["sites"]), entry
        assert all(0 < entry["epsilon"][s] <= 1.0 for s in SITES)
        assert entry["refused"] == {}
    assert 0.0 <= metrics["final"]["accuracy"] <= 1.0
    for name in SITES:  # each site recorded its own spend in its own signed ledger
        ledger = federation.sites[name].site_dir / "ledger.jsonl"
        assert len(ledger.read_text().splitlines()) == 2


def test_a_killed_site_drops_out_and_the_run_completes(run: tuple[dict[str, Any], str]) -> None:
    metrics, output = run
    first, second = metrics["rounds"]
    assert set(first["sites"]) == {*SITES, DOOMED}
    assert set(second["sites"]) == set(SITES)
    assert DOOMED in second["dropped"]
    assert f"site {DOOMED} dropped out of round 2 (train)" in output


REFUSED = ("intruder", "no-ca", "plaintext")


def start_refused(
    local: LocalFederation, ca: Path, member_key: Path, nodes: Path, prefix: list[str]
) -> None:
    """Three SuperNodes that must not get in, started with the federation so they overlap its
    start-up: an unregistered key, no CA (the system's trust store instead), and a plaintext
    client (--insecure; Flower refuses node keys without TLS, so it has none)."""
    assert local.superlink is not None
    address = local.superlink.address()
    for name, tls in (
        ("intruder", ["--root-certificates", str(ca), "--auth-supernode-private-key"]),
        ("no-ca", ["--auth-supernode-private-key"]),
        ("plaintext", ["--insecure"]),
    ):
        key = nodes / f"{INTRUDER}.key" if name == "intruder" else member_key
        command = [deploy.executable("flower-supernode"), "--superlink", address, *tls]
        if tls[-1] == "--auth-supernode-private-key":
            command.append(str(key))
        command += ["--port", str(free_port()), "--max-retries", "2", "--max-wait-time", "20"]
        local.start(name, command, prefix)


@pytest.fixture(scope="module")
def refused(federation: Federation) -> dict[str, str]:
    """The refused SuperNodes' logs, once each has given up."""
    logs = {}
    for process in (p for p in federation.local.processes if p.name in REFUSED):
        try:
            process.popen.wait(timeout=90)
        finally:
            process.kill()
        logs[process.name] = process.text()
        assert process.popen.returncode != 0, logs[process.name][-2000:]
        assert "SuperNode ID" not in logs[process.name], logs[process.name][-2000:]
    return logs


def test_unregistered_node_key_is_refused(federation: Federation, refused: dict[str, str]) -> None:
    assert "[code: 2004] Failed to activate SuperNode" in refused["intruder"]
    superlink = federation.local.processes[0].text()
    assert "No SuperNode found with the given public key" in superlink
    assert '"POST /v1/fleet/activate-node HTTP/1.1" 412' in superlink


def test_supernode_without_the_ca_cannot_connect(refused: dict[str, str]) -> None:
    assert "CERTIFICATE_VERIFY_FAILED" in refused["no-ca"]


def test_plaintext_client_cannot_talk_to_the_tls_superlink(
    federation: Federation, refused: dict[str, str]
) -> None:
    assert "Starting insecure channel" in refused["plaintext"]
    assert "Connection attempt failed" in refused["plaintext"]
    # The same at the byte level: a plaintext HTTP request gets no HTTP answer.
    assert federation.local.superlink is not None
    link = federation.local.superlink
    with socket.create_connection((link.host, link.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/fleet/activate-node HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = sock.recv(1024)
    assert not answer.startswith(b"HTTP/")


def test_sites_reach_the_superlink_across_a_veth_link(
    federation: Federation, run: tuple[dict[str, Any], str]
) -> None:
    if federation.net is None:
        pytest.skip(f"SuperNodes ran on loopback: no network namespace ({federation.no_netns})")
    net = federation.net
    assert net.received_bytes() > 50_000  # the FAB, the global models, the replies
    superlink = federation.local.processes[0].text()
    assert f"{net.ns_ip}:" in superlink  # the SuperLink saw the sites' veth address
    assert "127.0.0.1:" not in "".join(
        line for line in superlink.splitlines() if "/v1/fleet/" in line
    )  # no fleet call came over loopback
