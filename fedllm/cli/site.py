"""A site's journeys: ``fedllm site init`` (its policy and keys, made here),
``fedllm site trust|untrust|publisher|apps`` (the apps it runs), ``fedllm ledger show|verify``
(its privacy ledger) and ``fedllm report`` (a signed report for its data-protection officer,
and the officer's check of it)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

from fedllm.errors import SignatureError

if TYPE_CHECKING:
    from fedllm.crypto import PublicKey
    from fedllm.deploy import TrustedApps
    from fedllm.privacy.site_report import VerifiedLedger


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    site = commands.add_parser("site", help="a site's own privacy files").add_subparsers(
        dest="site_command", required=True
    )
    init = site.add_parser(
        "init",
        help="create a new site's files in DIR: policy, signing key, SuperNode key pair, "
        "SuperExec secret, trusted apps (none yet)",
    )
    init.add_argument("dir", type=Path, metavar="DIR")
    init.add_argument("--max-epsilon", type=float, default=1.0, help="cumulative, all runs")
    init.add_argument("--delta", type=float, default=1e-5, help="the largest delta a run may use")
    init.add_argument("--min-noise-multiplier", type=float, default=0.0)
    init.add_argument("--max-clip-norm", type=float, default=math.inf)
    init.add_argument("--accountants", default="prv,rdp", help="comma-separated (prv,rdp)")
    init.add_argument(
        "--allow-feature-statistics",
        action="store_true",
        help="send per-feature count, sum and sum of squares for federated scaling (not DP; "
        "default: refused)",
    )
    init.add_argument(
        "--max-evaluations",
        type=int,
        default=0,
        help="noised evaluations of global models one DP run may ask for, each charged to the "
        "ledger (default 0: none)",
    )
    init.add_argument(
        "--max-federation-size",
        type=int,
        default=10,
        help="client-level DP: the most sites this site splits its noise among (default 10)",
    )
    init.set_defaults(run=_site_init)

    trust = site.add_parser(
        "trust",
        help="pin an app (a FAB digest) this site will run; every other app is refused",
        description="Pin one app. Give its digest as you reviewed it: --sha256 (what the "
        "operator's `fedllm app digest` printed), --app (build the FAB from a source folder "
        "you reviewed), --fab (a FAB file) or --signature (a publisher's signature; trust the "
        "publisher first with `fedllm site publisher`).",
    )
    trust.add_argument("dir", type=Path, metavar="DIR", help="the site's folder")
    source = trust.add_mutually_exclusive_group(required=True)
    source.add_argument("--sha256", metavar="DIGEST", help="the FAB's SHA-256 digest")
    source.add_argument("--app", type=Path, metavar="APP_DIR", help="a Flower App's folder")
    source.add_argument("--fab", type=Path, metavar="FILE.fab", help="a built FAB")
    source.add_argument(
        "--signature", type=Path, metavar="FILE", help="a publisher's signature (fedllm app sign)"
    )
    trust.set_defaults(run=_site_trust)

    untrust = site.add_parser("untrust", help="unpin an app: its runs are refused from now on")
    untrust.add_argument("dir", type=Path, metavar="DIR", help="the site's folder")
    untrust.add_argument("sha256", metavar="DIGEST")
    untrust.set_defaults(run=_site_untrust)

    publisher = site.add_parser(
        "publisher",
        help="trust a publisher's Ed25519 key for `fedllm site trust --signature`",
    )
    publisher.add_argument("dir", type=Path, metavar="DIR", help="the site's folder")
    publisher.add_argument("name", metavar="NAME")
    publisher.add_argument("key", type=Path, metavar="KEY.pub", help="OpenSSH ssh-ed25519 line")
    publisher.set_defaults(run=_site_publisher)

    apps = site.add_parser("apps", help="list the apps and publishers this site trusts")
    apps.add_argument("dir", type=Path, metavar="DIR", help="the site's folder")
    apps.set_defaults(run=_site_apps)

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
    from fedllm.deploy import init_site
    from fedllm.privacy import SitePolicy

    folder: Path = args.dir.resolve()
    policy = SitePolicy(
        max_epsilon=args.max_epsilon,
        delta=args.delta,
        min_noise_multiplier=args.min_noise_multiplier,
        max_clip_norm=args.max_clip_norm,
        accountants=tuple(a.strip() for a in args.accountants.split(",") if a.strip()),
        allow_feature_statistics=args.allow_feature_statistics,
        max_evaluations=args.max_evaluations,
        max_federation_size=args.max_federation_size,
    )
    made = init_site(folder, policy)
    files, q = made.files, _quote
    print(f"fedllm: site files in {folder}:")
    print("  policy.toml        the weakest privacy this site trains under, and what it releases")
    print(
        f"                     besides DP updates: feature statistics "
        f"{'allowed' if policy.allow_feature_statistics else 'refused'}, "
        f"{policy.max_evaluations} noised evaluation(s) per run"
    )
    print("  site-key.pem/.pub  signs the ledger and reports (private key: 0600, stays here)")
    print("  node.key/.pub      the SuperNode's key (private key: 0600, never leaves this machine)")
    print("  superexec.secret   shared by the SuperNode and its executor (0600)")
    print("  trusted-apps.toml  the apps this site runs: none yet")
    print(f"\nSend the operator only node.pub ({made.node.fingerprint}):")
    print(f"  {files.node_pub.read_text().strip()}")
    print("They file it with: fedllm certs add-site PKI_DIR SITE_NAME node.pub")
    print("\nPin the app after review (the digest the operator's `fedllm app digest` printed):")
    print(f"  fedllm site trust {q(folder)} --sha256 DIGEST")
    print(
        "\nStart the SuperNode: fedllm supernode start --superlink HOST:PORT --ca ca.crt "
        f"--site-dir {q(folder)} --data DATA_FILE --name SITE_NAME"
    )
    print(
        f"\nGive your data-protection officer the public key {files.site_key_pub.name} "
        f"({made.site_key.public.fingerprint}):"
    )
    print(made.site_key.public.pem(), end="")
    return 0


def _trusted(folder: Path) -> tuple[Path, TrustedApps]:
    from fedllm.deploy import SiteFiles, TrustedApps

    path = SiteFiles(folder.resolve()).trusted_apps
    return path, TrustedApps.load(path)


def _site_trust(args: argparse.Namespace) -> int:
    from fedllm.crypto import AppSignature
    from fedllm.deploy import FabInfo, build_fab
    from fedllm.deploy.pinning import trusted_app
    from fedllm.errors import ConfigError

    path, trusted = _trusted(args.dir)
    if args.signature is not None:
        signed = AppSignature.load(args.signature)
        key = signed.verify()
        name = trusted.publisher_of(key)
        if name is None:
            raise SignatureError(
                f"{args.signature} is signed by {key.fingerprint} ({signed.publisher}), a key "
                f"this site does not trust: add it first with `fedllm site publisher {args.dir} "
                "NAME KEY.pub` (after checking its fingerprint with the publisher)"
            )
        fab = FabInfo(signed.sha256, signed.app, signed.version, 0)
        basis = f"signed by publisher {name} ({key.fingerprint}) at {_when(signed.signed_at)}"
    elif args.sha256 is not None:
        from fedllm.crypto.publisher import check_digest

        fab = FabInfo(check_digest(args.sha256), "?", "?", 0)
        basis = "digest given to the site"
    elif args.fab is not None:
        if not args.fab.is_file():
            raise ConfigError(f"FAB {args.fab} does not exist")
        fab = FabInfo.of(args.fab.read_bytes())
        basis = f"FAB file {args.fab.name}"
    else:
        fab = FabInfo.of(build_fab(args.app.resolve()))
        basis = f"built from {args.app.resolve()}"
    app = trusted_app(fab, basis)
    trusted.trust(app).write(path)
    print(f"fedllm: {path}: trusts {app.describe()}")
    print(f"  {len(trusted.trust(app).apps)} app(s) pinned; the next task applies it (no restart)")
    return 0


def _site_untrust(args: argparse.Namespace) -> int:
    path, trusted = _trusted(args.dir)
    after = trusted.untrust(args.sha256)
    after.write(path)
    print(f"fedllm: {path}: no longer runs sha256 {args.sha256}; {len(after.apps)} app(s) left")
    return 0


def _site_publisher(args: argparse.Namespace) -> int:
    from fedllm.crypto import PublisherKey

    path, trusted = _trusted(args.dir)
    key = PublisherKey.load(args.key)
    trusted.with_publisher(args.name, key).write(path)
    print(f"fedllm: {path}: trusts publisher {args.name} ({key.fingerprint}) for signatures")
    print(f"  pin its apps with: fedllm site trust {_quote(args.dir)} --signature FILE")
    return 0


def _site_apps(args: argparse.Namespace) -> int:
    path, trusted = _trusted(args.dir)
    print(f"{path}: {len(trusted.apps)} app(s), {len(trusted.publishers)} publisher(s)")
    for app in trusted.apps:
        print(f"  app {app.describe()}, since {app.trusted_at}")
    for name, key in sorted(trusted.publishers.items()):
        print(f"  publisher {name}: {key.fingerprint}")
    if not trusted.apps:
        print("  every run is refused until an app is pinned (fedllm site trust)")
    return 0


def _when(timestamp: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _quote(path: Path) -> str:
    import shlex

    return shlex.quote(str(path))


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
