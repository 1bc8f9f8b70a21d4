"""Deployment mode with real processes: a TLS SuperLink with SuperNode authentication
(started by `fedllm superlink start`: flower-superlink on loopback behind fedllm's gate, which
serves only the Fleet API, and the sites' keys registered) and four SuperNodes, each with its
own folder made as a site makes it (`fedllm site init`: node key, SuperExec secret, policy,
site key; the operator receives only node.pub), its data file and ledger, and the fedllm app
pinned by digest (`fedllm site trust`).

Issue 16's attacks run against the same federation before the normal run: an outsider holding
only ca.crt and their own Flower home (through the gate: refused; from the SuperLink's own
machine: their app refused at every site, no code of it run, no data back), the operator
shipping a modified copy of fedllm (refused), another local process taking a site's tasks
without the SuperExec secret (refused).

Issue 18 against the same federation: a 4-round run whose ServerApp is killed with SIGKILL
after round 2 (``FEDLLM_CRASH_AFTER_ROUND`` in the SuperLink's environment) is resumed with
`resume-from`, first asking a larger target-epsilon (every site's policy refuses it), then as it
was: it ends with 4 rounds, each once in metrics.json, and each site's ledger verifies with the
run's epsilon within its target; every message of a run goes to one warm worker at each site.
(Prompt delivery itself: tests/unit/deploy/test_supernode.py.)

Where `ip netns` works (root), the SuperNodes (and the outsider on the network) run in their
own network namespace and reach the SuperLink across a veth link, so every byte crosses a real
interface; elsewhere (or with FEDLLM_DEPLOY_NETNS=0) everything runs on loopback. One
federation serves the whole module (start-up is the expensive part). Every process, and the
namespace, is removed by the fixture, also when a test fails.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fedllm import deploy
from fedllm.checkpoint import RUN_ID, load_checkpoint
from fedllm.cli import main
from fedllm.crypto import SiteKey, create_deployment, create_node_keys
from fedllm.crypto.seal import SealKey
from fedllm.privacy import PrivacyLedger, spent
from fedllm.privacy.chain import COUNT, TRAIN
from fedllm.secagg import ROSTER_FILE, Roster
from server.recorder import CRASH_AFTER_ROUND
from tests.conftest import ROOT, write_heart_center
from tests.support.local_federation import LocalFederation, Process, free_port
from tests.support.netns import Netns
from tests.support.outsider_app import GOT_DATA, GOT_ERROR, outsider_home, write_outsider_app

# Flower's FAB builder calls a pathspec API that warns on every pattern.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pathspec")

# Starts a real SuperLink and SuperNodes: left out of the quick loop, `-m "not slow"`.
pytestmark = pytest.mark.slow

SITES = ("hospital-a", "hospital-b", "hospital-c")
DOOMED = "hospital-d"  # a fourth site, killed once round 1 is recorded
MEMBERS = (*SITES, DOOMED)
INTRUDER = "intruder"  # has a node key pair, never registered
ROUND_TIMEOUT = 30.0  # longer than a normal round here; what a dead site costs the run
CRASHED = "crashed"  # the run whose ServerApp kills itself (SIGKILL) after round 2


@dataclass
class Federation:
    local: LocalFederation
    root: Path
    sites: dict[str, deploy.SiteSettings]
    net: Netns | None
    no_netns: str  # why the SuperNodes share the SuperLink's namespace ("" when they do not)
    pinned: bytes  # the FAB `flwr run ROOT` sends: the app every site pinned
    node_prefix: list[str]  # runs a command on the sites' side of the network

    @property
    def link(self) -> deploy.SuperLinkSettings:
        assert self.local.superlink is not None
        return self.local.superlink

    def log(self, name: str) -> str:
        return next(p for p in self.local.processes if p.name == name).text()

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
    made = create_deployment(root / "pki", ["localhost", "127.0.0.1", host])
    (root / "held-out").mkdir()
    write_heart_center(root / "held-out" / "processed.cleveland.data", 45, 99)
    # The ServerApps this SuperLink starts inherit its environment: run CRASHED's dies after
    # round 2, as a crash would (server/recorder.py); no other run is affected.
    local = LocalFederation(root, extra_env={CRASH_AFTER_ROUND: f"{CRASHED}:2"})
    try:
        # Each site makes its own folder and keys; the operator files only node.pub.
        files = {name: local.add_site(name, pinned=[]) for name in MEMBERS}
        for seed, name in enumerate(MEMBERS):
            write_heart_center(files[name].folder / f"processed.{name}.data", 40, seed)
        keys = [root / "pki" / "nodes" / f"{name}.pub" for name in MEMBERS]
        local.start_superlink(keys, free_port(host), host=host)
        (intruder,) = create_node_keys(root / INTRUDER, [INTRUDER])  # never registered
        start_refused(local, made.ca.cert, intruder.key, files[SITES[0]].node_key, node_prefix)
        sites = {}
        for name in MEMBERS:
            folder = files[name].folder
            sites[name] = local.start_node(
                made.ca.cert, files[name].node_key, folder / f"processed.{name}.data", folder,
                name, prefix=node_prefix,
            )  # fmt: skip
        # While the executors warm up: the operator's digest, each site's explicit pin.
        pinned = deploy.build_fab(ROOT)
        digest = deploy.FabInfo.of(pinned).sha256
        for name in MEMBERS:
            assert main(["site", "trust", str(files[name].folder), "--sha256", digest]) == 0
        write_rosters(root / "sites", list(MEMBERS))  # SecAgg+ reads them per stage
        yield Federation(local, root, sites, net, "" if net else str(made_net), pinned, node_prefix)
    finally:
        local.close()
        if net is not None:
            net.delete()


# Issue 16: who can make a site run code, and what they get back.


@pytest.mark.slow
def test_another_local_process_cannot_take_a_sites_tasks(federation: Federation) -> None:
    """The Runtime API between a SuperNode and its executor hands out tasks only to the
    holder of the site's SuperExec secret (Flower's HMAC on AcquireTask)."""
    site = federation.sites[SITES[0]]
    secret = site.files.superexec_secret.read_text()
    probe = [sys.executable, "-c", ACQUIRE, f"127.0.0.1:{site.port}", "", "0" * 64, secret]
    done = subprocess.run(
        [*federation.node_prefix, *probe],
        capture_output=True, text=True, timeout=60, check=False, env=federation.local.env,
    )  # fmt: skip
    answers = done.stdout.splitlines()
    assert len(answers) == 3, done.stdout + done.stderr[-2000:]
    none, wrong, right = answers
    assert none.startswith("REFUSED") and "401 Unauthorized" in none
    assert wrong.startswith("REFUSED") and "401 Unauthorized" in wrong
    assert right == "NO TASK"  # the site's secret authenticates; nothing pending between runs


ACQUIRE = """
import sys
from flwr.proto.runtime_pb2 import AcquireTaskRequest
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor, SuperExecAuthHttpInterceptor
from flwr.supercore.runtime import RuntimeHttpClient

