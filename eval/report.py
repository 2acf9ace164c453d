"""Leaderboard output: a text table, JSON for scripts, and Markdown, CSV and a PNG chart on disk.

Each shows the win rates and scores, and beside them the metric values they were computed from (as
HELM's summary tables show each scenario's metrics): a missing value is shown as "-" (empty in the CSV,
null in the JSON) and is ranked as the rule says (docs/leaderboard.md).
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed, or wanted, on a server
import matplotlib.pyplot as plt  # after use(): the backend must be chosen first

from eval.scoring import SUITE_GROUPS, Ranking, groups
from eval.store import PartialRun

CHART_LABEL_CHARS = 40  # entry names in the chart are cut to this length; the tables keep them whole
MISSING = "-"


def columns(suite: str) -> list[str]:
    """Score columns, left to right: each group's mean win rate, each stage's score, the final score."""
    return [*groups(suite), *SUITE_GROUPS[suite], "final"]


def scores(ranking: Ranking) -> dict[str, float]:
    """The ranking's scores keyed by the names `columns` gives."""
    return {**ranking.groups, **ranking.stages, "final": ranking.final}


def metric_columns(suite: str) -> list[str]:
    """Every metric the suite scores, group by group, in the organizers' order."""
    return [name for metrics in groups(suite).values() for name, _ in metrics]


def value_text(value: float | None) -> str:
    return MISSING if value is None else f"{value:.3f}"


@dataclass(frozen=True)
class Runs:
    """How much of each scenario the entries' runs evaluated (eval/store.py)."""

    instances: dict[str, dict[str, int | None]] = field(default_factory=dict)  # ranked runs; None: unknown
    partial: dict[str, dict[str, PartialRun]] = field(default_factory=dict)  # kept apart, never ranked


def as_records(rankings: list[Ranking], runs: Runs = Runs()) -> list[dict]:
    """One JSON-ready record per entry: rank, entry, group mean win rates, stage scores, final, the
    metric values (null when missing), the instances of each ranked scenario run and the partial runs."""
    return [
        {"rank": place, "entry": r.entry, "groups": r.groups, **r.stages, "final": r.final, "metrics": r.values,
         "instances": runs.instances.get(r.entry, {}),
         "partial": {scenario: {"instances": run.instances, "budget": run.budget, "metrics": run.metrics}
                     for scenario, run in runs.partial.get(r.entry, {}).items()}}
        for place, r in enumerate(rankings, start=1)
    ]


def as_json(rankings: list[Ranking], runs: Runs = Runs()) -> str:
    return json.dumps(as_records(rankings, runs), indent=2)


def partial_rows(runs: Runs) -> list[list[str]]:
    """entry, scenario, instances of budget, metric values: every partial run, ranked entry or not."""
    return [[entry, scenario, f"{run.instances} of {run.budget}",
             ", ".join(f"{metric} {value:.3f}" for metric, value in run.metrics.items())]
            for entry, scenarios in sorted(runs.partial.items()) for scenario, run in scenarios.items()]


PARTIAL_HEADER = ["entry", "scenario", "instances", "metrics"]
PARTIAL_TITLE = "Partial runs (smaller than the scenario's full budget, e.g. --limit): not ranked"


def _aligned(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:  # entry names left-aligned, numbers right-aligned
        padded = [cell.ljust(w) if i == 1 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths))]
        return "  ".join(padded).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)])


def group_tables(rankings: list[Ranking], suite: str) -> list[tuple[str, list[str], list[list[str]]]]:
    """Per group, HELM-style: (group, header, rows) with the group's mean win rate and each metric's value
    (headed by its HELM name less the group's prefix; ↓ marks lower is better)."""
    tables = []
    for group, metrics in groups(suite).items():
        header = ["rank", "entry", "mean win rate",
                  *(name.removeprefix(f"{group} - ") + ("" if higher else " ↓") for name, higher in metrics)]
        rows = [[str(place), r.entry, f"{r.groups[group]:.3f}", *(value_text(r.values[name]) for name, _ in metrics)]
                for place, r in enumerate(rankings, start=1)]
        tables.append((group, header, rows))
    return tables


def as_table(rankings: list[Ranking], suite: str, runs: Runs = Runs()) -> str:
    """Plain-text tables, columns aligned, to three decimals: the ranking, then each group's metric values,
    then the partial runs kept apart."""
    header = ["rank", "entry", *columns(suite)]
    body = [[str(place), r.entry, *(f"{scores(r)[c]:.3f}" for c in columns(suite))]
            for place, r in enumerate(rankings, start=1)]
    parts = [_aligned(header, body)]
    for group, group_header, rows in group_tables(rankings, suite):
        parts.append(f"{group}\n{_aligned(group_header, rows)}")
    if runs.partial:  # _aligned's second column is the left-aligned one: pad with a blank first column
        rows = [["", *row] for row in partial_rows(runs)]
        parts.append(f"{PARTIAL_TITLE}\n{_aligned(['', *PARTIAL_HEADER], rows)}")
    return "\n\n".join(parts)


