"""`python -m eval leaderboard`: rank a track's entries with the organizers' rule.

Prints a table (or, with --format json, only JSON) and writes leaderboard.md, .csv and .png.
Scores are relative to the entries ranked together, so --pool / --pool-file fix that set: name the
reference entries (the untuned base model at least) once in a pool file and add candidates with --pool.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eval import report
from eval.scoring import SUITES, groups, rank
from eval.store import DB_ENV, DEFAULT_DB, DEFAULT_TRACK, Store, check_track, db_path

DEFAULT_OUT = Path("runs/leaderboard")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, help=f"results database (default: ${DB_ENV} or {DEFAULT_DB})")
    parser.add_argument("--track", default=DEFAULT_TRACK, help=f"track to rank (default: {DEFAULT_TRACK})")
    parser.add_argument("--suite", choices=SUITES, default="competition",
                        help="which groups to score (default: competition: 1/3 open + 2/3 hidden)")
    parser.add_argument("--pool", help="comma-separated entries to rank together (default: every entry)")
    parser.add_argument("--pool-file", type=Path, help="file naming pool entries, one a line ('#' comments)")
    parser.add_argument("--format", choices=("table", "json"), default="table",
                        help="table: print a table and write reports; json: print only JSON")
    parser.add_argument("--out", type=Path,
                        help=f"folder for leaderboard.md/.csv/.png (default with --format table: {DEFAULT_OUT})")


def main(args: argparse.Namespace) -> int:
    try:
        track = check_track(args.track)
        store = _open(args.db)
        rankings = rank(_pool_metrics(args, store, track), args.suite)
        runs = report.Runs(store.instances(track), store.partial_runs(track))
        title = f"Leaderboard: track {track}, suite {args.suite}, {len(rankings)} entries"
        out = args.out or (DEFAULT_OUT if args.format == "table" else None)  # json: files only when asked
        written = report.write_reports(rankings, args.suite, out, title, runs) if out is not None else []
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(report.as_json(rankings, runs))
    else:
        print(title)
        print(report.as_table(rankings, args.suite, runs))
        print("wrote " + ", ".join(map(str, written)))
    return 0


def _open(db: Path | None) -> Store:
    path = db_path(db)
    if not path.is_file():
        raise ValueError(f"no results database at {path}: record entries with `python -m eval run` "
                         "or `python -m eval import` first")
    return Store(path)


def _pool_metrics(args: argparse.Namespace, store: Store, track: str) -> dict[str, dict[str, float]]:
    """entry -> {metric: value} for the entries to rank: the pool if one is named, else every entry
    of the track that has at least one metric the suite scores in a full run (partial runs never rank)."""
    metrics = store.metrics(track)
    if not metrics:
        held = ", ".join(store.tracks()) or "none"
        raise ValueError(f"track {track!r} has no entries in {store.path} (tracks with entries: {held})")
    pool = _pool_names(args)
    if pool:
        unknown = [name for name in pool if name not in metrics]
        if unknown:
            raise ValueError(f"pool entries not in track {track!r}: {', '.join(unknown)} "
                             f"(entries: {', '.join(metrics)})")
        return {name: metrics[name] for name in pool}
    scored = {metric for group in groups(args.suite).values() for metric, _ in group}
    ranked = {entry: values for entry, values in metrics.items() if scored & values.keys()}
    partial = {entry for entry, runs in store.partial_runs(track).items()
               if any(scored & run.metrics.keys() for run in runs.values())}
    only_partial = sorted(partial - ranked.keys())
    left_out = sorted(metrics.keys() - ranked.keys() - partial)
    if only_partial:
        print(f"note: not ranked, partial runs only (smaller than the scenario's full budget, e.g. --limit): "
              f"{', '.join(only_partial)}", file=sys.stderr)
    if not ranked:
        hint = ("rerun them without --limit" if only_partial
                else f"try --suite {' or --suite '.join(s for s in SUITES if s != args.suite)}")
        raise ValueError(f"no entry of track {track!r} has a full run of a scenario of suite {args.suite!r} ({hint})")
    if left_out:
        print(f"note: left out entries with no metric of suite {args.suite!r}: {', '.join(left_out)}",
              file=sys.stderr)
    return ranked


def _pool_names(args: argparse.Namespace) -> list[str]:
    """The pool file's names, then --pool's, each once, in that order."""
    names = []
    if args.pool_file is not None:
        for line in args.pool_file.read_text(encoding="utf-8").splitlines():
            names.append(line.split("#", 1)[0].strip())
        if not any(names):
            raise ValueError(f"pool file {args.pool_file} names no entries")
    if args.pool:
        names.extend(name.strip() for name in args.pool.split(","))
    return list(dict.fromkeys(name for name in names if name))
