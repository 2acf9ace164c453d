"""End to end: the real server on the tiny model, the quick suite over HTTP through lm-eval, the results
in SQLite, and the leaderboard ranking two entries (the server, and the same model evaluated in-process)."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from eval.__main__ import main as cli
from eval.scenarios import SCENARIOS
from tests.helpers import free_port

LIMIT = 2
QUICK = ["quick_mc", "quick_qa", "held_out"]  # run at their full budget: ranked
# The rest of the quick suite at --limit (partial runs), but fixture_gsm8k: its 400-token requests take ~20 s each
# on the tiny CPU server, and its prompt and scoring are covered in test_eval_prompts.py.
FIXTURES = [s.name for s in SCENARIOS.values()
            if s.suite == "quick" and s.name not in QUICK and s.name != "fixture_gsm8k"]


def rows(db, entry: str, table: str = "results") -> dict[str, tuple[float, int, float]]:
    with sqlite3.connect(db) as conn:
        found = conn.execute(f"SELECT metric, value, instances, seconds FROM {table} WHERE entry = ?", (entry,))
        return {metric: (value, n, s) for metric, value, n, s in found}


def completions(out: Path, scenario: str) -> dict[tuple[str, int], str]:
    lines = (out / f"{scenario}_samples.jsonl").read_text().splitlines()
    return {(s["task"], s["doc_id"]): s["resps"][0][0] for s in map(json.loads, lines)}


@pytest.mark.slow  # a served model through the whole suite
def test_quick_suite_over_http_then_leaderboard(default_server, tiny_model, tmp_path, capsys):
    """The served model and the same model in-process answer every request alike and score alike; both
    rank; the served entry's smoke runs are shown apart. Fails if the server's greedy decoding drifts from
    the model's (e.g. a mutant that drops the last prompt token)."""
    db, out, local = tmp_path / "results.sqlite", tmp_path / "out", tmp_path / "local"
    served_run = ["run", "--server", default_server.url, "--name", "served", "--db", str(db), "--out", str(out)]
    assert cli([*served_run, "--scenarios", ",".join(QUICK)]) == 0
    assert cli([*served_run, "--scenarios", ",".join(FIXTURES), "--limit", str(LIMIT)]) == 0

    for scenario in map(SCENARIOS.get, QUICK + FIXTURES):
        specs = [s for s in scenario.build(tmp_path, scenario.budget) if s.test]
        report = json.loads((out / f"{scenario.name}.json").read_text())
        assert set(report["results"]) == {s.name for s in specs}  # lm-eval's results JSON, every task
        assert (out / f"{scenario.name}_samples.jsonl").stat().st_size > 0
    served = {m: row for m, row in rows(db, "served").items() if m.startswith(("Quick", "Held-out"))}
    assert {metric: n for metric, (_, n, _) in served.items()} == {"Quick MC - EM": 60, "Quick QA - EM": 60,
                                                                   "Held-out - EM": 60}
    # Fixture BIG-bench holds 2 instances a task: --limit 2 runs all 16 of them, a full run.
    assert rows(db, "served")["Fixture BIG-bench - EM"][1] == 16
    partial = set(rows(db, "served", "partial_results"))
    assert {"Fixture MMLU - EM", "Fixture MMLU - EM (Robustness)", "Fixture MMLU - EM (Fairness)",
            "Fixture sam_sum - ROUGE-2"} <= partial
    # SAMSum's bias metrics have a value only where the summaries name a group (eval/bias.py).
    assert {m.split(" - ")[1].split(" (")[0] for m in partial if m.startswith("Fixture sam_sum - ")} <= {
        "ROUGE-2", "Stereotypes", "Representation"}
    # What the server answered is what was scored: the samples hold the raw completions.
    sample = json.loads((out / "quick_mc_samples.jsonl").read_text().splitlines()[0])
    assert sample["arguments"][0][0].endswith("\nAnswer:") and isinstance(sample["resps"][0][0], str)

    # The same model in-process (target b), as a second entry: the same answers, so the same scores.
    assert cli(["run", "--model", str(tiny_model), "--name", "in-process", "--scenarios", ",".join(QUICK),
                "--db", str(db), "--out", str(local)]) == 0
    for scenario in QUICK:
        assert completions(out, scenario) == completions(local, scenario), scenario
    assert {m: v for m, (v, _, _) in rows(db, "in-process").items()} == {m: v for m, (v, _, _) in served.items()}

    capsys.readouterr()
    assert cli(["leaderboard", "--db", str(db), "--suite", "quick", "--format", "json"]) == 0
    ranking = {r["entry"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(ranking) == {"in-process", "served"}
    assert ranking["served"]["groups"] == ranking["in-process"]["groups"]  # equal values tie on every metric
    assert ranking["served"]["instances"] == {**{name: 60 for name in QUICK}, "fixture_bigbench": 16}
    assert set(ranking["served"]["partial"]) == set(FIXTURES) - {"fixture_bigbench"}
    assert ranking["in-process"]["partial"] == {}


def test_unreachable_server_fails_clearly_and_records_nothing(tmp_path, capsys):
    db = tmp_path / "results.sqlite"
    code = cli(["run", "--server", f"http://127.0.0.1:{free_port()}", "--name", "down", "--scenarios", "quick_mc",
                "--limit", "1", "--db", str(db), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 1
    assert "scenario quick_mc: ServerError: request 0 (task quick_mc_" in out and "unreachable" in out
    assert not db.exists() or rows(db, "down") == {}


def test_hidden_round_from_the_judges_files(tiny_model, tmp_path):
    """A data root holding the fork's files (our small ones, under the fork's names) runs through lm-eval:
    lm-eval sends the prompts the fork builds for the same instances (HELM's seed-0 draw of 2 is the first 2
    of its draw of 3, the golden's), and the scenario's metrics are recorded."""
    helm = Path(__file__).parent / "fixtures" / "helm"
    db, out = tmp_path / "results.sqlite", tmp_path / "out"
    assert cli(["run", "--model", str(tiny_model), "--name", "hidden", "--scenarios", "ethics_justice",
                "--budget", "ethics_justice=2", "--data", str(helm / "data"), "--db", str(db), "--out", str(out)]) == 0
    # 2 of the file's instances: a run smaller than the scenario's full budget, recorded apart (partial)
    assert set(rows(db, "hidden", "partial_results")) == {"ethics_justice - EM", "ethics_justice - EM (Robustness)",
                                                         "ethics_justice - EM (Fairness)"}
    golden = json.loads((helm / "prompts" / "ethics_justice.json").read_text())["requests"]
    sent = [json.loads(line) for line in (out / "ethics_justice_samples.jsonl").read_text().splitlines()]
    assert [s["arguments"][0][0] for s in sent if s["task"] == "ethics_justice"] == [r["prompt"] for r in golden[:2]]
