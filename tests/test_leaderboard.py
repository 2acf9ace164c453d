"""The results store, `python -m eval import` and `python -m eval leaderboard`, on the organizers'
published A100 final round (tests/fixtures/README.md) and on small hand-made entries."""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import matplotlib.image
import pytest

from eval import importer, leaderboard
from eval.scoring import rank
from eval.store import Result, Store

FIXTURE = Path(__file__).parent / "fixtures" / "a100_final_round.json"
REPO = Path(__file__).resolve().parents[1]


def call(module, *argv: str) -> int:
    """Run a command module's main() the way the dispatcher does, in this process."""
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.main(parser.parse_args([str(a) for a in argv]))


def cli(cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    """Run `python -m eval ...` in a fresh process, as a user would."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("HARNESS_DB", None)
    return subprocess.run([sys.executable, "-m", "eval", *map(str, argv)], cwd=cwd, env=env,
                          check=False, capture_output=True, text=True, timeout=120)


def published() -> list[tuple[str, dict]]:
    return [(name, values) for name, values in json.loads(FIXTURE.read_text())]


def quick(mc: float, qa: float, held_out: float, seconds: float = 1.0) -> list[Result]:
    return [Result("quick:mc", "Quick MC - EM", mc, 20, seconds), Result("quick:qa", "Quick QA - EM", qa, 20, seconds),
            Result("quick:held_out", "Held-out - EM", held_out, 20, seconds)]


# --- the organizers' final round -------------------------------------------------------------------

def test_imported_final_round_ranks_and_scores_like_the_organizers(tmp_path, capsys):
    db = tmp_path / "results.sqlite"
    assert call(importer, FIXTURE, "--track", "a100", "--db", db) == 0
    assert "imported 9 entries" in capsys.readouterr().out

    metrics = Store(db).metrics("a100")
    assert not [m for values in metrics.values() for m in values if "Win Rate" in m or m.startswith("Score_")]
    rankings = rank(metrics, "competition")

    theirs = sorted(published(), key=lambda item: -item[1]["Score_full"])
    assert [r.entry for r in rankings] == [name for name, _ in theirs]
    deviations = {r.entry: abs(r.final - dict(theirs)[r.entry]["Score_full"]) for r in rankings}
    print(f"max |Score_full - organizers'| = {max(deviations.values()):.3g}")
    assert max(deviations.values()) <= 0.02
    # Closer than the 0.02 asked: each group mean win rate is the published one to rounding error.
    for r in rankings:
        for group, value in r.groups.items():
            assert value == pytest.approx(dict(theirs)[r.entry][f"{group} Mean Win Rate"], abs=1e-9), (r.entry, group)


def test_import_keeps_values_and_drops_nulls_and_computed_columns(tmp_path):
    db = tmp_path / "results.sqlite"
    assert call(importer, FIXTURE, "--track", "a100", "--db", db) == 0
    name, values = published()[0]
    stored = Store(db).metrics("a100")[name]
    expected = {m: v for m, v in values.items() if v is not None and "Win Rate" not in m and not m.startswith("Score_")}
    assert stored == expected
    assert "sam_sum - Stereotypes (race)" not in stored  # null in the file: missing, not 0.0
    with sqlite3.connect(db) as conn:
        scenarios = dict(conn.execute("SELECT metric, scenario FROM results WHERE entry = ?", (name,)).fetchall())
    assert scenarios["ethics_virtue - EM (Fairness)"] == "ethics"
    assert scenarios["MATH (chain-of-thoughts) - Equivalent (chain of thought)"] == "math"


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"a": 1}', "expected a non-empty JSON list"),
    ("[]", "expected a non-empty JSON list"),
    ('[["ok", {"MMLU - EM": 0.5}], ["broken"]]', "item 1: expected \\[entry_name"),
    ('[["ok", {"MMLU - EM": 0.5}], ["bad", {"GSM8K - EM": "high"}]]', "item 1 \\(bad\\), metric 'GSM8K - EM'.*'high'"),
    ('[["twice", {"MMLU - EM": 0.5}], ["twice", {"MMLU - EM": 0.6}]]', "'twice' appears twice"),
])
def test_import_rejects_bad_files_and_stores_nothing(tmp_path, capsys, content, message):
    db = tmp_path / "results.sqlite"
    Store(db).replace_entry("kept", "a100", [Result("mmlu", "MMLU - EM", 0.25, 10, 1.0)])
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert call(importer, bad, "--track", "a100", "--db", db) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err
    assert re.search(message, err), err
    assert Store(db).metrics("a100") == {"kept": {"MMLU - EM": 0.25}}


def test_import_names_a_missing_file_and_an_unknown_track(tmp_path, capsys):
    db = tmp_path / "results.sqlite"
    assert call(importer, tmp_path / "absent.json", "--track", "a100", "--db", db) == 2
    assert "absent.json" in capsys.readouterr().err
    assert call(importer, FIXTURE, "--track", "h100", "--db", db) == 2
    err = capsys.readouterr().err
    assert "unknown track 'h100'" in err and "a100" in err
    assert not db.exists()


# --- the store ------------------------------------------------------------------------------------

def test_replace_entry_replaces_all_rows_of_that_entry_only(tmp_path):
    store = Store(tmp_path / "deep" / "folder" / "results.sqlite")  # parents are created
    store.replace_entry("base", "local", quick(0.25, 0.1, 0.0) + [Result("extra", "Extra - EM", 1.0, 1, 0.1)])
    store.replace_entry("tuned", "local", quick(0.5, 0.2, 0.3))
    store.replace_entry("base", "local", quick(0.3, 0.1, 0.05), source="rerun")
    assert store.metrics("local") == {
        "base": {"Quick MC - EM": 0.3, "Quick QA - EM": 0.1, "Held-out - EM": 0.05},  # "Extra - EM" is gone
        "tuned": {"Quick MC - EM": 0.5, "Quick QA - EM": 0.2, "Held-out - EM": 0.3},
    }
    assert store.entries("local") == ["base", "tuned"]
    assert store.entries("a100") == [] and store.tracks() == ["local"]


def test_a_failing_write_leaves_the_old_rows_intact(tmp_path):
    store = Store(tmp_path / "results.sqlite")
    store.replace_entry("base", "local", quick(0.25, 0.1, 0.0))
    before = store.metrics("local")

    # The database refuses the third row (same scenario and metric twice) after two rows were written.
    duplicate = quick(0.9, 0.9, 0.9)[:2] + [Result("quick:mc", "Quick MC - EM", 0.8, 20, 1.0)]
    with pytest.raises(ValueError, match="'base'.*UNIQUE"):
        store.replace_entry("base", "local", duplicate)
    assert store.metrics("local") == before

    with pytest.raises(ValueError, match="not a finite number"):
        store.replace_entry("base", "local", quick(0.9, 0.9, float("nan")))
    assert store.metrics("local") == before

    def evaluation_that_crashes():
        yield from quick(0.9, 0.9, 0.9)[:2]
        raise RuntimeError("server went away")

    with pytest.raises(RuntimeError, match="server went away"):
        store.replace_entry("base", "local", evaluation_that_crashes())
    assert store.metrics("local") == before

    with pytest.raises(ValueError, match="unknown track"):
        store.replace_entry("base", "moon", quick(0.9, 0.9, 0.9))
    assert store.metrics("local") == before


def test_a_metric_from_several_scenarios_is_their_mean(tmp_path):
    store = Store(tmp_path / "results.sqlite")
    store.replace_entry("e", "local", [Result("bigbench:emoji_movie", "BIG-bench - EM", 0.2, 10, 1.0),
                                       Result("bigbench:code_line", "BIG-bench - EM", 0.6, 10, 1.0)])
    assert store.metrics("local")["e"]["BIG-bench - EM"] == pytest.approx(0.4)


def test_database_path_follows_harness_db(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_DB", str(tmp_path / "env.sqlite"))
    assert Store().path == tmp_path / "env.sqlite"
    assert (tmp_path / "env.sqlite").is_file()
    assert Store(tmp_path / "explicit.sqlite").path == tmp_path / "explicit.sqlite"


def test_replace_scenario_replaces_only_that_scenarios_rows(tmp_path):
    store = Store(tmp_path / "results.sqlite")
    store.replace_entry("base", "local", quick(0.25, 0.1, 0.0))
    store.replace_scenario("base", "local", "quick:mc", [Result("quick:mc", "Quick MC - EM", 0.5, 3, 1.0)], "again")
    assert store.metrics("local") == {"base": {"Quick MC - EM": 0.5, "Quick QA - EM": 0.1, "Held-out - EM": 0.0}}
    store.replace_scenario("new", "local", "quick:qa", [Result("quick:qa", "Quick QA - EM", 0.2, 3, 1.0)])
    assert store.metrics("local")["new"] == {"Quick QA - EM": 0.2}
    with pytest.raises(ValueError, match="not of scenario 'quick:qa'"):  # nothing of it is stored
        store.replace_scenario("base", "local", "quick:qa", [Result("quick:qa", "Quick QA - EM", 0.9, 3, 1.0),
                                                             Result("quick:mc", "Quick MC - EM", 0.9, 3, 1.0)])
    assert store.metrics("local")["base"] == {"Quick MC - EM": 0.5, "Quick QA - EM": 0.1, "Held-out - EM": 0.0}


# --- smaller and interrupted runs keep the entry's other results ------------------------------------

EARLIER = [Result("quick_mc", "Quick MC - EM", 0.125, 99, 9.0), Result("quick_qa", "Quick QA - EM", 0.25, 99, 9.0),
           Result("held_out", "Held-out - EM", 0.375, 99, 9.0)]


def stored(db: Path, entry: str, table: str = "results") -> dict[str, tuple[str, float, int]]:
    with sqlite3.connect(db) as conn:
        found = conn.execute(f"SELECT metric, scenario, value, instances FROM {table} WHERE entry = ?", (entry,))
        return {metric: (scenario, value, n) for metric, scenario, value, n in found}


def test_a_limited_run_is_kept_apart_and_never_replaces_the_ranked_one(tmp_path, capsys):
    """A `--limit 1` smoke run of one scenario is recorded as partial (3 of its 60 instances) beside the
    full run, which stays ranked; the leaderboard shows both; a later full run replaces both.
    Fails when the store replaces per scenario whatever the run's size (the old behaviour)."""
    from eval.__main__ import main as eval_cli
    from tests.oracle_server import Oracle

    db = tmp_path / "results.sqlite"
    Store(db).replace_entry("tuned", "local", EARLIER)
    Store(db).replace_entry("base", "local", quick(0.0, 0.0, 0.0))
    run = ["run", "--name", "tuned", "--scenarios", "quick_mc", "--db", str(db), "--out", str(tmp_path / "out")]
    with Oracle(tmp_path) as url:
        assert eval_cli([*run, "--server", url, "--limit", "1"]) == 0
        assert "partial run (3 of 60 instances)" in capsys.readouterr().out
        assert stored(db, "tuned") == {"Quick MC - EM": ("quick_mc", 0.125, 99), "Quick QA - EM": ("quick_qa", 0.25, 99),
                                       "Held-out - EM": ("held_out", 0.375, 99)}
        assert stored(db, "tuned", "partial_results")["Quick MC - EM"][0::2] == ("quick_mc", 3)

        assert call(leaderboard, "--db", db, "--suite", "quick", "--format", "json") == 0
        records = {r["entry"]: r for r in json.loads(capsys.readouterr().out)}
        assert records["tuned"]["metrics"]["Quick MC - EM"] == 0.125  # the full run ranks, not the smoke run
        assert records["tuned"]["instances"] == {"held_out": None, "quick_mc": None, "quick_qa": None}  # imported
        assert records["tuned"]["partial"]["quick_mc"]["instances"] == 3
        assert records["tuned"]["partial"]["quick_mc"]["budget"] == 60
        assert call(leaderboard, "--db", db, "--suite", "quick", "--out", tmp_path / "board") == 0
        printed = capsys.readouterr().out
        assert "Partial runs" in printed and re.search(r"tuned\s+quick_mc\s+3 of 60\s+Quick MC - EM", printed)

        assert eval_cli([*run, "--server", url]) == 0  # the full budget: ranked, and the smoke run is gone
    after = stored(db, "tuned")
    assert after["Quick MC - EM"][2] == 60 and after["Quick QA - EM"] == ("quick_qa", 0.25, 99)
    assert stored(db, "tuned", "partial_results") == {}
    capsys.readouterr()
    assert call(leaderboard, "--db", db, "--suite", "quick", "--format", "json") == 0
    record = {r["entry"]: r for r in json.loads(capsys.readouterr().out)}["tuned"]
    assert record["instances"]["quick_mc"] == 60 and record["partial"] == {}


def test_an_entry_with_only_partial_runs_is_named_and_not_ranked(tmp_path, capsys):
    db = tmp_path / "results.sqlite"
    store = Store(db)
    store.replace_entry("base", "local", quick(0.25, 0.1, 0.0))
    store.replace_scenario("smoke", "local", "quick:mc", [Result("quick:mc", "Quick MC - EM", 1.0, 3, 1.0)],
                           instances=3, budget=60)
    assert call(leaderboard, "--db", db, "--suite", "quick", "--format", "json") == 0
    captured = capsys.readouterr()
    assert [r["entry"] for r in json.loads(captured.out)] == ["base"]
    assert "partial runs only" in captured.err and "smoke" in captured.err
    store.replace_entry("base", "local", [])
    assert call(leaderboard, "--db", db, "--suite", "quick") == 2
    assert "rerun them without --limit" in capsys.readouterr().err
    with pytest.raises(ValueError, match="both instances and budget"):
        store.replace_scenario("smoke", "local", "quick:mc", [], instances=3)


OLD_SCHEMA = """
CREATE TABLE entries (track TEXT NOT NULL, entry TEXT NOT NULL CHECK (length(entry) > 0), source TEXT NOT NULL,
                      recorded_at TEXT NOT NULL, PRIMARY KEY (track, entry));
CREATE TABLE results (track TEXT NOT NULL, entry TEXT NOT NULL, scenario TEXT NOT NULL CHECK (length(scenario) > 0),
                      metric TEXT NOT NULL CHECK (length(metric) > 0),
                      value REAL NOT NULL CHECK (value BETWEEN -1e308 AND 1e308),
                      instances INTEGER NOT NULL CHECK (instances >= 0), seconds REAL NOT NULL CHECK (seconds >= 0),
                      PRIMARY KEY (track, entry, scenario, metric),
                      FOREIGN KEY (track, entry) REFERENCES entries (track, entry));
INSERT INTO entries VALUES ('local', 'old', 'http://x', '2026-11-30T00:00:00Z');
INSERT INTO results VALUES ('local', 'old', 'quick_mc', 'Quick MC - EM', 0.5, 60, 2.0);
"""


def test_a_store_written_before_runs_were_recorded_is_upgraded_in_place(tmp_path):
    db = tmp_path / "old.sqlite"
    with closing(sqlite3.connect(db)) as conn:
        conn.executescript(OLD_SCHEMA)
    store = Store(db)
    assert store.metrics("local") == {"old": {"Quick MC - EM": 0.5}}  # its rows count as full runs
    assert store.instances("local") == {"old": {"quick_mc": None}}
    store.replace_scenario("old", "local", "quick_mc", [Result("quick_mc", "Quick MC - EM", 0.9, 3, 1.0)],
                           instances=3, budget=60)
    assert store.metrics("local") == {"old": {"Quick MC - EM": 0.5}}
    assert store.partial_runs("local")["old"]["quick_mc"].metrics == {"Quick MC - EM": 0.9}
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (1,)


def test_a_server_dying_after_the_first_scenario_keeps_it_and_the_earlier_results(tmp_path, capsys):
    from eval.__main__ import main as eval_cli
    from tests.oracle_server import Oracle

    db = tmp_path / "results.sqlite"
    Store(db).replace_entry("tuned", "local", EARLIER)
    # quick_mc is 3 requests at --limit 1; the server exits on the 4th, in quick_qa.
    with Oracle(tmp_path, die_after=3) as url:
        code = eval_cli(["run", "--server", url, "--name", "tuned", "--scenarios", "quick_mc,quick_qa,held_out",
                         "--limit", "1", "--db", str(db), "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert code == 1 and "error: scenario quick_qa" in printed
    after = stored(db, "tuned")
    assert stored(db, "tuned", "partial_results")["Quick MC - EM"][2] == 3  # the scenario that finished
    assert after["Quick QA - EM"] == ("quick_qa", 0.25, 99)  # the failed one keeps its earlier result
    assert after["Held-out - EM"] == ("held_out", 0.375, 99)  # and so does the one never reached


def test_ctrl_c_during_a_run_keeps_the_finished_scenario_and_the_earlier_results(tmp_path):
    import signal
    import time

    import httpx

    from tests.oracle_server import Oracle

    db = tmp_path / "results.sqlite"
    Store(db).replace_entry("tuned", "local", EARLIER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    with Oracle(tmp_path, slow_after=3) as url:  # quick_mc's 3 requests at once, then a second each
        # The child starts with Ctrl-C as a terminal gives it: a child inherits this test process's signal
        # mask and ignored signals, which in-process training tests and libraries may have changed.
        argv = ["eval", "run", "--server", url, "--name", "tuned", "--scenarios", "quick_mc,quick_qa,held_out",
                "--limit", "1", "--concurrency", "1", "--db", str(db), "--out", str(tmp_path / "out")]
        terminal_ctrl_c = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                           "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
                           f"sys.argv = {argv!r}; runpy.run_module('eval', run_name='__main__')")
        run = subprocess.Popen([sys.executable, "-c", terminal_ctrl_c],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        printed = []
        for line in run.stdout:  # until quick_qa has started
            printed.append(line)
            if line.startswith("[2/3] quick_qa"):
                break
        deadline = time.monotonic() + 120
        while httpx.get(f"{url}/served").json()["served"] <= 3:  # until quick_qa's first (slow) request is out
            assert time.monotonic() < deadline and run.poll() is None, "".join(printed)
            time.sleep(0.05)
        run.send_signal(signal.SIGINT)  # what Ctrl-C sends
        printed.append(run.communicate(timeout=60)[0])
    assert run.returncode != 0 and "KeyboardInterrupt" in "".join(printed), "".join(printed)
    after = stored(db, "tuned")
    assert stored(db, "tuned", "partial_results")["Quick MC - EM"][2] == 3, "".join(printed)  # finished: recorded
    assert after["Quick QA - EM"] == ("quick_qa", 0.25, 99)  # interrupted: its earlier result stays
    assert after["Held-out - EM"] == ("held_out", 0.375, 99)


# --- the leaderboard command ----------------------------------------------------------------------

@pytest.fixture
def local_db(tmp_path) -> Path:
    db = tmp_path / "results.sqlite"
    store = Store(db)
    store.replace_entry("base", "local", quick(0.25, 0.1, 0.0))
    store.replace_entry("tuned", "local", quick(0.5, 0.1, 0.3))
    store.replace_entry("other", "local", quick(0.75, 0.3, 0.1))
    return db


def test_leaderboard_table_writes_markdown_csv_and_png(local_db, tmp_path, capsys):
    out = tmp_path / "board"
    assert call(leaderboard, "--db", local_db, "--suite", "quick", "--out", out) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[1].split() == ["rank", "entry", "Quick", "MC", "Quick", "QA", "Held-out", "quick", "final"]
    # N = 3. other: MC 2/3, QA 2/3, held-out 1/3 -> (4/27)^(1/3) = 0.529. tuned: MC 1/3, QA a tie with
    # base (1/2)/3 = 1/6, held-out 2/3 -> (1/27)^(1/3) = 0.333. base: MC 0, QA 1/6, held-out 0 -> ~0.
    assert [line.split()[1] for line in lines[3:6]] == ["other", "tuned", "base"]
    assert lines[3].split()[-1] == "0.529" and lines[4].split()[-1] == "0.333"

    with open(out / "leaderboard.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["entry"] for row in rows] == ["other", "tuned", "base"]
    assert float(rows[1]["Quick QA"]) == pytest.approx(1 / 6)
    assert float(rows[0]["final"]) == pytest.approx((4 / 27) ** (1 / 3))
    markdown = (out / "leaderboard.md").read_text()
    assert "| 1 | other |" in markdown and "| 3 | base |" in markdown
    image = matplotlib.image.imread(out / "leaderboard.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 300


def test_leaderboard_shows_each_entrys_metric_values_beside_the_win_rates(local_db, tmp_path, capsys):
    # "other" has no held-out value: shown as "-" (empty in the CSV, null in the JSON), ranked as 0.0.
    Store(local_db).replace_entry("other", "local", quick(0.75, 0.3, 0.1)[:2])
    out = tmp_path / "board"
    assert call(leaderboard, "--db", local_db, "--suite", "quick", "--out", out) == 0
    printed = capsys.readouterr().out
    held_out = printed.split("\nHeld-out\n")[1].splitlines()
    assert held_out[0].split() == ["rank", "entry", "mean", "win", "rate", "EM"]
    # N = 3 on held-out: tuned 0.3 beats both (2/3); base's 0.0 and other's missing (0.0) tie: 1/2 / 3 = 1/6.
    assert {line.split()[1]: line.split()[2:] for line in held_out[2:5]} == {
        "tuned": ["0.667", "0.300"], "base": ["0.167", "0.000"], "other": ["0.167", "-"]}
    quick_mc = printed.split("\nQuick MC\n")[1].splitlines()
    assert [line.split()[1:] for line in quick_mc[2:5]] == [["other", "0.667", "0.750"], ["tuned", "0.333", "0.500"],
                                                            ["base", "0.000", "0.250"]]

    with open(out / "leaderboard.csv", newline="") as f:
        rows = {row["entry"]: row for row in csv.DictReader(f)}
    assert rows["tuned"]["Held-out - EM"] == "0.3" and rows["other"]["Held-out - EM"] == ""
    assert float(rows["other"]["Quick MC - EM"]) == 0.75 and float(rows["other"]["Held-out"]) == pytest.approx(1 / 6)
    markdown = (out / "leaderboard.md").read_text()
    assert "### Held-out\n\n| rank | entry | mean win rate | EM |" in markdown
    assert "| 1 | other | 0.667 | 0.750 |" in markdown and "| other | 0.167 | - |" in markdown

    capsys.readouterr()
    assert call(leaderboard, "--db", local_db, "--suite", "quick", "--format", "json") == 0
    records = {r["entry"]: r for r in json.loads(capsys.readouterr().out)}
    assert records["other"]["metrics"] == {"Quick MC - EM": 0.75, "Quick QA - EM": 0.3, "Held-out - EM": None}


def test_chart_labels_every_entry_by_name(local_db, tmp_path, capsys, monkeypatch):
    from eval import report

    labelled: list[list[str]] = []
    original = report._heat_map
    monkeypatch.setattr(report, "_heat_map", lambda ax, *a: (original(ax, *a), labelled.append(
        [t.get_text() for t in ax.get_yticklabels()])))
    assert call(leaderboard, "--db", local_db, "--suite", "quick", "--out", tmp_path / "board") == 0
    assert labelled[0] == ["other", "tuned", "base"]  # rank order, by name
    image = matplotlib.image.imread(tmp_path / "board" / "leaderboard.png")
    assert image.ndim == 3 and image.shape[1] > image.shape[0] > 200


def test_leaderboard_pool_fixes_the_entries_ranked_together(local_db, tmp_path, capsys):
    pool_file = tmp_path / "pool.txt"
    pool_file.write_text("# references\nbase\n")
    assert call(leaderboard, "--db", local_db, "--suite", "quick", "--format", "json",
                "--pool-file", pool_file, "--pool", "tuned") == 0
    records = json.loads(capsys.readouterr().out)
    # N = 2: tuned beats base on MC and held-out and ties QA: (1/2 * 1/4 * 1/2)^(1/3).
    assert [r["entry"] for r in records] == ["tuned", "base"]
    assert records[0]["groups"] == {"Quick MC": 0.5, "Quick QA": 0.25, "Held-out": 0.5}
    assert records[0]["final"] == pytest.approx(records[0]["quick"]) == pytest.approx(0.0625 ** (1 / 3))

    assert call(leaderboard, "--db", local_db, "--suite", "quick", "--pool", "base,ghost") == 2
    assert "ghost" in capsys.readouterr().err


def test_leaderboard_errors_are_clear_and_create_nothing(tmp_path, local_db, capsys):
    missing = tmp_path / "nowhere.sqlite"
    assert call(leaderboard, "--db", missing) == 2
    assert "no results database at" in capsys.readouterr().err and not missing.exists()
    assert call(leaderboard, "--db", local_db, "--track", "a100") == 2
    assert "tracks with entries: local" in capsys.readouterr().err
    assert call(leaderboard, "--db", local_db, "--track", "moon") == 2
    assert "unknown track 'moon'" in capsys.readouterr().err
    assert call(leaderboard, "--db", local_db, "--suite", "competition", "--format", "json") == 2
    assert "--suite quick" in capsys.readouterr().err


def test_leaderboard_leaves_out_entries_the_suite_does_not_score(local_db, capsys):
    Store(local_db).replace_entry("mmlu-only", "local", [Result("mmlu", "MMLU - EM", 0.5, 10, 1.0)])
    assert call(leaderboard, "--db", local_db, "--suite", "quick", "--format", "json") == 0
    captured = capsys.readouterr()
    assert [r["entry"] for r in json.loads(captured.out)] == ["other", "tuned", "base"]
    assert "left out" in captured.err and "mmlu-only" in captured.err


# --- through `python -m eval` ---------------------------------------------------------------------

def test_cli_import_then_leaderboard_json(tmp_path):
    imported = cli(tmp_path, "import", FIXTURE, "--track", "a100")
    assert imported.returncode == 0, imported.stderr
    assert (tmp_path / "runs" / "leaderboard.sqlite").is_file()  # the default database, under the cwd

    board = cli(tmp_path, "leaderboard", "--track", "a100", "--format", "json")
    assert board.returncode == 0, board.stderr
    records = json.loads(board.stdout)  # stdout holds the JSON and nothing else
    theirs = dict(published())
    assert [r["rank"] for r in records] == list(range(1, 10))
    assert set(records[0]) == {"rank", "entry", "groups", "open", "hidden", "final", "metrics", "instances", "partial"}
    assert records[0]["metrics"] == {name: theirs[records[0]["entry"]].get(name) for name in records[0]["metrics"]}
    assert len(records[0]["metrics"]) == 31
    for r in records:
        assert math.isclose(r["final"], theirs[r["entry"]]["Score_full"], abs_tol=0.02)
    assert not (tmp_path / "runs" / "leaderboard" / "leaderboard.md").exists()  # json writes no files unasked

    table = cli(tmp_path, "leaderboard", "--track", "a100")
    assert table.returncode == 0, table.stderr
    assert "percent_bfd_neurips_submission_neurips_submission_2" in table.stdout.splitlines()[3]
    assert (tmp_path / "runs" / "leaderboard" / "leaderboard.png").is_file()

    bad = cli(tmp_path, "import", tmp_path / "absent.json", "--track", "a100")
    assert bad.returncode == 2 and "absent.json" in bad.stderr
