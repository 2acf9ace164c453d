"""Leaderboard output: a text table, JSON for scripts, and Markdown, CSV and a PNG chart on disk."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed, or wanted, on a server
import matplotlib.pyplot as plt  # after use(): the backend must be chosen first

from eval.scoring import SUITE_GROUPS, Ranking, groups

CHART_LABEL_CHARS = 40  # entry names in the chart are cut to this length; the tables keep them whole


def columns(suite: str) -> list[str]:
    """Score columns, left to right: each group's mean win rate, each stage's score, the final score."""
    return [*groups(suite), *SUITE_GROUPS[suite], "final"]


def scores(ranking: Ranking) -> dict[str, float]:
    """The ranking's scores keyed by the names `columns` gives."""
    return {**ranking.groups, **ranking.stages, "final": ranking.final}


def as_records(rankings: list[Ranking]) -> list[dict]:
    """One JSON-ready record per entry: rank, entry, group mean win rates, stage scores, final."""
    return [
        {"rank": place, "entry": r.entry, "groups": r.groups, **r.stages, "final": r.final}
        for place, r in enumerate(rankings, start=1)
    ]


def as_json(rankings: list[Ranking]) -> str:
    return json.dumps(as_records(rankings), indent=2)


def as_table(rankings: list[Ranking], suite: str) -> str:
    """A plain-text table, columns aligned, scores to three decimals."""
    header = ["rank", "entry", *columns(suite)]
    body = [[str(place), r.entry, *(f"{scores(r)[c]:.3f}" for c in columns(suite))]
            for place, r in enumerate(rankings, start=1)]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:  # entry names left-aligned, numbers right-aligned
        padded = [cell.ljust(w) if i == 1 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths))]
        return "  ".join(padded).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)])


def as_markdown(rankings: list[Ranking], suite: str, title: str) -> str:
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
        cells = [str(place), r.entry.replace("|", "\\|"), *(f"{scores(r)[c]:.3f}" for c in columns(suite))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def as_csv(rankings: list[Ranking], suite: str) -> str:
    """Full precision, one row per entry, for spreadsheets."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["rank", "entry", *columns(suite)])
    for place, r in enumerate(rankings, start=1):
        writer.writerow([place, r.entry, *(repr(scores(r)[c]) for c in columns(suite))])
    return out.getvalue()


def write_chart(rankings: list[Ranking], suite: str, path: Path, title: str) -> None:
    """Left: the group mean win rates as a heat map; right: stage and final scores as bars."""
    group_names = list(groups(suite))
    stage_names = [*SUITE_GROUPS[suite], "final"]
    labels = [r.entry if len(r.entry) <= CHART_LABEL_CHARS else r.entry[: CHART_LABEL_CHARS - 1] + "…"
              for r in rankings]
    height = 1.5 + 0.45 * len(rankings)
    fig, (heat, bars) = plt.subplots(
        1, 2, figsize=(6 + 0.8 * len(group_names) + 0.6 * len(stage_names), height),
        gridspec_kw={"width_ratios": [len(group_names), 1.5 * len(stage_names)]}, layout="constrained",
    )
    grid = [[r.groups[g] for g in group_names] for r in rankings]
    heat.imshow(grid, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    heat.set_xticks(range(len(group_names)), group_names, rotation=45, ha="right")
    heat.set_yticks(range(len(rankings)), labels)
    for row, values in enumerate(grid):
        for col, value in enumerate(values):
            heat.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=8,
                      color="black" if value > 0.6 else "white")
    heat.set_title("group mean win rate")
    bar_height = 0.8 / len(stage_names)
    for k, stage in enumerate(stage_names):
        offsets = [row - 0.4 + bar_height * (k + 0.5) for row in range(len(rankings))]
        bars.barh(offsets, [scores(r)[stage] for r in rankings], height=bar_height, label=stage)
    bars.set_yticks(range(len(rankings)), [str(place) for place in range(1, len(rankings) + 1)])
    bars.invert_yaxis()
    bars.set_xlim(0.0, 1.0)
    bars.set_title("scores")
    bars.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_reports(rankings: list[Ranking], suite: str, out_dir: Path, title: str) -> list[Path]:
    """leaderboard.md, leaderboard.csv and leaderboard.png under `out_dir` (created if needed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown, table, chart = out_dir / "leaderboard.md", out_dir / "leaderboard.csv", out_dir / "leaderboard.png"
    markdown.write_text(as_markdown(rankings, suite, title), encoding="utf-8")
    table.write_text(as_csv(rankings, suite), encoding="utf-8")
    write_chart(rankings, suite, chart, title)
    return [markdown, table, chart]