def as_markdown(rankings: list[Ranking], suite: str, title: str, runs: Runs = Runs()) -> str:
    header = ["rank", "entry", *columns(suite)]
    lines = [
        f"# {title}",
        "",
        "Group columns are mean win rates; stage columns the geometric mean of their groups; "
        + ("final = 1/3 open + 2/3 hidden." if suite == "competition" else "final = the stage score."),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if c != "entry" else "---" for c in header) + "|",
    ]
    for place, r in enumerate(rankings, start=1):
        cells = [str(place), r.entry, *(f"{scores(r)[c]:.3f}" for c in columns(suite))]
        lines.append(_markdown_row(cells))
    lines += ["", "## Metric values", "", (f"Each group's metrics as measured ({MISSING}: missing, ranked as 0, or "
                                           "as 1000 where lower is better; ↓: lower is better).")]
    for group, header, rows in group_tables(rankings, suite):
        lines += ["", f"### {group}", "", _markdown_row(header),
                  "|" + "|".join("---" if c == "entry" else "---:" for c in header) + "|",
                  *map(_markdown_row, rows)]
    if runs.partial:
        lines += ["", f"## {PARTIAL_TITLE}", "", _markdown_row(PARTIAL_HEADER), "|---|---|---:|---|",
                  *map(_markdown_row, partial_rows(runs))]
    return "\n".join(lines) + "\n"


def _markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def as_csv(rankings: list[Ranking], suite: str) -> str:
    """Full precision, one row per entry, for spreadsheets: the scores, then each metric's value (empty
    when missing) under its HELM name."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["rank", "entry", *columns(suite), *metric_columns(suite)])
    for place, r in enumerate(rankings, start=1):
        values = ["" if r.values[m] is None else repr(r.values[m]) for m in metric_columns(suite)]
        writer.writerow([place, r.entry, *(repr(scores(r)[c]) for c in columns(suite)), *values])
    return out.getvalue()


def write_chart(rankings: list[Ranking], suite: str, path: Path, title: str) -> None:
    """Three panels side by side, one row per entry, the rows labelled with the entries' names on the left:
    the group mean win rates as a heat map; the metric values (the colour is the entry's win rate on that
    metric, "-" a missing value); the stage and final scores as bars."""
    group_names = list(groups(suite))
    metric_names = metric_columns(suite)
    stage_names = [*SUITE_GROUPS[suite], "final"]
    labels = [r.entry if len(r.entry) <= CHART_LABEL_CHARS else r.entry[: CHART_LABEL_CHARS - 1] + "…"
              for r in rankings]
    widths = [0.6 * len(group_names) + 0.5, max(0.45 * len(metric_names), 2.0) + 0.5, 0.6 * len(stage_names) + 1.5]
    longest_metric = max(map(len, metric_names))
    fig, (heat, values, bars) = plt.subplots(
        1, 3, figsize=(0.09 * max(map(len, labels)) + sum(widths), 1.5 + 0.4 * len(rankings) + 0.06 * longest_metric),
        gridspec_kw={"width_ratios": widths}, layout="constrained", sharey=True,
    )
    _heat_map(heat, [[r.groups[g] for g in group_names] for r in rankings], group_names, labels,
              [[f"{r.groups[g]:.2f}" for g in group_names] for r in rankings])
    heat.set_title("group mean\nwin rate", fontsize=9)
    lower = {name for metrics in groups(suite).values() for name, higher in metrics if not higher}
    metric_labels = [f"{m} ↓" if m in lower else m for m in metric_names]
    _heat_map(values, [[r.win_rates[m] for m in metric_names] for r in rankings], metric_labels, labels,
              [[value_text(r.values[m]) for m in metric_names] for r in rankings])
    values.set_title("metric values\n(colour: win rate on the metric" + ("; ↓ lower is better)" if lower else ")"),
                     fontsize=9)
    bar_height = 0.8 / len(stage_names)
    for k, stage in enumerate(stage_names):
        offsets = [row - 0.4 + bar_height * (k + 0.5) for row in range(len(rankings))]
        bars.barh(offsets, [scores(r)[stage] for r in rankings], height=bar_height, label=stage)
    for right in (values, bars):
        right.tick_params(axis="y", labelleft=False)
    bars.set_xlim(0.0, 1.0)
    bars.set_title("scores", fontsize=9)
    bars.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _heat_map(ax, grid: list[list[float]], columns_: list[str], labels: list[str], texts: list[list[str]]) -> None:
    ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(columns_)), columns_, rotation=60, ha="right", rotation_mode="anchor", fontsize=7)
    ax.set_yticks(range(len(labels)), labels)
    for row, (shade_row, text_row) in enumerate(zip(grid, texts)):
        for col, (shade, text) in enumerate(zip(shade_row, text_row)):
            ax.text(col, row, text, ha="center", va="center", fontsize=6, color="black" if shade > 0.6 else "white")


def write_reports(rankings: list[Ranking], suite: str, out_dir: Path, title: str, runs: Runs = Runs()) -> list[Path]:
    """leaderboard.md, leaderboard.csv and leaderboard.png under `out_dir` (created if needed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown, table, chart = out_dir / "leaderboard.md", out_dir / "leaderboard.csv", out_dir / "leaderboard.png"
    markdown.write_text(as_markdown(rankings, suite, title, runs), encoding="utf-8")
    table.write_text(as_csv(rankings, suite), encoding="utf-8")
    write_chart(rankings, suite, chart, title)
    return [markdown, table, chart]
