"""The ``fedllm`` command line: the common journeys of a researcher, an operator, a site."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fedllm.deploy_cli import add_deploy_commands
from fedllm.errors import FedLLMError, PolicyError, SignatureError

if TYPE_CHECKING:
    from fedllm.checkpoint import Checkpoint
    from fedllm.crypto import PublicKey
    from fedllm.privacy.site_report import VerifiedLedger


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedllm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    sim = commands.add_parser(
        "simulate", help="run the Flower App on the simulation engine (virtual sites on Ray)"
    )
    sim.add_argument(
        "-c",
        "--run-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override run-config keys, as `flwr run --run-config`: TOML values, strings "
        'quoted (-c task="mnist" -c target-epsilon=2); repeatable',
    )
    sim.add_argument(
        "--cpus-per-site",
        type=float,
        default=1.0,
        help="CPUs Ray reserves for each virtual site (default 1)",
    )
    sim.add_argument(
        "--ray-address",
        default=os.environ.get("RAY_ADDRESS", ""),
        help="address of an existing Ray cluster (default: start a local one)",
    )
    sim.add_argument("--verbose", action="store_true", help="Flower's debug logging")
    _add_site_commands(commands)
    _add_certs_commands(commands)
    _add_checkpoint_commands(commands)
    add_deploy_commands(commands)
    _add_lm_commands(commands)
    args = parser.parse_args(argv)
    try:
        if args.command == "simulate":
            return _simulate(args)
        return int(args.run(args))
    except FedLLMError as err:
        print(f"fedllm: error: {err}", file=sys.stderr)
        return 2


def _simulate(args: argparse.Namespace) -> int:
    from flwr.common.config import parse_config_args

    from fedllm import simulation
    from fedllm.report import final_table

    overrides = parse_config_args([" ".join(args.run_config)]) if args.run_config else {}
    cfg = simulation.prepare(overrides)
    # Importing opacus adds a root handler, doubling every flwr line; flwr has its own.
    logging.getLogger("flwr").propagate = False
    print(
        f"fedllm: simulating {cfg.num_sites} sites of `{cfg.task}` for "
        f"{cfg.num_server_rounds} rounds; run folder {cfg.out_dir}/{cfg.run_name}",
        flush=True,
    )
    run_dir = simulation.run(
        cfg, simulation.SimulationSettings(args.cpus_per_site, args.ray_address, args.verbose)
    )
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        print(f"fedllm: error: the run ended without {metrics_path}", file=sys.stderr)
        return 1
    metrics = json.loads(metrics_path.read_text())
    print()
    print(final_table(metrics))
    print(f"\nrun folder: {run_dir}  (metrics.json, model.pt, plot.png, report.md)")
    return 0


def _add_lm_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The language-model journey: pretrain a base on public text, sample from a run."""
    pre = commands.add_parser(
        "pretrain", help="train a text task's base model centrally on public text and save it"
    )
    pre.add_argument("--text", type=Path, required=True, help="public plain text to train on")
    pre.add_argument("--out", type=Path, required=True, help="the base checkpoint to write")
    pre.add_argument("--steps", type=int, default=2000)
    pre.add_argument("--batch-size", type=int, default=64)
    pre.add_argument("--learning-rate", type=float, default=1e-2, help="AdamW peak rate")
    pre.add_argument(
        "-c",
        "--run-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="architecture keys, as for `fedllm simulate` (-c lm-layers=4 -c lm-width=128)",
    )
    pre.set_defaults(run=_pretrain)
    gen = commands.add_parser("generate", help="sample text from a trained language model")
    gen.add_argument(
        "--model",
        type=Path,
        required=True,
        help="a run folder (base + merged adapters) or a base .pt",
    )
    gen.add_argument("--prompt", default="", help="text to continue")
    gen.add_argument("--tokens", type=int, default=300, help="bytes to sample")
    gen.add_argument("--temperature", type=float, default=0.8)
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(run=_generate)