for secret in sys.argv[2:]:  # none, a wrong one, the site's
    interceptors = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
    if secret:
        interceptors.append(SuperExecAuthHttpInterceptor(
            master_secret=secret.encode(), protected_methods=["/flwr.proto.Runtime/AcquireTask"]))
    client = RuntimeHttpClient.from_server_address(
        server_address=sys.argv[1], insecure=True, root_certificates=None,
        interceptors=interceptors)
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value])
    try:
        got = client.AcquireTask(request)
        print("ACQUIRED A TASK" if got.HasField("task") else "NO TASK")
    except Exception as err:
        print("REFUSED", type(err).__name__, str(err).splitlines()[0])
    client.close()
"""


WAIT = "wait-for-nodes=60.0"  # the outsider's ServerApp waits this long for nodes, replies


@dataclass
class Attempt:
    """What one command printed, and its exit status."""

    output: str
    returncode: int

    @property
    def run_id(self) -> str:
        found = re.search(r"Successfully started run (\d+)", self.output)
        assert found, self.output[-3000:]
        return found.group(1)


@dataclass
class Attempts:
    public: dict[str, Attempt]  # the outsider through the gate: `supernode list|register`, `run`
    outsider: Attempt  # the outsider's `flwr run` from the SuperLink's own machine
    modified: Attempt  # the operator's `flwr run` of a modified copy of fedllm
    outsider_fab: str  # digests
    modified_fab: str
    faithful_copy_fab: str  # the copy before its one changed line
    markers: list[Path]  # files the two apps write when any of their code is imported
    ledgers_before: dict[str, int]
    ledgers_after: dict[str, int]


@pytest.fixture(scope="module")
def attempts(federation: Federation) -> Attempts:
    """Issue 16's scenario and the operator's variant, at once (their refusals overlap):
    an outsider with only `ca.crt` and their own Flower home runs `flwr run ./otherapp`, whose
    ClientApp reads the site's data; the operator runs a copy of fedllm with one changed line
    (it writes a marker when imported)."""
    root = federation.root / "attacks"
    outsider_marker, modified_marker = root / "outsider-was-here", root / "modified-was-here"
    app = write_outsider_app(root / "outsider" / "otherapp", outsider_marker)
    link = federation.link
    home = outsider_home(
        root / "outsider" / "flwr",
        federation.link.ca,
        {"public": link.fleet_address(), "inside": link.address()},
    )
    (own,) = create_node_keys(root / "outsider", ["mine"])
    modified, faithful = modified_copy(
        federation.pinned, root / "modified" / "fedllm", modified_marker
    )
    before = _ledger_lines(federation)
    outsider_env = {**federation.local.env, "FLWR_HOME": str(home)}
    flwr = deploy.executable("flwr")
    net = [*federation.node_prefix, flwr]  # from the sites' network: only the gate is there
    commands = {
        "list": [*net, "supernode", "list", "public"],
        "register": [*net, "supernode", "register", str(own.pub), "public"],
        "run": [*net, "run", str(app), "public", "--stream"],
        # on the SuperLink's machine (its loopback), past the gate: only the sites stand
        "outsider": [flwr, "run", str(app), "inside", "--stream", "--run-config", WAIT],
    }
    started = {
        name: subprocess.Popen(
            command,
            env=outsider_env,
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, command in commands.items()
    }
    extra: dict[str, object] = {"round-timeout": 60.0}
    extra.update({"min-available-nodes": len(MEMBERS), "num-sites": len(MEMBERS)})
    config = federation.run_config("modified", rounds=1, secagg=False, **extra)
    modified_run = federation.local.run(modified, config, timeout=300)
    done = {}
    for name, process in started.items():
        try:
            output, _ = process.communicate(timeout=300)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        done[name] = Attempt(output, process.returncode)
    return Attempts(
        public={k: done[k] for k in ("list", "register", "run")},
        outsider=done["outsider"],
        modified=Attempt(modified_run.stdout + modified_run.stderr, modified_run.returncode),
        outsider_fab=deploy.FabInfo.of(deploy.build_fab(app)).sha256,
        modified_fab=deploy.FabInfo.of(deploy.build_fab(modified)).sha256,
        faithful_copy_fab=faithful,
        markers=[outsider_marker, modified_marker],
        ledgers_before=before,
        ledgers_after=_ledger_lines(federation),
    )


def modified_copy(fab: bytes, folder: Path, marker: Path) -> tuple[Path, str]:
    """fedllm's files as the pinned FAB holds them, in ``folder``, with one line changed: the
    ClientApp module writes ``marker`` when it is imported. Returns the folder and the digest
    of the copy before the change (the pinned one: the FAB pins content, not location)."""
    with zipfile.ZipFile(io.BytesIO(fab)) as archive:
        for name in archive.namelist():
            if not name.startswith(".info/"):
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(archive.read(name))
    faithful = deploy.FabInfo.of(deploy.build_fab(folder)).sha256
    client = folder / "clients" / "client_app.py"
    line = "from __future__ import annotations"
    text = client.read_text()
    assert text.count(line + "\n") == 1
    changed = f"{line}; import pathlib; pathlib.Path({str(marker)!r}).write_text('imported')"
    client.write_text(text.replace(line + "\n", changed + "\n"))
    return folder, faithful


def _ledger_lines(federation: Federation) -> dict[str, int]:
    ledgers = {n: s.files.ledger for n, s in federation.sites.items()}
    return {n: len(p.read_text().splitlines()) if p.exists() else 0 for n, p in ledgers.items()}


@pytest.mark.slow
def test_an_outsider_with_the_ca_certificate_gets_no_control_api(
    federation: Federation, attempts: Attempts
) -> None:
    for name, attempt in attempts.public.items():
        assert attempt.returncode != 0, (name, attempt.output[-2000:])
        assert "403 Forbidden" in attempt.output, (name, attempt.output[-2000:])
    gate = federation.log("superlink")
    for path in ("list-nodes", "register-node", "start-run"):
        assert f"refused POST '/v1/control/{path}' from " in gate
    own = (federation.root / "attacks" / "outsider" / "mine.pub").read_text().split()[1]
    assert own not in _registered_keys(federation)  # their node key did not get in


@pytest.mark.slow
def test_an_outsiders_app_runs_at_no_site_and_gets_no_data(
    federation: Federation, attempts: Attempts
) -> None:
    """Issue 16's scenario, past the gate: the sites alone stand between the outsider's
    ClientApp and their data."""
    output, digest = attempts.outsider.output, attempts.outsider_fab
    refused = f"this site does not run @outsider/otherapp 1.0.0 (sha256 {digest})"
    assert not attempts.markers[0].exists()  # not one line of its ClientApp ran anywhere
    assert GOT_DATA not in output
    assert output.count(GOT_ERROR) == len(MEMBERS) and output.count(refused) == len(MEMBERS)
    for name, site in federation.sites.items():
        rows = site.data_path.read_text().splitlines()[:5]
        assert not any(row in output for row in rows), name  # no data row reached them
        assert str(site.data_path) not in output and str(site.site_dir) not in output
        log = federation.log(name)
        assert f"refused run {attempts.outsider.run_id}: {refused}" in log  # logged at the site
    assert not deploy.pinning.pinned_home(federation.root / "flwr", digest).exists()


@pytest.mark.slow
def test_a_modified_copy_of_the_fedllm_app_is_refused(
    federation: Federation, attempts: Attempts
) -> None:
    pinned = deploy.FabInfo.of(federation.pinned).sha256
    assert attempts.faithful_copy_fab == pinned  # the copy is fedllm, as pinned...
    assert attempts.modified_fab != pinned  # ...until one line changes
    refused = f"this site does not run @fedllm/fedllm 0.1.0 (sha256 {attempts.modified_fab})"
    assert not attempts.markers[1].exists()
    assert "AppNotTrustedError" in attempts.modified.output  # what the operator sees
    for name in MEMBERS:
        assert f"refused run {attempts.modified.run_id}: {refused}" in federation.log(name)
    assert attempts.ledgers_after == attempts.ledgers_before  # no site trained or spent


@pytest.mark.slow
def test_node_keys_made_at_the_sites_register_and_connect(federation: Federation) -> None:
    registered = _registered_keys(federation)
    for name, site in federation.sites.items():
        assert site.node_key == site.site_dir / "node.key"  # made at the site...
        sent = (site.site_dir / "node.pub").read_text().split()[1]
        assert sent == (federation.root / "pki" / "nodes" / f"{name}.pub").read_text().split()[1]
        assert sent in registered  # ...only its public key registered by the operator
        assert "SuperNode ID" in federation.log(name)  # ...and the SuperNode got in


@pytest.mark.slow
def test_no_site_secret_is_in_the_operators_folders(federation: Federation) -> None:
    operator = [federation.root / d for d in ("pki", "superlink-state", "flwr")]
    files = [p for folder in operator for p in folder.rglob("*") if p.is_file()]
    private = sorted(p.name for p in files if PRIVATE_KEY.search(p.read_bytes()))
    assert private == ["ca.key", "superlink.key"]  # the operator's own, nothing else
    secrets = []
    for site in federation.sites.values():
        for path in (site.files.node_key, site.files.site_key, site.files.superexec_secret):
            secrets += [
                line.encode() for line in path.read_text().splitlines() if "-----" not in line
            ]
    assert not any(secret in p.read_bytes() for p in files for secret in secrets)


PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----\r?\n[A-Za-z0-9+/=\r\n]+-----END")


def _registered_keys(federation: Federation) -> str:
    """The public keys the SuperLink has registered, as OpenSSH base64 (the operator's CLI)."""
    done = subprocess.run(
        [sys.executable, "-c", LIST_KEYS, deploy.CONNECTION],
        env=federation.local.env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return done.stdout


LIST_KEYS = """
import base64, sys
from cryptography.hazmat.primitives import serialization
from flwr.cli.flower_config import read_superlink_connection
from flwr.cli.utils import init_http_client_from_connection
from flwr.proto.control_pb2 import ListNodesRequest

client = init_http_client_from_connection(read_superlink_connection(sys.argv[1]))
for node in client.ListNodes(ListNodesRequest()).nodes_info:
    key = serialization.load_pem_public_key(bytes(node.public_key))
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    print(line.decode().split()[1])
"""


# Issue 18: a coordinator that survives a crash. Defined before the tests of the normal run,
# which kill hospital-d: every member answers these.


@dataclass
class Resumed:
    crash: dict[str, Any]  # metrics.json when the ServerApp died
    ledgers_at_crash: dict[str, int]
    refused: Attempt  # resumed asking target-epsilon above every site's max-epsilon
    ledgers_after_refusal: dict[str, int]
    done: Attempt  # resumed as it was
    metrics: dict[str, Any]


@pytest.fixture(scope="module")
def resumed(federation: Federation) -> Resumed:
    """Run CRASHED: 4 rounds, its ServerApp killed with SIGKILL once round 2 is checkpointed;
    resumed with a larger target-epsilon (refused), then resumed as it was."""
    config = federation.run_config(CRASHED, 4, **{"round-timeout": ROUND_TIMEOUT})
    folder = federation.root / "runs" / CRASHED
    process = subprocess.Popen(
        [
            *(deploy.executable("flwr"), "run", str(ROOT), deploy.CONNECTION, "--stream"),
            *("--run-config", config),
        ],
        env=federation.local.env, cwd=federation.root, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    seen: set[int] = set()  # the run's ServerApp, found by the Runtime API it dials
    try:  # the stream client waits for a run that no longer progresses: stop it
        deadline = time.monotonic() + 300
        while not (folder / "checkpoints" / "round-0002.ckpt").exists():
            assert process.poll() is None and time.monotonic() < deadline, "no round 2"
            seen.update(federation.local.serverapp_pids())
            time.sleep(0.2)
        assert seen, "the run's ServerApp was never found"
        while seen & set(federation.local.serverapp_pids()):  # it kills itself
            assert time.monotonic() < deadline, "the ServerApp is still running"
            time.sleep(0.2)
    finally:
        process.kill()
        output = process.communicate()[0]
    (federation.root / "logs" / "crashed.log").write_text(output)
    assert not (folder / "checkpoints" / "round-0003.ckpt").exists()
    crash = federation.metrics(CRASHED)
    at_crash = _ledger_lines(federation)
    again = f"{config} resume-from={json.dumps(str(folder))}"
    refused = federation.local.run(ROOT, f"{again} target-epsilon=20.0", timeout=300)
    after_refusal = _ledger_lines(federation)
    done = federation.local.run(ROOT, again, timeout=400)
    return Resumed(
        crash,
        at_crash,
        Attempt(refused.stdout + refused.stderr, refused.returncode),
        after_refusal,
        Attempt(done.stdout + done.stderr, done.returncode),
        federation.metrics(CRASHED),
    )


@pytest.mark.slow
def test_a_run_killed_after_round_2_resumes_and_ends_with_4_rounds(
    federation: Federation, resumed: Resumed
) -> None:
    assert [r["round"] for r in resumed.crash["rounds"]] == [1, 2]
    assert resumed.done.returncode == 0, resumed.done.output[-3000:]
    rounds = resumed.metrics["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]  # each round once
    assert rounds[:2] == resumed.crash["rounds"]  # the history came back from the checkpoint
    assert rounds[2]["resumed"] == {"after-round": 2} and "resumed" not in rounds[3]
    assert resumed.metrics["final"]["stopped"] is None
    for entry in rounds:
        assert set(MEMBERS) <= set(entry["sites"]) and entry["refused"] == {}
    checkpoints = federation.root / "runs" / CRASHED / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        f"round-000{r}.ckpt" for r in (1, 2, 3, 4)
    ]


@pytest.mark.slow
def test_each_sites_ledger_verifies_with_one_run_within_its_target(
    federation: Federation, resumed: Resumed
) -> None:
    """The resumed rounds are the same run at every site: 4 rounds under one run id, nothing
    charged twice, the run's epsilon within its target."""
    key = SealKey.resolve(create=False)
    last = load_checkpoint(
        federation.root / "runs" / CRASHED / "checkpoints" / "round-0004.ckpt", key
    )
    run_id = last.run[RUN_ID]
    for name in MEMBERS:
        site = federation.sites[name]
        entries = PrivacyLedger(site.files.ledger).replay()  # chain, signatures, epsilons
        ours = [e for e in entries if e.run_id == run_id]
        assert sorted(e.round for e in ours if e.kind == TRAIN) == [1, 2, 3, 4], name
        assert [e.kind for e in ours].count(COUNT) == 1, name  # the count reused on resume
        epsilon = spent(entries, 1e-5, "rdp", run_id).epsilon()
        assert 0 < epsilon <= 1.0, (name, epsilon)
        assert resumed.metrics["rounds"][-1]["epsilon"][name] == pytest.approx(epsilon)


@pytest.mark.slow
def test_a_resumed_run_asking_a_larger_target_is_refused_by_the_sites_policies(
    resumed: Resumed,
) -> None:
    refused = resumed.refused
    assert refused.returncode == 0, refused.output[-3000:]  # the run stops, it does not fail
    reason = "target-epsilon 20.0 is above the site's max-epsilon 10.0"
    assert refused.output.count(reason) >= len(MEMBERS), refused.output[-3000:]
    assert resumed.ledgers_after_refusal == resumed.ledgers_at_crash  # nothing spent


@pytest.fixture(scope="module")
def run(federation: Federation) -> tuple[dict[str, Any], str]:
    """Two rounds over TLS; hospital-d's SuperNode is killed (SIGKILL, with its executor)
    as soon as round 1 is in metrics.json."""
    name = "deployed"
    extra: dict[str, object] = {"round-timeout": ROUND_TIMEOUT}
    config = federation.run_config(name, 2, **extra)
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
    metrics, output = run
    rounds = metrics["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    for entry in rounds:
        assert set(SITES) <= set(entry["sites"]), entry
        assert all(0 < entry["epsilon"][s] <= 1.0 for s in SITES)
        assert entry["refused"] == {}
    assert 0.0 <= metrics["final"]["accuracy"] <= 1.0
    run_id = Attempt(output, 0).run_id
    for name in SITES:  # each site recorded its own spend in its own signed ledger
        entries = PrivacyLedger(federation.sites[name].files.ledger).entries()
        ours = [e for e in entries if e.run_id == run_id]
        assert [e.round for e in ours if e.kind == TRAIN] == [1, 2]
        assert [e.kind for e in ours].count(COUNT) == 1
    # Every message of the run at a site went to one warm worker process (issue 18).
    for name in SITES:
        workers = set(re.findall(rf"task \d+ of run {run_id}: worker (\d+)", federation.log(name)))
        assert len(workers) == 1, (name, workers)
    # The pinned app ran, from a Flower home holding only it.
    pinned = deploy.FabInfo.of(federation.pinned).sha256
    assert [p.name for p in (federation.root / "flwr" / "pinned").iterdir()] == [pinned]


def test_a_killed_site_drops_out_and_the_run_completes(run: tuple[dict[str, Any], str]) -> None:
    metrics, output = run
    first, second = metrics["rounds"]
    assert set(first["sites"]) == {*SITES, DOOMED}
    assert set(second["sites"]) == set(SITES)
    assert DOOMED in second["dropped"]
    assert f"site {DOOMED} dropped out of round 2 (train)" in output


REFUSED = ("intruder", "no-ca", "plaintext")


def start_refused(
    local: LocalFederation, ca: Path, intruder_key: Path, member_key: Path, prefix: list[str]
) -> None:
    """Three SuperNodes that must not get in, started with the federation so they overlap its
    start-up: an unregistered key, no CA (the system's trust store instead), and a plaintext
    client (--insecure; Flower refuses node keys without TLS, so it has none)."""
    assert local.superlink is not None
    address = local.superlink.fleet_address()
    for name, tls in (
        ("intruder", ["--root-certificates", str(ca), "--auth-supernode-private-key"]),
        ("no-ca", ["--auth-supernode-private-key"]),
        ("plaintext", ["--insecure"]),
    ):
        key = intruder_key if name == "intruder" else member_key
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
    gate = [  # the gate's access log (uvicorn's default format; flower-superlink's differs)
        line for line in federation.log("superlink").splitlines() if line.startswith("INFO:  ")
    ]
    fleet = [line for line in gate if "/v1/fleet/" in line]
    assert any(f"{net.ns_ip}:" in line for line in fleet)  # the sites' veth address
    assert not any("127.0.0.1:" in line for line in fleet)  # no fleet call came over loopback


ACTIVATION_REFUSED = "the SuperLink does not activate this node yet"


def _rejoined(process: Process, since: int, timeout: float) -> str:
    """The log ``process`` wrote after byte ``since``, once its SuperNode is activated."""
    deadline = time.monotonic() + timeout
    while "SuperNode ID" not in (text := process.text()[since:]):
        assert process.popen.poll() is None, text[-3000:]
        assert time.monotonic() < deadline, text[-3000:]
        time.sleep(0.5)
    return text


@pytest.mark.slow
def test_a_site_killed_and_started_again_at_once_rejoins(
    federation: Federation, run: tuple[dict[str, Any], str]
) -> None:
    """Issue 18: a SuperNode killed with SIGKILL stays online at the SuperLink until its
    heartbeats lapse (up to 60 s), and Flower's SuperLink refuses to activate an online node:
    fedllm's SuperNode started again at once asks again until it is activated, where Flower's
    exits (code 305)."""
    site = federation.sites[DOOMED]  # killed by the run fixture
    since = len(federation.log(DOOMED))  # every start of the site writes its one log file
    first = federation.local.start_site(site, federation.node_prefix)
    _rejoined(first, since, 150)
    first.kill()
    since = len(first.text())
    again = federation.local.start_site(site, federation.node_prefix)
    try:
        text = _rejoined(again, since, 150)
        assert ACTIVATION_REFUSED in text, text[-3000:]  # it was refused first, then joined
    finally:
        again.kill()
