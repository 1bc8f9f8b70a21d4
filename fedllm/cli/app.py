"""The operator's (or the app publisher's) side of app pinning: ``fedllm app digest`` prints
the digest of the FAB ``flwr run`` would send, ``fedllm app keygen`` makes a publisher key
pair and ``fedllm app sign`` signs a FAB's digest (Flower's signature format), for the sites
to review and trust (``fedllm site trust``)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    app = commands.add_parser(
        "app", help="the app's digest and signature, for the sites to pin"
    ).add_subparsers(dest="app_command", required=True)
    digest = app.add_parser(
        "digest", help="build the FAB `flwr run APP` sends and print its SHA-256 digest"
    )
    _source(digest)
    digest.add_argument("--out", type=Path, metavar="FILE.fab", help="also write the FAB here")
    digest.set_defaults(run=_digest)

    keygen = app.add_parser(
        "keygen", help="a publisher's Ed25519 key pair: KEY (OpenSSH, 0600) and KEY.pub"
    )
    keygen.add_argument("key", type=Path, metavar="KEY")
    keygen.add_argument("--name", required=True, help="the publisher's name (the key's comment)")
    keygen.set_defaults(run=_keygen)

    sign = app.add_parser(
        "sign", help="sign the FAB's digest with a publisher key (Flower's signature format)"
    )
    _source(sign)
    sign.add_argument("--key", type=Path, required=True, help="the publisher's private key")
    sign.add_argument("--publisher", help="the publisher's name (default: the key's .pub comment)")
    sign.add_argument(
        "--out", type=Path, metavar="FILE", help="default: <publisher>.<app>.<version>.sig.json"
    )
    sign.set_defaults(run=_sign)


def _source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "app", nargs="?", type=Path, default=Path("."), metavar="APP", help="default: ."
    )
    parser.add_argument("--fab", type=Path, metavar="FILE.fab", help="a built FAB instead of APP")


def _fab(args: argparse.Namespace) -> bytes:
    from fedllm.deploy import build_fab
    from fedllm.errors import ConfigError

    if args.fab is not None:
        if not args.fab.is_file():
            raise ConfigError(f"FAB {args.fab} does not exist")
        return bytes(args.fab.read_bytes())
    return build_fab(args.app.resolve())


def _digest(args: argparse.Namespace) -> int:
    from fedllm.deploy import FabInfo

    content = _fab(args)
    fab = FabInfo.of(content)
    if args.out is not None:
        args.out.write_bytes(content)
    print(f"sha256 {fab.sha256}  {fab.app} {fab.version}  ({fab.size:,} bytes)")
    if args.out is not None:
        print(f"FAB written to {args.out}")
    print("\nEach site reviews it, then pins it (every upgrade is the same explicit step):")
    print(f"  fedllm site trust SITE_DIR --sha256 {fab.sha256}")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from fedllm.crypto import generate_publisher_key

    key = generate_publisher_key(args.key, args.name)
    print(
        f"fedllm: publisher key {args.key} (private, 0600) and {args.key}.pub ({key.fingerprint})"
    )
    print("\nSites trust it with:")
    print(f"  fedllm site publisher SITE_DIR {args.name} {shlex.quote(f'{args.key}.pub')}")
    print(f"\nThe same line works in flower-supernode --trusted-entities:\n  {key.line}")
    return 0


def _sign(args: argparse.Namespace) -> int:
    from fedllm.crypto import sign_digest
    from fedllm.deploy import FabInfo

    fab = FabInfo.of(_fab(args))
    publisher = args.publisher or _comment(args.key.with_name(args.key.name + ".pub"))
    signed = sign_digest(args.key, fab.sha256, fab.app, fab.version, publisher)
    name = f"{publisher}.{fab.app.lstrip('@').replace('/', '.')}.{fab.version}.sig.json"
    out: Path = args.out or Path(name)
    out.write_text(signed.dumps())
    print(f"fedllm: {out}: {fab.app} {fab.version} (sha256 {fab.sha256}) signed by {publisher}")
    print("\nEach site that trusts this publisher pins it with:")
    print(f"  fedllm site trust SITE_DIR --signature {shlex.quote(str(out))}")
    return 0


def _comment(public: Path) -> str:
    parts = public.read_text().split() if public.is_file() else []
    return parts[2] if len(parts) > 2 else "publisher"