def _pretrain(args: argparse.Namespace) -> int:
    from flwr.common.config import parse_config_args

    from fedllm.config import RunConfig
    from fedllm.data.text import read_text
    from fedllm.errors import ConfigError
    from fedllm.simulation import default_config
    from fedllm.tasks.text import Pretraining, pretrain

    if args.steps < 1 or args.batch_size < 1 or not args.learning_rate > 0:
        raise ConfigError("--steps, --batch-size and --learning-rate must be > 0")
    if args.out.exists():
        raise ConfigError(f"--out {args.out} exists; choose another path")
    overrides = parse_config_args([" ".join(args.run_config)]) if args.run_config else {}
    cfg = RunConfig.from_flower({**default_config(), **overrides})
    settings = Pretraining(args.steps, args.batch_size, args.learning_rate, cfg.seed)
    note = pretrain(cfg, read_text(args.text), settings, args.out, lambda s: print(s, flush=True))
    from fedllm.tasks.text import file_sha256

    print(f"base model: {args.out} (final training loss {note['final-loss']:.3f})")
    print(
        f"use it with: -c 'task=\"text\"' -c 'base-model=\"{args.out}\"' "
        f"-c 'base-model-sha256=\"{file_sha256(args.out)}\"'"
    )
    return 0


def _generate(args: argparse.Namespace) -> int:
    from fedllm.tasks.text import generate, load_trained

    model, _ = load_trained(args.model)
    print(generate(model, args.prompt, args.tokens, args.temperature, args.seed))
    return 0


def _add_site_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """A site's journeys: set itself up, inspect its ledger, hand its officer a signed report."""
    site = commands.add_parser("site", help="a site's own privacy files").add_subparsers(
        dest="site_command", required=True
    )
    init = site.add_parser(
        "init", help="create DIR/policy.toml and DIR/site-key.pem for a new SuperNode"
    )
    init.add_argument("dir", type=Path, metavar="DIR")
    init.add_argument("--max-epsilon", type=float, default=1.0, help="cumulative, all runs")
    init.add_argument("--delta", type=float, default=1e-5, help="the largest delta a run may use")
    init.add_argument("--min-noise-multiplier", type=float, default=0.0)
    init.add_argument("--max-clip-norm", type=float, default=math.inf)
    init.add_argument("--accountants", default="prv,rdp", help="comma-separated (prv,rdp)")
    init.set_defaults(run=_site_init)

    ledger = commands.add_parser("ledger", help="check a site's privacy ledger").add_subparsers(
        dest="ledger_command", required=True
    )
    for name, run, text in (
        ("show", _ledger_show, "verify, then print every entry and the cumulative epsilon"),
        ("verify", _ledger_verify, "check the hash chain, the signed head and every epsilon"),
    ):
        sub = ledger.add_parser(name, help=text)
        sub.add_argument("path", type=Path, metavar="PATH", help="the ledger (ledger.jsonl)")
        _public_key_option(sub, "the key the head must be signed with")
        sub.set_defaults(run=run)

    report = commands.add_parser(
        "report",
        help="write or verify a site's signed privacy report",
        usage="fedllm report [write] --ledger PATH --key KEY.pem --out FILE "
        "[--format md|html] [--policy policy.toml]\n"
        "       fedllm report verify FILE [--public-key FILE_OR_B64]",
        description="Two forms. `fedllm report --ledger ... --key ... --out FILE` (or "
        "`report write ...`) verifies the ledger and writes a report signed with the site key; "
        "`fedllm report verify FILE` checks a report's signature and replays its embedded ledger.",
    )
    report.add_argument(
        "action", nargs="?", choices=["write", "verify"], default="write", help="default: write"
    )
    report.add_argument("file", nargs="?", type=Path, metavar="FILE", help="report to verify")
    report.add_argument(
        "--ledger", type=Path, metavar="PATH", help="write: the site's ledger.jsonl"
    )
    report.add_argument(
        "--key", type=Path, metavar="KEY.pem", help="write: the site's signing key (PEM)"
    )
    report.add_argument("--out", type=Path, metavar="FILE", help="write: the new report file")
    report.add_argument("--format", choices=["md", "html"], help="default: from --out's suffix")
    report.add_argument(
        "--policy", type=Path, metavar="policy.toml", help="write: the site policy to show"
    )
    _public_key_option(report, "verify: the site's key the report must be signed with")
    report.set_defaults(run=_report, parser=report)


