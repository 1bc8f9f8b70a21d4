"""deploy/compose.yaml and deploy/k8s/*.yaml: they parse, every flag they pass is one the
installed Flower commands (and fedllm's executor and gate) accept, and they start the
SuperLink, its gate, the SuperNodes and their executors with exactly the flags the tested
commands use (fedllm.deploy.settings): the SuperLink on loopback behind the gate, every
executor pinning apps and sharing its SuperNode's SuperExec secret, no site key at the
operator's."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from flwr.common.config import parse_config_args

from fedllm import deploy
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
FILES = [DEPLOY / "compose.yaml", *sorted((DEPLOY / "k8s").glob("*.yaml"))]
EXECUTOR = ("python", "-m", deploy.EXECUTOR_MODULE)
GATE = ("python", "-m", deploy.GATE_MODULE)
SUPERNODE = ("python", "-m", deploy.SUPERNODE_MODULE)  # flower-supernode's flags, fedllm's loop
FEDLLM = (EXECUTOR, GATE, SUPERNODE)


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _commands(path: Path) -> list[list[str]]:
    """Every container's command line (command + args) in a compose file or manifests."""
    found = []
    for doc in _documents(path):
        if "services" in doc:
            containers = list(doc["services"].values())
        else:
            spec = doc.get("spec", {})
            pod = spec.get("template", {}).get("spec", {})
            containers = pod.get("containers", [])
        for container in containers:
            parts = ("entrypoint", "command", "args")  # compose: entrypoint; Kubernetes: args
            command = [part for key in parts for part in container.get(key) or []]
            if command:
                found.append([str(part) for part in command])
    return found


@functools.cache
def _accepted(exe: tuple[str, ...]) -> frozenset[str]:
    """The long options ``exe --help`` lists."""
    if exe == SUPERNODE:  # its own options, then everything flower-supernode takes
        from fedllm.deploy.supernode import parse

        own = frozenset(f"--{dest.replace('_', '-')}" for dest in vars(parse([])[0]))
        return own | _accepted(("flower-supernode",))
    argv = [sys.executable, "-m", exe[2]] if exe in FEDLLM else [deploy.executable(exe[0])]
    done = subprocess.run(
        [*argv, "--help"], capture_output=True, text=True, env=deploy.flower_env(), check=True
    )
    return frozenset(re.findall(r"--[a-z][a-z0-9-]*", done.stdout))


def _flags(command: list[str]) -> list[str]:
    return [part.split("=", 1)[0] for part in command if part.startswith("--")]


def _program(command: list[str]) -> tuple[str, ...]:
    return tuple(command[:3]) if tuple(command[:3]) in FEDLLM else (command[0],)


def _value(command: list[str], flag: str) -> str:
    return next(c.split("=", 1)[1] for c in command if c.startswith(f"{flag}="))


@pytest.mark.slow  # starts the installed Flower commands (--help): ~10 s
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_flag_is_accepted_by_the_installed_command(path: Path) -> None:
    commands = [c for c in _commands(path) if c[0] != "sh"]
    assert commands, f"{path} starts nothing"
    for command in commands:
        program = _program(command)
        unknown = set(_flags(command)) - _accepted(program)
        assert not unknown, f"{path}: {' '.join(program)} does not accept {sorted(unknown)}"


