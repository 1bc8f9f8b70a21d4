"""``fedllm audit``: a site's privacy officer measures how much a run really leaks.

Runs the Flower App on the simulation engine (as ``fedllm simulate``, same ``-c`` run config)
with canaries planted at one site, attacks the result and prints, for that site, the epsilon
the run reports beside the lower bound each attack proves (one-run auditing: Steinke, Nasr,
Jagielski 2023, and where the site's releases are Gaussian without subsampling the tighter
f-DP analysis of Mahloujifar, Melis, Chaudhuri 2024; the stronger is the headline). Writes
``audit.json`` and ``audit.png``; exits 3 when a bound exceeds the reported epsilon where the
guarantee claims to hold (the implementation is broken).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from fedllm.cli.overrides import add_run_config_option, parse_overrides

VIOLATION_EXIT = 3


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = commands.add_parser(
        "audit",
        help="measure a lower bound on a site's epsilon with canaries, beside the reported one",
    )
    add_run_config_option(audit, "override run-config keys, as with `fedllm simulate` (repeatable)")
    audit.add_argument(
        "--canaries", type=int, default=1000, help="canaries of each kind (default 1000)"
    )
    audit.add_argument(
        "--attackers",
        default="black-box,coordinator,seed-knowing",
        help="comma-separated: black-box, coordinator, seed-knowing (default: all three)",
    )
    audit.add_argument("--site", type=int, default=0, help="index of the audited site (default 0)")
    audit.add_argument(
        "--confidence", type=float, default=0.95, help="of the lower bound (default 0.95)"
    )
    audit.add_argument("--cpus-per-site", type=float, default=1.0, help="as `fedllm simulate`")
    audit.set_defaults(run=_audit)


def _audit(args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.run_config)

    from fedllm import simulation
    from fedllm.audit.run import AuditPlan, finish, prepare_audit

    plan = AuditPlan(
        canaries=args.canaries,
        attackers=tuple(a.strip() for a in args.attackers.split(",") if a.strip()),
        site_index=args.site,
        confidence=args.confidence,
    )
    prepared = prepare_audit(overrides, plan)
    logging.getLogger("flwr").propagate = False
    cfg = prepared.cfg
    print(
        f"fedllm: auditing site {plan.site_index} of {cfg.num_sites} (`{cfg.task}`, "
        f"{cfg.num_server_rounds} rounds) with {plan.canaries} canaries of each kind; "
        f"audit folder {prepared.folder}",
        flush=True,
    )
    simulation.run(cfg, simulation.SimulationSettings(args.cpus_per_site))
    result = finish(prepared)
    print()
    print(summary(result))
    print(f"\naudit folder: {prepared.folder}  (audit.json, audit.png, run/)")
    if result["violations"]:
        print(
            f"fedllm: error: the lower bound of {', '.join(result['violations'])} exceeds the "
            "reported epsilon: this run does not meet the guarantee it reports",
            file=sys.stderr,
        )
        return VIOLATION_EXIT
    return 0


def summary(result: dict[str, Any]) -> str:
    """The privacy officer's lines: reported epsilon, each attack's bound under each analysis
    (the headline marked), the strongest and which analysis gave it."""
    reported = result["reported-epsilon"]
    shown = "none (dp = false)" if reported is None else f"{reported:.3f}"
    lines = [
        f"{result['site']}: reported epsilon {shown} (delta {result['delta']:g}); "
        f"lower bounds at {result['confidence']:.0%} confidence over every analysis:",
        "",
        f"{'attacker':<14}{'analysis':<10}{'canaries':>9}{'guesses':>9}{'correct':>9}"
        f"{'epsilon >=':>12}{'ceiling':>9}",
    ]
    for name, row in result["attackers"].items():
        flag = "  ABOVE REPORTED" if row["exceeds-reported"] else ""
        for kind, a in row["analyses"].items():
            mark = "*" if kind == row["analysis"] else " "
            lines.append(
                f"{name:<14}{kind + mark:<10}{row['canaries']:>9}{a['guesses']:>9}"
                f"{a['correct']:>9}{a['epsilon-lower-bound']:>12.3f}{a['ceiling']:>9.2f}"
                + (flag if kind == row["analysis"] else "")
            )
    best = result["strongest"]
    fdp = result.get("f-dp", {})
    lines.append(
        "(*: the headline analysis; ceiling: the bound had every guess been right, the most "
        "these canaries can show)"
    )
    if fdp.get("applies", False):
        lines.append(f"(f-dp against {fdp['family']}: {fdp['why']})")
    else:
        lines.append(f"(f-dp not run: {fdp.get('why', 'no ledger')})")
    lines.append("")
    lines.append(
        f"reported epsilon {shown}; the strongest attack we ran ({best['attacker']}) shows at "
        f"least {best['epsilon-lower-bound']:.3f} ({best['analysis']} analysis)"
    )
    if result["reproducible-noise"]:
        lines.append(
            "(reproducible-noise: the noise derives from the public seed, so the run is not "
            "private and the seed-knowing attacker may exceed the reported epsilon)"
        )
    return "\n".join(lines)