def _public_key_option(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument(
        "--public-key",
        metavar="FILE_OR_B64",
        help=f"{text}: a PEM file or base64 (default: any key, its fingerprint is printed)",
    )


def _public_key(value: str | None) -> PublicKey | None:
    from fedllm.crypto import PublicKey

    if value is None:
        return None
    path = Path(value)
    try:
        return PublicKey.from_text(path.read_text() if path.is_file() else value)
    except (SignatureError, ValueError, UnicodeDecodeError):
        raise SignatureError(
            f"--public-key {value!r} is neither an Ed25519 public key file nor base64 of one"
        ) from None


def _site_init(args: argparse.Namespace) -> int:
    from fedllm.crypto import SiteKey
    from fedllm.privacy import SitePolicy

    folder: Path = args.dir.resolve()
    policy_path, key_path = folder / "policy.toml", folder / "site-key.pem"
    public_path = folder / "site-key.pub"
    if "'" in str(folder) or '"' in str(folder):
        raise PolicyError(
            f"site folder {folder} has a quote in its path: node-config cannot hold it"
        )
    for path in (policy_path, key_path, public_path):
        if path.exists():  # checked first, so a refusal leaves no half-made site behind
            raise PolicyError(f"{path} already exists; not overwriting the site's files")
    policy = SitePolicy(
        max_epsilon=args.max_epsilon,
        delta=args.delta,
        min_noise_multiplier=args.min_noise_multiplier,
        max_clip_norm=args.max_clip_norm,
        accountants=tuple(a.strip() for a in args.accountants.split(",") if a.strip()),
    )
    policy.write(policy_path)
    key = SiteKey.generate(key_path)
    public_path.write_text(key.public.pem())
    config = (
        f"data-path='...' policy-path='{policy_path}' "
        f"ledger-path='{folder / 'ledger.jsonl'}' site-key='{key_path}'"
    )
    print(
        f"fedllm: site files in {folder}: policy.toml, site-key.pem (private: keep it on this "
        "machine), site-key.pub"
    )
    print("\nStart this site's SuperNode with (data-path: where its training data lies):")
    print(f'  --node-config "{config}"')
    print(
        f"\nGive your data-protection officer the public key {public_path.name} "
        f"({key.public.fingerprint}):"
    )
    print(key.public.pem(), end="")
    return 0


def _ledger_show(args: argparse.Namespace) -> int:
    from fedllm.privacy.report_layout import ENTRY_COLUMNS, entry_cells
    from fedllm.privacy.site_report import read_verified

    ledger = read_verified(args.path, _public_key(args.public_key))
    rows = [list(ENTRY_COLUMNS), *(entry_cells(e) for e in ledger.entries)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(ENTRY_COLUMNS))]
    for row in rows:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))
    print(_ledger_summary(args.path, ledger, args.public_key is not None))
    return 0


def _ledger_verify(args: argparse.Namespace) -> int:
    from fedllm.privacy.site_report import read_verified

    ledger = read_verified(args.path, _public_key(args.public_key))
    print("OK: " + _ledger_summary(args.path, ledger, args.public_key is not None))
    return 0


def _ledger_summary(path: Path, ledger: VerifiedLedger, pinned: bool) -> str:
    from fedllm.privacy.report_layout import format_epsilon

    state = ledger.state
    if not state.entries:
        return f"ledger {path}: no entries (cumulative epsilon 0)"
    last = state.entries[-1]
    key = state.public_key.fingerprint if state.public_key else "-"
    eps = format_epsilon(ledger.epsilon)
    text = (
        f"ledger {path}: {len(state.entries)} entries, cumulative epsilon {eps} "
        f"at delta {last.delta:g} ({last.accountant}); head signed by {key}"
        + (" (the given key)" if pinned else ": compare it with the site's fingerprint")
    )
    if state.head_pending:
        text += (
            f"\nnote: entry {last.seq} is not yet covered by the signed head (the site stopped "
            "between writing it and signing the head); its next append signs it"
        )
    return text


