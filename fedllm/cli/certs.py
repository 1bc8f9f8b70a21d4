"""The operator's journeys: ``fedllm certs init|add-site|check``: TLS for the SuperLink, and
the sites' SuperNode public keys (each site makes its own key pair with ``fedllm site init``
and sends only ``node.pub``), with the commands that start them printed."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from fedllm.deploy.settings import SUPERLINK_PORT, host_port


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    certs = commands.add_parser(
        "certs", help="TLS certificates and SuperNode authentication keys for a deployment"
    ).add_subparsers(dest="certs_command", required=True)
    init = certs.add_parser(
        "init",
        help="create DIR/ca.{crt,key}, DIR/superlink.{crt,key} and DIR/nodes/ (sites' public keys)",
    )
    init.add_argument("dir", type=Path, metavar="DIR")
    init.add_argument(
        "--host",
        action="append",
        required=True,
        help="a DNS name or IP address SuperNodes dial to reach the SuperLink; repeatable",
    )
    init.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    _port_option(init)
    init.set_defaults(run=_certs_init)
    add = certs.add_parser(
        "add-site",
        help="file a site's SuperNode public key (the node.pub its `fedllm site init` made) "
        "as DIR/nodes/NAME.pub",
    )
    add.add_argument("dir", type=Path, metavar="DIR", help="a folder made by `fedllm certs init`")
    add.add_argument("name", metavar="NAME", help="the site's name")
    add.add_argument("public_key", type=Path, metavar="NODE.pub", help="the key the site sent")
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
    # flower-superlink listens on 127.0.0.1 behind the gate: the gate, the SuperLink's own
    # SuperExec and the operator's Flower CLI dial it there and verify this certificate.
    loopback = "127.0.0.1"
    hosts = args.host if loopback in args.host else [*args.host, loopback]
    create_deployment(folder, hosts, args.days)
    print(f"fedllm: certificates in {folder}, valid for {args.days} days:")
    print("  ca.crt         the CA: give it to every site and to the Flower CLI")
    print("  ca.key         private: signs certificates; keep it offline, off the SuperLink")
    print(f"  superlink.crt  the SuperLink's TLS certificate for {', '.join(hosts)}")
    if hosts is not args.host:
        print(
            f"                 ({loopback} added: the gate, the SuperLink's own SuperExec and "
            "the Flower CLI dial the SuperLink there)"
        )
    print("  superlink.key  private: copy it to the SuperLink machine only")
    print("  nodes/         the sites' SuperNode public keys (fedllm certs add-site)")
    address = host_port(args.host[0], args.port)
    print(
        "\nEach site makes its own keys (`fedllm site init SITE_DIR`) and sends you only its "
        "node.pub; file it with"
    )
    print(f"  fedllm certs add-site {_quote(folder)} SITE_NAME node.pub")
    print(
        "\nThen start the SuperLink in one command (TLS, node authentication, a state "
        "database; it registers every nodes/*.pub and writes the Flower CLI's connection):"
    )
    print(f"  fedllm superlink start {_quote(folder)} --state ./superlink-state --host 0.0.0.0")
    print(f"\nSites dial {address} and verify it with ca.crt (deploy/README.md, step 3).")
    return 0


def _certs_add_site(args: argparse.Namespace) -> int:
    from fedllm.crypto import add_node_public_key, check_certificate
    from fedllm.errors import CertificateError

    folder: Path = args.dir.resolve()
    ca_cert, server_cert = folder / "ca.crt", folder / "superlink.crt"
    if not ca_cert.is_file():
        raise CertificateError(f"{folder} has no ca.crt; create it first: fedllm certs init")
    hosts = check_certificate(server_cert).sans if server_cert.is_file() else ()
    node = add_node_public_key(folder, args.name, args.public_key)
    print(f"fedllm: site {node.site}'s SuperNode key filed as {node.pub} ({node.fingerprint})")
    print("  compare the fingerprint with the one the site printed (fedllm site init)")
    address = host_port(hosts[0] if hosts else "SUPERLINK-HOST", args.port)
    q = _quote
    print("\n`fedllm superlink start` registers it at start; while the SuperLink runs:")
    print(f"  flwr supernode register {q(node.pub)} fedllm")
    print(f"\nSite {node.site} then starts its SuperNode with its own files:")
    print(
        f"  fedllm supernode start --superlink {address} --ca ca.crt --site-dir SITE_DIR "
        f"--data DATA_FILE --name {node.site}"
    )
    return 0


def _certs_check(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from fedllm.crypto import (
        check_certificate,
        check_chain,
        check_key_matches,
        check_node_public_key,
        check_private_key_mode,
    )
    from fedllm.errors import CertificateError

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
    stray = sorted((folder / "nodes").glob("*.key"))
    if stray:
        raise CertificateError(
            f"{stray[0]} is a site's private key in the operator's folder: the site makes its "
            "own (`fedllm site init`) and sends node.pub (`fedllm certs add-site`); delete it"
        )
    for name, info in (("ca.crt", ca), ("superlink.crt", server)):
        left = (info.not_after - now).days
        note = f"  note: renew it, {left} days left" if left < 30 else ""
        print(f"OK {name}: {info.subject}, valid until {info.not_after:%Y-%m-%d}{note}")
    covered = f"; covers {', '.join(args.host)}" if args.host else ""
    if not server.covers("127.0.0.1"):
        raise CertificateError(
            f"{server_cert} does not name 127.0.0.1, where the gate, the SuperLink's own "
            "SuperExec and the Flower CLI dial the SuperLink (`fedllm superlink start` refuses "
            "it); recreate it with `fedllm certs init`, which adds it"
        )
    print(f"OK chain: superlink.crt is signed by ca.crt, names {', '.join(server.sans)}{covered}")
    for pub, fingerprint in zip(nodes, fingerprints, strict=True):
        print(f"OK nodes/{pub.name}: {fingerprint}")
    return 0


def _quote(path: Path) -> str:
    return shlex.quote(str(path))
