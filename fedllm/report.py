"""What a person looks at after a run: the final table, the plot, a short report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedllm.metrics import FEATURE_STATISTICS, RELEASES

NOT_PRIVATE = (
    "NOT PRIVATE: reproducible-noise was on, so the sites' DP noise and batch sampling were "
    "derived from the run's public seed; whoever knows the run config can regenerate the noise "
    "and subtract it. The epsilons below do not hold against the coordinator."
)


def final_table(metrics: dict[str, Any]) -> str:
    """Final accuracy, AUC and cumulative epsilon per site, as a plain-text table."""
    final = metrics["final"]
    dp = metrics["config"].get("dp", True)
    warning = [NOT_PRIVATE, ""] if dp and metrics["config"].get("reproducible-noise") else []
    lines = [
        *warning,
        f"accuracy {_fmt(final.get('accuracy'))}   auc {_fmt(final.get('auc'))}   "
        f"loss {_fmt(final.get('loss'))}   (central held-out set, "
        f"{final.get('rounds-completed', 0)} rounds)",
        "",
        f"{'site':<16}{'epsilon (cumulative)':>22}{'target':>10}{'delta':>10}",
    ]
    target = metrics["config"].get("target-epsilon")
    for site, eps in final.get("epsilon-per-site", {}).items():
        shown = _fmt(eps) if dp else "no DP"
        lines.append(
            f"{site:<16}{shown:>22}{_fmt(target) if dp else '-':>10}"
            f"{_fmt(final.get('delta')) if dp else '-':>10}"
        )
    if metrics["config"].get("client-dp"):
        lines += [
            "",
            f"{'site-level (client DP)':<24}{_fmt(final.get('client-epsilon')):>14}"
            f"{_fmt(metrics['config'].get('client-epsilon')):>10}"
            f"{_fmt(final.get('client-delta')):>10}",
        ]
    refused = {s: r for entry in metrics["rounds"] for s, r in entry.get("refused", {}).items()}
    stopped = final.get("stopped")
    if stopped:
        refused.update(stopped["refused"])
        why = "no sampled site could train" if stopped["refused"] else stopped["reason"]
        lines += ["", f"stopped in round {stopped['round']}: {why}"]
    if refused:
        lines += ["", "sites that refused to train (last reason):"]
        lines += [f"  {site} ({r['kind']}): {r['reason']}" for site, r in sorted(refused.items())]
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 else f"{value:.4f}"
    return str(value)


def plot_run(metrics: dict[str, Any], path: Path) -> None:
    """Accuracy (central and federated) and cumulative epsilon per site, round by round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rounds = [r["round"] for r in metrics["rounds"]]
    fig, (ax_acc, ax_eps) = plt.subplots(1, 2, figsize=(11, 4))
    initial = metrics.get("initial", {}).get("accuracy")
    central = [r.get("accuracy") for r in metrics["rounds"]]
    if initial is not None:
        ax_acc.plot([0, *rounds], [initial, *central], "o-", label="central held-out set")
    else:
        ax_acc.plot(rounds, central, "o-", label="central held-out set")
    if any("federated-accuracy" in r for r in metrics["rounds"]):
        ax_acc.plot(
            rounds,
            [r.get("federated-accuracy") for r in metrics["rounds"]],
            "s--",
            label="federated (sites' own test rows)",
        )
    ax_acc.set(xlabel="round", ylabel="accuracy", title="Global model accuracy", ylim=(0, 1.01))
    ax_acc.grid(alpha=0.3)
    ax_acc.legend()
    sites = sorted({s for r in metrics["rounds"] for s in r.get("epsilon", {})})
    for site in sites:
        ax_eps.plot(
            rounds, [r.get("epsilon", {}).get(site) for r in metrics["rounds"]], "o-", label=site
        )
    target = metrics["config"].get("target-epsilon")
    if metrics["config"].get("dp", True) and target is not None:
        ax_eps.axhline(target, color="red", ls=":", label=f"target {target}")
    ax_eps.set(
        xlabel="round",
        ylabel="epsilon (cumulative)",
        title=f"Privacy spent per site (delta {metrics['final'].get('delta')})",
    )
    ax_eps.grid(alpha=0.3)
    if sites:
        ax_eps.legend(fontsize=8)
    for ax in (ax_acc, ax_eps):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_eps.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# Where a task-decided local-training value came from (metrics.json `config-sources`).
_SOURCE_NOTE = {
    "user": " (set by the user)",
    "task": " (task default)",
    "global": " (global default)",
}


