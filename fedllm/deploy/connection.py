"""The operator's Flower CLI set-up: the connection entry ``flwr run . NAME`` uses, and the
sites' node keys registered with the SuperLink."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Sequence
from pathlib import Path

from fedllm.crypto import check_node_public_key
from fedllm.errors import ConfigError, DeployError


def write_connection(flwr_home: Path, name: str, address: str, ca: Path) -> Path:
    """Adds or replaces ``[superlink.<name>]`` (address, root-certificates) in
    ``flwr_home/config.toml``, the entry ``flwr run . <name>`` and ``flwr supernode`` use."""
    path = flwr_home / "config.toml"
    flwr_home.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else ""
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path} is not valid TOML: {err}") from None
    entry = (
        f"[superlink.{name}]\naddress = {_toml(address)}\n"
        f"root-certificates = {_toml(str(ca.resolve()))}\n"
    )
    header = f"[superlink.{name}]"
    kept: list[str] = []
    skipping = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            skipping = stripped == header
        if not skipping:
            kept.append(line)
    body = "\n".join(kept).rstrip()
    path.write_text((body + "\n\n" if body else "") + entry)
    return path


def _toml(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def register_nodes(public_keys: Sequence[Path], connection: str) -> list[str]:
    """What ``flwr supernode register KEY.pub CONNECTION`` does, for every key over one
    connection (the CLI takes seconds to start per key): the SuperLink accepts each key's
    owner from now on, under the key file's name. A key already registered is not an error (a
    restarted SuperLink keeps its registrations in its state database). ``$FLWR_HOME`` must
    hold the connection. Returns one line per key."""
    from flwr.cli.flower_config import read_superlink_connection
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.cli.utils import init_http_client_from_connection
    from flwr.proto.control_pb2 import ListNodesRequest, RegisterNodeRequest

    for key in public_keys:
        check_node_public_key(key)
    client = init_http_client_from_connection(read_superlink_connection(connection))
    lines = []
    try:
        known = {
            bytes(node.public_key): node.node_id
            for node in client.ListNodes(ListNodesRequest()).nodes_info
            if node.status != "unregistered"
        }
        for key in public_keys:
            public = try_load_public_key(key)
            if public in known:
                lines.append(f"{key.name}: already registered as SuperNode {known[public]}")
                continue
            request = RegisterNodeRequest(public_key=public, name=key.stem)
            try:
                node_id = client.RegisterNode(request=request).node_id
            except Exception as err:  # Flower's HTTP client raises its own errors
                raise DeployError(f"registering {key} failed: {err}") from None
            lines.append(f"{key.name}: registered as SuperNode {node_id}")
    finally:
        client.close()
    return lines
