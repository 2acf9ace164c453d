"""The results store: one SQLite file, one row per (track, entry, scenario, metric).

Every write is one transaction, so a reader never sees a half-written change. An evaluation records
each scenario as it finishes, replacing only that scenario's rows of the entry: an interrupted run keeps
what finished and leaves the entry's other scenarios as they were. An import replaces whole entries.

Each run of a scenario is recorded in `runs` with its instance count and the scenario's full budget. A
run smaller than its budget (`--limit`, a smaller `--budget`) is partial: its metrics go to
`partial_results`, kept apart, so a smoke run never replaces a full one in the ranking; a later full run
supersedes it. `results` holds only full runs (and imports, whose size is unknown), which is what ranks.
Stores written before `runs` existed are upgraded in place on opening; their rows count as full runs.
"""
from __future__ import annotations

import math
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DB = Path("runs/leaderboard.sqlite")
DB_ENV = "HARNESS_DB"
# Entries are only ever ranked against entries of the same track (the competition judged each GPU apart).
TRACKS = {
    "local": "your own runs, the default",
    "a100": "the competition's NVIDIA A100 40GB track",
    "4090": "the competition's NVIDIA RTX 4090 24GB track",
}
DEFAULT_TRACK = "local"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    track TEXT NOT NULL,
    entry TEXT NOT NULL CHECK (length(entry) > 0),
    source TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (track, entry)
);
CREATE TABLE IF NOT EXISTS results (
    track TEXT NOT NULL,
    entry TEXT NOT NULL,
    scenario TEXT NOT NULL CHECK (length(scenario) > 0),
    metric TEXT NOT NULL CHECK (length(metric) > 0),
    value REAL NOT NULL CHECK (value BETWEEN -1e308 AND 1e308),
    instances INTEGER NOT NULL CHECK (instances >= 0),
    seconds REAL NOT NULL CHECK (seconds >= 0),
    PRIMARY KEY (track, entry, scenario, metric),
    FOREIGN KEY (track, entry) REFERENCES entries (track, entry)
);
CREATE TABLE IF NOT EXISTS partial_results (
    track TEXT NOT NULL,
    entry TEXT NOT NULL,
    scenario TEXT NOT NULL CHECK (length(scenario) > 0),
    metric TEXT NOT NULL CHECK (length(metric) > 0),
    value REAL NOT NULL CHECK (value BETWEEN -1e308 AND 1e308),
    instances INTEGER NOT NULL CHECK (instances >= 0),
    seconds REAL NOT NULL CHECK (seconds >= 0),
    PRIMARY KEY (track, entry, scenario, metric),
    FOREIGN KEY (track, entry) REFERENCES entries (track, entry)
);
CREATE TABLE IF NOT EXISTS runs (
    track TEXT NOT NULL,
    entry TEXT NOT NULL,
    scenario TEXT NOT NULL,
    partial INTEGER NOT NULL CHECK (partial IN (0, 1)),
    instances INTEGER NOT NULL CHECK (instances >= 0),
    budget INTEGER NOT NULL CHECK (budget > 0),
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (track, entry, scenario, partial),
    FOREIGN KEY (track, entry) REFERENCES entries (track, entry)
);
PRAGMA user_version = 1;
"""


@dataclass(frozen=True)
class Result:
    """One metric of one scenario, as an evaluation measured it."""

    scenario: str  # e.g. "mmlu", "bigbench:emoji_movie", "quick:mc_smallest"
    metric: str  # HELM's metric name exactly as the organizers print it, e.g. "MMLU - EM (Robustness)"
    value: float
    instances: int  # instances evaluated (0 when unknown, e.g. imported results)
    seconds: float  # wall time spent on the scenario (0.0 when unknown)


@dataclass(frozen=True)
class PartialRun:
    """A run of a scenario smaller than its full budget: recorded, shown, never ranked."""

    instances: int
    budget: int
    metrics: dict[str, float]


def check_track(track: str) -> str:
    """The track's canonical name; a ValueError naming it and the known tracks when it is unknown."""
    name = track.strip().lower()
    if name not in TRACKS:
        known = "; ".join(f"{key}: {text}" for key, text in TRACKS.items())
        raise ValueError(f"unknown track {track!r}; known tracks: {known}")
    return name


