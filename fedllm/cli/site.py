"""A site's journeys: ``fedllm site init`` (its policy and signing key), ``fedllm ledger
show|verify`` (its privacy ledger) and ``fedllm report`` (a signed report for its
data-protection officer, and the officer's check of it)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

from fedllm.errors import PolicyError, SignatureError

if TYPE_CHECKING:
    from fedllm.crypto import PublicKey
    from fedllm.privacy.site_report import VerifiedLedger


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