def _settings() -> dict[tuple[str, ...], list[str]]:
    pki, site = Path("/pki"), Path("/site")
    link = deploy.SuperLinkSettings(pki, Path("/state"), "0.0.0.0", 8000, 9093)
    node = deploy.SiteSettings("h:8000", pki / "ca.crt", pki / "n.key", Path("/d"), site, "s")
    return {
        ("flower-superlink",): link.command(),
        GATE: link.gate_command(),
        SUPERNODE: node.command(),
        EXECUTOR: node.executor_command(None),
    }


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_the_same_flags_as_the_tested_commands(path: Path) -> None:
    tested = _settings()
    for command in _commands(path):
        if command[0] == "sh":
            continue
        program = _program(command)
        assert program in tested, command
        assert sorted(_flags(command)) == sorted(_flags(tested[program])), program
        if program == SUPERNODE:
            node_config = next(c for c in command if c.startswith("--node-config="))
            parsed = parse_config_args([node_config.split("=", 1)[1]])
            assert set(parsed) == set(deploy.SiteSettings(
                "h:1", Path("a"), Path("b"), Path("c"), Path("d"), "e"
            ).node_config())  # fmt: skip
            assert all(str(v).startswith("/") for k, v in parsed.items() if k != "site-name")
            assert _value(command, "--isolation") == "process"  # only the executor runs apps
        elif program == EXECUTOR:
            assert _value(command, "--runtime-api-address") == "127.0.0.1:9094"
            assert _value(command, "--trusted-apps") == "/site/trusted-apps.toml"
        elif program == ("flower-superlink",):
            assert _value(command, "--host") == "127.0.0.1"  # its Control API stays inside


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_the_gate_fronts_the_superlink_and_executors_share_their_supernodes_secret(
    path: Path,
) -> None:
    commands = _commands(path)
    links = [c for c in commands if c[0] == "flower-superlink"]
    for gate in (c for c in commands if _program(c) == GATE):
        (link,) = links
        assert _value(gate, "--upstream") == f"127.0.0.1:{_value(link, '--port')}"
        assert _value(gate, "--listen").startswith("0.0.0.0:")
    nodes = [c for c in commands if _program(c) == SUPERNODE]
    executors = [c for c in commands if _program(c) == EXECUTOR]
    assert len(nodes) == len(executors)
    secret = "--superexec-auth-secret-file"
    assert sorted(_value(c, secret) for c in nodes) == sorted(_value(c, secret) for c in executors)


def test_compose_has_a_superlink_behind_its_gate_and_a_supernode_with_an_executor_per_site() -> (
    None
):
    (compose,) = _documents(DEPLOY / "compose.yaml")
    services = compose["services"]
    sites = [n for n, s in services.items() if _program(s.get("command", [""])) == SUPERNODE]
    assert sorted(sites) == ["hospital-a", "hospital-b", "hospital-c"]
    for site in sites:
        assert services[f"{site}-executor"]["network_mode"] == f"service:{site}"
        assert f"{site}-node.key" in services[site]["secrets"]
        assert compose["secrets"][f"{site}-node.key"]["file"] == f"./sites/{site}/node.key"
    assert services["gate"]["network_mode"] == "service:superlink"
    assert services["register"]["network_mode"] == "service:superlink"
    assert services["superlink"]["ports"] == ["8000:8000"]  # the gate's port, nothing else
    assert "superlink-state:/state" in services["superlink"]["volumes"]
    assert set(compose["secrets"]) >= {"ca.crt", "superlink.crt", "superlink.key"}


def test_kubernetes_manifests_have_the_expected_objects() -> None:
    kinds = {p.name: [d["kind"] for d in _documents(p)] for p in FILES[1:]}
    assert {"Deployment", "Service", "PersistentVolumeClaim", "ConfigMap"} <= set(
        kinds["superlink.yaml"]
    )
    (service,) = (
        d for d in _documents(DEPLOY / "k8s" / "superlink.yaml") if d["kind"] == "Service"
    )
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [8000]  # the gate
    sites = [name for name in kinds if name.startswith("site-")]
    assert len(sites) == 3
    for name in sites:
        assert kinds[name].count("PersistentVolumeClaim") == 2 and "Deployment" in kinds[name]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_no_key_material_and_every_secret_has_its_create_command(path: Path) -> None:
    text = path.read_text()
    assert "PRIVATE KEY" not in text and "BEGIN CERTIFICATE" not in text
    assert not re.search(r"pki/nodes/[^ ]*\.key", text)  # sites' keys are made at the sites
    for name in re.findall(r"secretName: ([a-z0-9-]+)", text):
        assert f"kubectl create secret generic {name} " in text, name