def _report(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    if args.action == "verify":
        if args.file is None:
            parser.error("`report verify` needs the report FILE")
        return _report_verify(args.file, args.public_key)
    missing = [f"--{n}" for n in ("ledger", "key", "out") if getattr(args, n) is None]
    if missing:
        parser.error(f"writing a report needs {', '.join(missing)}")
    if args.file is not None:
        parser.error(f"writing a report takes --out, not a FILE ({args.file})")
    return _report_write(args.ledger, args.key, args.out, args.format, args.policy, parser)


def _report_write(
    ledger: Path,
    key_path: Path,
    out: Path,
    fmt: str | None,
    policy_path: Path | None,
    parser: argparse.ArgumentParser,
) -> int:
    from fedllm.crypto import SiteKey
    from fedllm.privacy import SitePolicy
    from fedllm.privacy.site_report import ReportFormat, write_site_report

    formats: dict[str, ReportFormat] = {"md": "md", "markdown": "md", "html": "html", "htm": "html"}
    chosen = formats.get(fmt or out.suffix.lower().lstrip("."))
    if chosen is None:
        parser.error(f"cannot tell the format of {out} from its suffix: give --format md|html")
    key = SiteKey.load(key_path)
    policy = SitePolicy.load(policy_path) if policy_path is not None else None
    write_site_report(ledger, key, out, chosen, policy)
    print(f"fedllm: wrote {out}, signed by {key.public.fingerprint}")
    print(f"verify it with: fedllm report verify {out} --public-key {key.public.text}")
    return 0


def _report_verify(path: Path, public_key: str | None) -> int:
    from fedllm.privacy.report_layout import format_epsilon
    from fedllm.privacy.site_report import verify_site_report

    check = verify_site_report(path, _public_key(public_key))
    print(
        f"OK: report {path} is signed by {check.fingerprint}"
        + (" (the given key)" if public_key else ": compare it with the site's fingerprint")
        + f"; site {check.site}, {check.entries} ledger entries, cumulative epsilon "
        f"{format_epsilon(check.epsilon)} at delta {check.delta:g} ({check.accountant}), replayed"
    )
    return 0


_FLOWER_PORT = 8000  # flower-superlink's default --port (Fleet, Control and Runtime APIs)


def _add_certs_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """An operator's journeys: TLS for the SuperLink, authentication keys for the SuperNodes."""
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
        default=_FLOWER_PORT,
        help=f"the SuperLink's port, for the printed commands (default {_FLOWER_PORT})",
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
    address = _address(args.host[0], args.port)
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
    address = _address(hosts[0] if hosts else "SUPERLINK-HOST", args.port)
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


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _quote(path: Path) -> str:
    import shlex

    return shlex.quote(str(path))


def _add_checkpoint_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The server's per-round checkpoints: what one holds, and its model as a state_dict."""
    ckpt = commands.add_parser(
        "checkpoint", help="inspect a server checkpoint or export its model"
    ).add_subparsers(dest="checkpoint_command", required=True)
    key_help = (
        "key file (64 hex digits); default: $FEDLLM_CHECKPOINT_KEY, else "
        "~/.config/fedllm/checkpoint.key"
    )
    show = ckpt.add_parser("show", help="round, format, privacy spend and config of a checkpoint")
    show.add_argument("path", type=Path, metavar="CKPT", help="a .ckpt file or a run folder")
    show.add_argument("--key", default="", metavar="FILE", help=key_help)
    show.set_defaults(run=_checkpoint_show)
    export = ckpt.add_parser("export", help="the checkpoint's model as a torch state_dict file")
    export.add_argument("path", type=Path, metavar="CKPT", help="a .ckpt file or a run folder")
    export.add_argument("--out", type=Path, required=True, metavar="FILE")
    export.add_argument("--key", default="", metavar="FILE", help=key_help)
    export.set_defaults(run=_checkpoint_export)


def _open_checkpoint(args: argparse.Namespace) -> tuple[Path, Checkpoint]:
    from fedllm.checkpoint import latest_checkpoint, load_checkpoint, read_header
    from fedllm.crypto.seal import SealKey

    path: Path = latest_checkpoint(args.path) if args.path.is_dir() else args.path
    header, _, _ = read_header(path)
    key = SealKey.resolve(args.key, create=False) if header.get("format") == "encrypted" else None
    return path, load_checkpoint(path, key)


def _checkpoint_show(args: argparse.Namespace) -> int:
    from fedllm.checkpoint import read_header

    path, loaded = _open_checkpoint(args)
    header, _, _ = read_header(path)
    print(f"checkpoint {path}: round {loaded.server_round}, {header['format']}")
    if header.get("key-fingerprint"):
        print(f"  key fingerprint {header['key-fingerprint']} (authenticated: yes)")
    print(f"  arrays: {', '.join(f'{k} {list(a.shape)}' for k, a in loaded.arrays.items())}")
    print(f"  privacy spend: {json.dumps(loaded.privacy, sort_keys=True)}")
    print(f"  model: {json.dumps(loaded.model, sort_keys=True)}")
    print(f"  task {loaded.config.get('task')}, seed {loaded.config.get('seed')}")
    return 0


def _checkpoint_export(args: argparse.Namespace) -> int:
    import torch

    from fedllm.errors import CheckpointError

    path, loaded = _open_checkpoint(args)
    if args.out.exists():
        raise CheckpointError(f"{args.out} already exists; not overwriting it")
    torch.save(loaded.arrays.to_torch_state_dict(), args.out)
    print(f"fedllm: round {loaded.server_round} model of {path} written to {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
