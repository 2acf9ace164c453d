"""`python -m eval import FILE --track T`: published results, in the organizers' format, as entries.

The format is a JSON list of `[entry_name, {"<HELM metric name>": value or null, ...}]` pairs, as in
the organizers' final-round tables. Columns the rule computes itself ("... Mean Win Rate", "Score_*")
are ignored, a null is a missing value, and the whole file is stored in one transaction or not at all.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from eval.scoring import metric_group
from eval.store import DB_ENV, DEFAULT_DB, Result, Store, check_track


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="JSON list of [entry_name, {metric: value}] pairs")
    parser.add_argument("--track", required=True, help="track the entries competed in (e.g. a100, 4090)")
    parser.add_argument("--db", type=Path, help=f"results database (default: ${DB_ENV} or {DEFAULT_DB})")


def main(args: argparse.Namespace) -> int:
    try:
        track = check_track(args.track)
        entries = parse(args.file.read_text(encoding="utf-8"), str(args.file))
        store = Store(args.db)
        store.replace_entries(track, entries, source=f"import:{args.file.name}")
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    values = sum(len(results) for results in entries.values())
    unscored = sorted({r.metric for results in entries.values() for r in results if metric_group(r.metric) is None})
    print(f"imported {len(entries)} entries ({values} values) from {args.file} into track {track} of {store.path}")
    if unscored:
        print(f"note: stored, but no suite scores: {', '.join(unscored)}")
    return 0


def is_computed(metric: str) -> bool:
    """A column the ranking rule derives itself, which an import ignores."""
    return metric.endswith("Mean Win Rate") or metric.startswith("Score_")


def scenario_of(metric: str) -> str:
    """The scenario a published metric came from: its scoring group, else the name before " - "."""
    group = metric_group(metric)
    return (group or metric.split(" - ", 1)[0]).strip().lower()


def parse(text: str, origin: str) -> dict[str, list[Result]]:
    """entry -> its results; a ValueError naming `origin` and the offending item when the shape is wrong."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{origin}: not valid JSON: {exc}") from exc
    if not isinstance(data, list) or not data:
        raise ValueError(f"{origin}: expected a non-empty JSON list of [entry_name, {{metric: value}}] pairs, "
                         f"got {_kind(data)}")
    entries: dict[str, list[Result]] = {}
    for index, item in enumerate(data):
        where = f"{origin}: item {index}"
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                and isinstance(item[1], dict)):
            raise ValueError(f"{where}: expected [entry_name, {{metric: value}}], got {_kind(item)}")
        name, values = item[0].strip(), item[1]
        if not name:
            raise ValueError(f"{where}: empty entry name")
        if name in entries:
            raise ValueError(f"{where}: entry {name!r} appears twice")
        entries[name] = [Result(scenario_of(metric), metric, _number(value, f"{where} ({name}), metric {metric!r}"),
                                instances=0, seconds=0.0)
                         for metric, value in values.items() if value is not None and not is_computed(metric)]
    return entries


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: expected a finite number or null, got {value!r}")
    return float(value)


def _kind(value: object) -> str:
    text = json.dumps(value)
    return f"{type(value).__name__} {text[:80]}{'…' if len(text) > 80 else ''}"
