"""How a site's privacy report looks: its run table, entry table, plot, Markdown and HTML.

Only presentation lives here; what a report proves (signature, embedded ledger, replay) is in
:mod:`fedllm.privacy.site_report`.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from fedllm.privacy.budget import history_epsilon
from fedllm.privacy.chain import TRAIN, LedgerEntry
from fedllm.privacy.policy import SitePolicy

BLOCKS = {  # format -> (opening, closing) of the machine-readable block
    "md": ("```json fedllm-ledger\n", "\n```\n"),
    "html": ('<script type="application/json" id="fedllm-ledger">\n', "\n</script>\n"),
}


@dataclass(frozen=True)
class RunSummary:
    """One run's entries in a site's ledger, as the report's run table shows them."""

    run_id: str
    rounds: list[int]
    steps: int
    first: str
    last: str
    epsilon: float  # this run's entries alone, at its last entry's delta and accountant


def sites(entries: list[LedgerEntry]) -> list[str]:
    return list(dict.fromkeys(e.site for e in entries))


def runs(entries: list[LedgerEntry]) -> list[RunSummary]:
    by_run: dict[str, list[LedgerEntry]] = {}
    for entry in entries:
        by_run.setdefault(entry.run_id, []).append(entry)
    return [
        RunSummary(
            run_id=run_id,
            rounds=sorted({e.round for e in group if e.kind == TRAIN}),
            steps=sum(e.steps for e in group if e.kind == TRAIN),  # DP-SGD steps
            first=group[0].time,
            last=group[-1].time,
            epsilon=history_epsilon(group, group[-1].delta, group[-1].accountant),
        )
        for run_id, group in by_run.items()
    ]


def format_epsilon(value: float | None) -> str:
    return "∞ (not private)" if value is None or math.isinf(value) else f"{value:.4f}"


def rounds_text(rounds: list[int]) -> str:
    if rounds == list(range(rounds[0], rounds[0] + len(rounds))):
        return f"{rounds[0]}-{rounds[-1]}" if len(rounds) > 1 else str(rounds[0])
    return ", ".join(map(str, rounds))


def plot(entries: list[LedgerEntry], policy: SitePolicy | None) -> str:
    """Cumulative epsilon per ledger entry (run boundaries marked) as a PNG data URI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7, 3.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    seqs = [e.seq for e in entries]
    eps = [math.nan if e.epsilon is None else e.epsilon for e in entries]
    ax.plot(seqs, eps, "o-", label="cumulative epsilon")
    for prev, entry in itertools.pairwise(entries):
        if entry.run_id != prev.run_id:
            ax.axvline(entry.seq - 0.5, color="grey", ls=":", lw=1)
    top = max([v for v in eps if math.isfinite(v)], default=1.0)
    if policy is not None:
        ax.axhline(policy.max_epsilon, color="red", ls="--", label="policy max-epsilon")
        top = max(top, policy.max_epsilon)
    ax.set(xlabel="ledger entry (dotted: a new run)", ylabel="epsilon", ylim=(0, top * 1.15))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()


ENTRY_COLUMNS: tuple[str, ...] = (
    *("seq", "time", "site", "run", "round", "release", "steps", "q", "sigma", "C", "delta"),
    *("accountant", "cumulative epsilon"),
)
# What each kind of entry released, as the report's "release" column says it.
RELEASES = {
    "train": "DP-SGD",
    "count": "example count (noised)",
    "evaluate": "evaluation (noised)",
    "statistics": "feature statistics (outside DP)",
}


def entry_cells(e: LedgerEntry) -> list[str]:
    """One ledger entry as the cells of a table row (columns: ``ENTRY_COLUMNS``)."""
    release = RELEASES.get(e.kind, e.kind)
    if e.value is not None:
        release += f": {e.value:g}"
    return [
        *(str(e.seq), e.time, e.site, e.run_id, str(e.round), release, str(e.steps)),
        *(f"{e.sample_rate:.4g}", f"{e.noise_multiplier:.4g}", f"{e.clip_norm:g}"),
        *(f"{e.delta:g}", e.accountant, format_epsilon(e.epsilon)),
    ]


@dataclass(frozen=True)
class ReportParts:
    title: str
    facts: list[tuple[str, str]]
    policy: str | None
    runs: list[list[str]]
    rows: list[list[str]]
    plot: str
    block: str


_RUN_HEAD = ("run", "rounds", "steps", "first", "last", "run's epsilon")
_HOW = (
    "Verify this file with the site's public key (from the site itself): `fedllm report verify "
    "FILE --public-key KEY`. It checks the signature over every byte above the last line, the "
    "embedded ledger's hash chain and signed head, and replays every epsilon."
)


def _md_text(text: str) -> str:
    text = re.sub(r"[\x00-\x1f\x7f]", " ", text)
    return re.sub(r"([\\`*_\[\]<>|#!~&])", r"\\\1", text)


def markdown(p: ReportParts) -> str:
    def table(head: tuple[str, ...], rows: list[list[str]]) -> str:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(_md_text(c) for c in row) + " |" for row in rows]
        return "\n".join(lines)

    out = [f"# {_md_text(p.title)}", ""]
    out += [f"- **{name}:** {_md_text(value)}" for name, value in p.facts]
    if p.policy is not None:
        out += ["", "## Site policy", "", "```toml", p.policy.rstrip("\n"), "```"]
    out += ["", "## Runs", "", table(_RUN_HEAD, p.runs)]
    out += ["", "## Cumulative epsilon", "", f"![cumulative epsilon per ledger entry]({p.plot})"]
    out += ["", "## Ledger entries", "", table(ENTRY_COLUMNS, p.rows)]
    out += ["", "## Verification", "", _HOW, "", BLOCKS["md"][0] + p.block]
    return "\n".join(out) + BLOCKS["md"][1]


def render_html(p: ReportParts) -> str:
    esc: Callable[[str], str] = html.escape

    def table(head: tuple[str, ...], rows: list[list[str]]) -> str:
        cells = "".join(f"<th>{esc(h)}</th>" for h in head)
        body = "".join(
            "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>\n" for row in rows
        )
        return f"<table>\n<tr>{cells}</tr>\n{body}</table>"

    out = [
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">',
        f"<title>{esc(p.title)}</title>",
        "<style>body{font-family:sans-serif;max-width:70em;margin:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}</style>",
        f"</head>\n<body>\n<h1>{esc(p.title)}</h1>\n<ul>",
    ]
    out += [f"<li><b>{esc(name)}:</b> {esc(value)}</li>" for name, value in p.facts]
    out.append("</ul>")
    if p.policy is not None:
        out.append(f"<h2>Site policy</h2>\n<pre>{esc(p.policy)}</pre>")
    out += ["<h2>Runs</h2>", table(_RUN_HEAD, p.runs), "<h2>Cumulative epsilon</h2>"]
    out.append(f'<img alt="cumulative epsilon per ledger entry" src="{p.plot}">')
    out += ["<h2>Ledger entries</h2>", table(ENTRY_COLUMNS, p.rows), "<h2>Verification</h2>"]
    how = re.sub(r"`([^`]*)`", r"<code>\1</code>", esc(_HOW))
    out += [f"<p>{how}</p>", BLOCKS["html"][0] + p.block]
    return "\n".join(out) + BLOCKS["html"][1] + "</body>\n</html>\n"