def write_report(metrics: dict[str, Any], path: Path) -> None:
    """A Markdown summary: configuration (with where each local-training value came from),
    final table, privacy statement."""
    cfg = metrics["config"]
    sources: dict[str, str] = metrics.get("config-sources", {})
    privacy = (
        f"Record-level ({cfg['target-epsilon']}, {cfg['target-delta']})-DP target per site over "
        f"the whole run, DP-SGD (Opacus) with clip norm {cfg['max-grad-norm']}, noise calibrated "
        f"for {cfg['num-server-rounds']} rounds, accountant `{cfg['accountant']}`. The epsilons "
        "below are cumulative, computed by the accountant from the steps each site took."
        if cfg.get("dp", True)
        else "DP is off: no privacy guarantee (baseline run)."
    )
    if cfg.get("client-dp"):
        split = (
            "the secure-aggregation threshold (no sum of fewer sites can be unmasked)"
            if cfg.get("secagg", True)
            else "one (without secure aggregation the server sees each update)"
        )
        privacy += (
            f" Site-level (client) DP: ({cfg['client-epsilon']}, {cfg['client-delta']})-DP "
            f"target for a whole site's participation (adjacency: one site added or removed), "
            f"over the released sums of every round: each site's update clipped to L2 norm "
            f"{cfg['client-clip']} and Gaussian noise added at the sites before masking, split "
            f"by the fewest sites a released sum can hold, {split}, so dropouts only add noise; "
            "accounted per round at the noise actually summed; sites weighted equally."
        )
    unit = _privacy_unit(cfg)
    if unit:
        privacy += f" The unit of privacy is {unit}."
    if cfg.get("feature-scaling") == "site" and _fits_scaling(cfg):
        privacy += (
            " Features were standardized with class-balanced statistics of each site's own "
            "training rows, which never left the site; the epsilon covers DP-SGD on the scaled "
            "rows, not the records' influence on those statistics."
        )
    released = metrics.get(RELEASES, {}).get(FEATURE_STATISTICS)
    if cfg.get("feature-scaling") == "federated":
        who = ", ".join(released) if released else "the sites whose policies allowed it"
        privacy += (
            f" Feature scaling was federated: {who} released the count, sum and sum of "
            "squares of each feature over its training rows, once, under its policy's "
            "allow-feature-statistics; these aggregate statistics are not covered by the "
            "epsilon above."
        )
    privacy += "\n\n" + releases_statement(cfg)
    final = metrics["final"]
    if final.get("update-bytes"):
        privacy += (
            f"\n\nEach site sent {final['update-bytes']:,} bytes of parameters per round "
            f"(the whole model: {final['model-bytes']:,} bytes)."
        )
    # A run whose noise the coordinator can regenerate says so before anything else.
    warning = (
        [f"**{NOT_PRIVATE}**", ""] if cfg.get("dp", True) and cfg.get("reproducible-noise") else []
    )
    text = [
        *warning,
        f"# fedllm run: {cfg['task']}",
        "",
        privacy,
        "",
        "```",
        final_table(metrics),
        "```",
        "",
        "![accuracy and epsilon per round](plot.png)",
        "",
        "## Configuration",
        "",
        *[f"- `{k}` = `{v}`{_SOURCE_NOTE.get(sources.get(k, ''), '')}" for k, v in cfg.items()],
        "",
    ]
    path.write_text("\n".join(text))


def releases_statement(cfg: dict[str, Any]) -> str:
    """The adjacency the epsilons are for, and what left the sites besides their DP-SGD
    updates, with how each release is accounted."""
    if not cfg.get("dp", True):
        return (
            "**Adjacency and releases**: none apply without DP. The sites sent their updates, "
            "exact example counts, training losses and evaluations (loss, accuracy) in the "
            "clear, as their policies' allow-non-dp lets them."
        )
    evaluations = int(cfg.get("site-evaluations", 0))
    rounds = int(cfg.get("num-server-rounds", 0))
    if evaluations and float(cfg.get("fraction-evaluate", 1.0)) > 0:
        evaluated = (
            f"the global models of the last {min(evaluations, rounds)} round(s), evaluated on "
            "each site's test rows, each evaluation released as two noised sums (the examples' "
            f"accuracies and their count; Gaussian noise of multiplier {cfg['evaluation-noise']} "
            "at sensitivity sqrt 2) and charged to the site's ledger, within its policy's "
            "max-evaluations"
        )
    else:
        evaluated = (
            "no evaluation at the sites (`site-evaluations` = 0): the accuracy above is the "
            "server's own held-out set"
        )
    return (
        "**Adjacency**: add/remove-one record (a site's data with one record more or fewer); "
        "every figure below is for that relation. **Released besides DP-SGD**, each a Gaussian "
        "mechanism composed into the same cumulative epsilon by the same accountant: each "
        f"site's example count, once per run, with noise of std {cfg['count-noise']} (its "
        "sampling rate, steps and normalizer, and its weight in the averaging, are derived "
        f"from that noised count, never from the exact one); {evaluated}. No training loss "
        "was sent."
    )


def _privacy_unit(cfg: dict[str, Any]) -> str:
    from fedllm.config import RunConfig
    from fedllm.errors import FedLLMError
    from fedllm.tasks import get_task

    try:
        return get_task(str(cfg.get("task"))).privacy_unit(RunConfig.from_flower(cfg))
    except FedLLMError:  # a report of an older or foreign run: say nothing rather than guess
        return ""


def _fits_scaling(cfg: dict[str, Any]) -> bool:
    """Whether the task scales features with statistics fitted on a site's rows."""
    from fedllm.errors import FedLLMError
    from fedllm.tasks import get_task

    try:
        return get_task(str(cfg.get("task"))).preprocess() is not None
    except FedLLMError:
        return cfg.get("task") != "mnist"
