"""The operator's journeys: ``fedllm certs init|add-site|check``, TLS for the SuperLink and
authentication keys for the SuperNodes, with the commands that start them printed."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from fedllm.deploy.settings import SUPERLINK_PORT, host_port


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    certs = commands.add_parser(
        "certs", help="TLS certificates and SuperNode authentication keys for a deployment"
    ).add_subparsers(dest="certs_command", required=True)
    init = certs.add_parser(
        "init",
        help="create DIR/ca.{crt,key}, DIR/superlink.{crt,key} and DIR/nodes/<site>.{key,pub}",
    )
    init.add_argument("dir", type=Path, metavar="DIR")
    init.add_argument(
        "--host",
        action="append",
        required=True,
        help="a DNS name or IP address SuperNodes dial to reach the SuperLink; repeatable",
    )
    init.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    init.add_argument(
        "--site", action="append", default=[], help="a site to make a key pair for; repeatable"
    )
    _port_option(init)
    init.set_defaults(run=_certs_init)
    add = certs.add_parser("add-site", help="a new SuperNode key pair DIR/nodes/NAME.{key,pub}")
    add.add_argument("dir", type=Path, metavar="DIR", help="a folder made by `fedllm certs init`")
    add.add_argument("name", metavar="NAME")
    _port_option(add)
    add.set_defaults(run=_certs_add_site)
    check = certs.add_parser(
        "check", help="check expiry, the chain, host names and key files; exit 2 if wrong"
    )
    check.add_argument("dir", type=Path, metavar="DIR")
    check.add_argument(
        "--host", action="append", default=[], help="a host the certificate must name; repeatable"
    )
    check.set_defaults(run=_certs_check)


def _port_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port",
        type=int,
        default=SUPERLINK_PORT,
        help=f"the SuperLink's port, for the printed commands (default {SUPERLINK_PORT})",
    )


def _certs_init(args: argparse.Namespace) -> int:
    from fedllm.crypto import create_deployment

    folder: Path = args.dir.resolve()
    # The SuperLink's own SuperExec (default --isolation subprocess) dials 127.0.0.1:PORT and
    # verifies this certificate, so without 127.0.0.1 no ServerApp could start.
    loopback = "127.0.0.1"
    hosts = args.host if loopback in args.host else [*args.host, loopback]
    made = create_deployment(folder, hosts, args.site, args.days)
    print(f"fedllm: certificates in {folder}, valid for {args.days} days:")
    print("  ca.crt         the CA: give it to every site and to the Flower CLI")
    print("  ca.key         private: signs certificates; keep it offline, off the SuperLink")
    print(f"  superlink.crt  the SuperLink's TLS certificate for {', '.join(hosts)}")
    if hosts is not args.host:
        print(
            f"                 ({loopback} added: the SuperLink's own SuperExec connects to "
            f"{loopback}:{args.port} and verifies it)"
        )
    print("  superlink.key  private: copy it to the SuperLink machine only")
    for node in made.nodes:
        print(f"  nodes/{node.site}.pub, .key  {node.fingerprint}; the .key to that site only")
    q = _quote
    print(
        "\nStart the SuperLink in one command (TLS, node authentication, a state database; it "
        "registers every nodes/*.pub and writes the connection below):"
    )
    print(f"  fedllm superlink start {q(folder)} --state ./superlink-state --host 0.0.0.0")
    print("\nOr by hand (add --host 0.0.0.0 to accept SuperNodes from other machines):")
    print(
        f"  flower-superlink --ssl-ca-certfile {q(made.ca.cert)} "
        f"--ssl-certfile {q(made.superlink.cert)} --ssl-keyfile {q(made.superlink.key)} "
        f"--enable-supernode-auth --port {args.port}"
    )
    address = host_port(args.host[0], args.port)
    print("\nPoint the Flower CLI at it, in $FLWR_HOME/config.toml (default ~/.flwr/config.toml):")
    print(f'  [superlink.fedllm]\n  address = "{address}"')
    print(f"  root-certificates = {json.dumps(str(made.ca.cert))}")
    if not made.nodes:
        print("\nNo --site given: add each site with `fedllm certs add-site DIR NAME`.")
    for node in made.nodes:
        _print_node_steps(node.site, node.pub, node.key, made.ca.cert, address)
    return 0


def _certs_add_site(args: argparse.Namespace) -> int:
    from fedllm.crypto import check_certificate, create_node_keys
    from fedllm.errors import CertificateError

    folder: Path = args.dir.resolve()
    ca_cert, server_cert = folder / "ca.crt", folder / "superlink.crt"
    if not ca_cert.is_file():
        raise CertificateError(f"{folder} has no ca.crt; create it first: fedllm certs init")
    hosts = check_certificate(server_cert).sans if server_cert.is_file() else ()
    (node,) = create_node_keys(folder / "nodes", [args.name])
    print(f"fedllm: new SuperNode key pair for {node.site}: {node.pub} ({node.fingerprint})")
    print(f"  {node.key} is private: copy it to that site only")
    address = host_port(hosts[0] if hosts else "SUPERLINK-HOST", args.port)
    _print_node_steps(node.site, node.pub, node.key, ca_cert, address)
    return 0


def _print_node_steps(site: str, pub: Path, key: Path, ca_cert: Path, address: str) -> None:
    q = _quote
    print(f"\nSite {site}: register its public key while the SuperLink runs, then start it:")
    print(f"  flwr supernode register {q(pub)} fedllm")
    print(
        f"  flower-supernode --superlink {address} --root-certificates {q(ca_cert)} "
        f"--auth-supernode-private-key {q(key)}"
    )
    print(
        f"  or: fedllm supernode start --superlink {address} --ca {q(ca_cert)} --key {q(key)} "
        f"--name {site} --data DATA_FILE --site-dir SITE_DIR  (SITE_DIR: `fedllm site init`)"
    )


def _certs_check(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from fedllm.crypto import (
        check_certificate,
        check_chain,
        check_key_matches,
        check_node_public_key,
        check_private_key_mode,
    )

    folder: Path = args.dir.resolve()
    ca_cert, server_cert = folder / "ca.crt", folder / "superlink.crt"
    now = datetime.now(UTC)
    ca = check_certificate(ca_cert, now)
    server = check_chain(server_cert, ca_cert, None, now)
    for host in args.host:
        check_chain(server_cert, ca_cert, host, now)
    for cert, key in ((ca_cert, folder / "ca.key"), (server_cert, folder / "superlink.key")):
        if key.exists():
            check_private_key_mode(key)
            check_key_matches(cert, key)
    nodes = sorted((folder / "nodes").glob("*.pub"))
    fingerprints = [check_node_public_key(pub) for pub in nodes]
    for key in sorted((folder / "nodes").glob("*.key")):
        check_private_key_mode(key)
    for name, info in (("ca.crt", ca), ("superlink.crt", server)):
        left = (info.not_after - now).days
        note = f"  note: renew it, {left} days left" if left < 30 else ""
        print(f"OK {name}: {info.subject}, valid until {info.not_after:%Y-%m-%d}{note}")
    covered = f"; covers {', '.join(args.host)}" if args.host else ""
    if not server.covers("127.0.0.1"):
        covered += (
            "\nnote: superlink.crt does not name 127.0.0.1, which the SuperLink's own SuperExec "
            "dials under --isolation subprocess (the default): use --isolation process"
        )
    print(f"OK chain: superlink.crt is signed by ca.crt, names {', '.join(server.sans)}{covered}")
    for pub, fingerprint in zip(nodes, fingerprints, strict=True):
        print(f"OK nodes/{pub.name}: {fingerprint}")
    return 0


def _quote(path: Path) -> str:
    return shlex.quote(str(path))