def db_path(path: Path | str | None = None) -> Path:
    """The database file: `path`, else $HARNESS_DB, else runs/leaderboard.sqlite."""
    if path is not None:
        return Path(path)
    return Path(os.environ.get(DB_ENV) or DEFAULT_DB)


class Store:
    """The results database (created on first use, parent folders included)."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = db_path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as conn:
            conn.executescript(_SCHEMA)

    def replace_scenario(self, entry: str, track: str, scenario: str, results: Iterable[Result],
                         source: str = "", *, instances: int | None = None, budget: int | None = None) -> None:
        """Store one run of a scenario for `entry` in `track` in one transaction; the entry is created if
        new. `instances` is the run's evaluation instances, `budget` the scenario's full count (both
        unknown: a full run). A full run replaces the scenario's rows (and no others) and drops any
        partial run of it; a partial run (instances < budget) replaces only the scenario's partial rows.
        A bad result, or one of another scenario, leaves the old rows intact."""
        track = check_track(track)
        _check_entry(entry)
        if (instances is None) != (budget is None):
            raise ValueError(f"entry {entry!r}, scenario {scenario!r}: give both instances and budget, or neither")
        partial = budget is not None and instances < budget
        table = "partial_results" if partial else "results"
        # A partial run replaces the last partial one; a full run replaces everything of the scenario.
        replaced = ["partial_results"] if partial else ["partial_results", "results"]
        with self._transaction() as conn:
            self._upsert_entry(conn, track, entry, source)
            for dropped in replaced:
                conn.execute(f"DELETE FROM {dropped} WHERE track = ? AND entry = ? AND scenario = ?",
                             (track, entry, scenario))
            conn.execute("DELETE FROM runs WHERE track = ? AND entry = ? AND scenario = ? AND partial IN (1, ?)",
                         (track, entry, scenario, int(partial)))
            if budget is not None:
                conn.execute("INSERT INTO runs (track, entry, scenario, partial, instances, budget, recorded_at)"
                             " VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (track, entry, scenario, int(partial), instances, budget, _now()))
            for result in results:
                if result.scenario != scenario:
                    raise ValueError(f"entry {entry!r}: result {result} is not of scenario {scenario!r}")
                self._insert(conn, track, entry, result, table)

    def replace_entry(self, entry: str, track: str, results: Iterable[Result], source: str = "") -> None:
        """Store `entry`'s results in `track`, replacing all its previous rows in one transaction:
        any bad result (or an exception raised while `results` is iterated) leaves the old rows intact."""
        self.replace_entries(track, {entry: results}, source)

    def replace_entries(self, track: str, entries: Mapping[str, Iterable[Result]], source: str = "") -> None:
        """Like replace_entry for several entries at once, all in a single transaction."""
        track = check_track(track)
        with self._transaction() as conn:
            for entry, results in entries.items():
                _check_entry(entry)
                for table in ("results", "partial_results", "runs"):
                    conn.execute(f"DELETE FROM {table} WHERE track = ? AND entry = ?", (track, entry))
                self._upsert_entry(conn, track, entry, source)
                for result in results:
                    self._insert(conn, track, entry, result)

    def metrics(self, track: str) -> dict[str, dict[str, float]]:
        """entry -> {metric name: value} for every entry of `track` (an entry without results maps to
        {}). A metric several scenarios report (e.g. "BIG-bench - EM" from each BIG-bench task) is
        their plain mean, as HELM averages the runs of a group."""
        track = check_track(track)
        with closing(self._connect()) as conn:
            rows = conn.execute(
                "SELECT e.entry, r.metric, AVG(r.value) FROM entries e"
                " LEFT JOIN results r ON r.track = e.track AND r.entry = e.entry"
                " WHERE e.track = ? GROUP BY e.entry, r.metric ORDER BY e.entry, r.metric",
                (track,),
            ).fetchall()
        table: dict[str, dict[str, float]] = {}
        for entry, metric, value in rows:
            table.setdefault(entry, {})
            if metric is not None:
                table[entry][metric] = value
        return table

    def instances(self, track: str) -> dict[str, dict[str, int | None]]:
        """entry -> {scenario: instances of its ranked (full) run} for `track`; None where unknown
        (imports, and stores written before runs were recorded)."""
        track = check_track(track)
        with closing(self._connect()) as conn:
            rows = conn.execute(
                "SELECT DISTINCT r.entry, r.scenario, u.instances FROM results r LEFT JOIN runs u"
                " ON u.track = r.track AND u.entry = r.entry AND u.scenario = r.scenario AND u.partial = 0"
                " WHERE r.track = ? ORDER BY r.entry, r.scenario", (track,)).fetchall()
        table: dict[str, dict[str, int | None]] = {}
        for entry, scenario, count in rows:
            table.setdefault(entry, {})[scenario] = count
        return table

    def partial_runs(self, track: str) -> dict[str, dict[str, PartialRun]]:
        """entry -> {scenario: its partial run} for `track`: the runs kept apart from the ranking."""
        track = check_track(track)
        with closing(self._connect()) as conn:
            runs = conn.execute("SELECT entry, scenario, instances, budget FROM runs WHERE track = ? AND partial = 1"
                                " ORDER BY entry, scenario", (track,)).fetchall()
            values = conn.execute("SELECT entry, scenario, metric, value FROM partial_results WHERE track = ?"
                                  " ORDER BY metric", (track,)).fetchall()
        table: dict[str, dict[str, PartialRun]] = {}
        for entry, scenario, count, budget in runs:
            table.setdefault(entry, {})[scenario] = PartialRun(count, budget, {})
        for entry, scenario, metric, value in values:
            table[entry][scenario].metrics[metric] = value
        return table

    def entries(self, track: str) -> list[str]:
        """The entries of `track`, by name."""
        track = check_track(track)
        with closing(self._connect()) as conn:
            rows = conn.execute("SELECT entry FROM entries WHERE track = ? ORDER BY entry", (track,))
            return [entry for (entry,) in rows]

    def tracks(self) -> list[str]:
        """The tracks that hold at least one entry."""
        with closing(self._connect()) as conn:
            return [track for (track,) in conn.execute("SELECT DISTINCT track FROM entries ORDER BY track")]

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with closing(self._connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")  # take the write lock now: concurrent writers queue, not fail
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @staticmethod
    def _upsert_entry(conn: sqlite3.Connection, track: str, entry: str, source: str) -> None:
        recorded_at = _now()
        conn.execute("INSERT INTO entries (track, entry, source, recorded_at) VALUES (?, ?, ?, ?) ON CONFLICT"
                     " (track, entry) DO UPDATE SET source = excluded.source, recorded_at = excluded.recorded_at",
                     (track, entry, source, recorded_at))

    @staticmethod
    def _insert(conn: sqlite3.Connection, track: str, entry: str, result: Result, table: str = "results") -> None:
        try:
            value = float(result.value)
            if not math.isfinite(value):
                raise ValueError(f"value {value} is not a finite number")
            conn.execute(
                f"INSERT INTO {table} (track, entry, scenario, metric, value, instances, seconds)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (track, entry, result.scenario, result.metric, value, int(result.instances), float(result.seconds)),
            )
        except (AttributeError, TypeError, ValueError, sqlite3.IntegrityError) as exc:
            raise ValueError(f"entry {entry!r}: cannot store {result}: {exc}") from exc


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _check_entry(entry: object) -> None:
    if not isinstance(entry, str) or not entry.strip():
        raise ValueError(f"entry name must be a non-empty string, got {entry!r}")
