"""The gate on the SuperLink's public address passes exactly the Fleet API calls a SuperNode
makes and refuses the Control and Runtime APIs, whatever the path is dressed up as. (The
forwarding itself runs in tests/integration/test_deployment.py: every SuperNode there talks
to the SuperLink through the gate.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from fedllm.crypto import create_deployment
from fedllm.deploy.gate import REFUSED, create_app, is_fleet_call

FLEET_CALLS = [  # every path flwr 1.42's SuperNode posts (flwr/supernode/fleet_http_client.py)
    "register-node",
    "activate-node",
    "deactivate-node",
    "unregister-node",
    "send-node-heartbeat",
    "pull-messages",
    "push-messages",
    "get-run",
    "get-fab",
    "push-object",
    "pull-object",
    "confirm-message-received",
]


def test_every_call_a_supernode_makes_is_a_fleet_call() -> None:
    import inspect

    from flwr.supernode import fleet_http_client

    source = inspect.getsource(fleet_http_client)
    assert sorted(FLEET_CALLS) == sorted(set(_paths(source)))
    assert all(is_fleet_call("POST", f"/v1/fleet/{call}") for call in FLEET_CALLS)


def _paths(source: str) -> list[str]:
    import re

    return re.findall(r'path="/v1/fleet/([a-z-]+)"', source)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/control/start-run"),
        ("POST", "/v1/control/register-node"),
        ("POST", "/v1/control/list-nodes"),
        ("POST", "/v1/runtime/acquire-task"),
        ("GET", "/v1/fleet/pull-messages"),
        ("POST", "/v1/fleet/../control/start-run"),
        ("POST", "/v1/fleet/%2e%2e/control/start-run"),
        ("POST", "/v1/fleet//control/start-run"),
        ("POST", "/v1/fleet/pull-messages/"),
        ("POST", "/docs"),
        ("POST", "/"),
    ],
)
def test_anything_else_is_not_a_fleet_call(method: str, path: str) -> None:
    assert not is_fleet_call(method, path)


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[TestClient]:
    made = create_deployment(tmp_path / "pki", ["localhost"])
    # The upstream is never dialled: every request below is refused first.
    with TestClient(create_app("127.0.0.1:9", made.ca.cert)) as client:
        yield client


@pytest.mark.parametrize(
    "path",
    [
        "/v1/control/start-run",
        "/v1/control/register-node",
        "/v1/runtime/acquire-task",
        "/v1/fleet/../control/start-run",
        "/v1/fleet/%2e%2e/control/start-run",
        "/v1/fleet/pull-messages?x=1",
    ],
)
def test_the_gate_answers_403_to_the_control_and_runtime_apis(gate: TestClient, path: str) -> None:
    answer = gate.post(path, content=b"\x08\x01")
    assert (answer.status_code, answer.text) == (403, REFUSED)


def test_a_fleet_call_goes_to_the_superlink(gate: TestClient) -> None:
    answer = gate.post("/v1/fleet/pull-messages", content=b"")
    assert answer.status_code == 502  # forwarded: nothing listens at the test's upstream
