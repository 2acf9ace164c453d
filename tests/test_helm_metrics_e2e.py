"""End to end: a server that knows the answers gets, per metric, exactly what HELM's metric code gives.

The oracle (tests/oracle_server.py, a real uvicorn server) answers each instance with the completion of
a golden case (tests/fixtures/helm/metrics/cases.json: values computed by the judges' fork's own metric
code). The instances go through the whole chain a run uses: our documents and lm-eval tasks, the HTTP
client, lm-eval's generation and scoring hooks, and the runner's reduction to HELM metrics.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.adapters import Format, Instance
from eval.client import ChallengeAPI
from eval.runner import evaluate, helm_metrics
from eval.task_spec import Generation, TaskSpec
from tests.oracle_server import Oracle

GOLDEN = Path(__file__).parent / "fixtures" / "helm" / "metrics"
CASES = json.loads((GOLDEN / "cases.json").read_text())
BIAS_RUNS = json.loads((GOLDEN / "bias.json").read_text())
BIAS_NAMES = {"stereotypes_race": "Stereotypes (race)", "stereotypes_gender": "Stereotypes (gender)",
              "representation_race": "Representation (race)", "representation_gender": "Representation (gender)"}
# HELM metric -> (our scoring template, the per-sample key lm-eval logs for it)
TEMPLATES = {
    "exact_match": ("exact_match", "em"),
    "quasi_exact_match": ("quasi_exact_match", "em"),
    "exact_match_indicator": ("final_token", "em"),
    "rouge_2": ("rouge2", "rouge2"),
    "math_equiv_chain_of_thought": ("math_equiv", "equiv"),
}


def instance(number: int, case: dict) -> Instance:
    question = f"Case Z{number}Z: {case['note']}"  # the oracle finds its answer by the Z<n>Z marker
    if "choices" in case:
        return Instance(question, case["answer"], tuple(case["choices"]))
    return Instance(question, case["golds"][0], golds=tuple(case["golds"][1:]))


def test_oracle_completions_score_exactly_what_helm_computes(tmp_path):
    specs, answers, expected = [], {}, {}
    for metric, (template, key) in TEMPLATES.items():
        numbered = [(n, c) for n, c in enumerate(CASES) if c["metric"] == metric]
        answers.update({str(n): c["completion"] for n, c in numbered})
        expected[metric] = [c["helm"] for _, c in numbered]
        specs.append(TaskSpec(name=f"oracle_{metric}", metric=f"Oracle - {metric}", scoring=template, fmt=Format(),
                              train=(), test=tuple(instance(n, c) for n, c in numbered),
                              generation=Generation(max_new_tokens=50)))
    with Oracle(tmp_path, answers, default="(no answer)") as url:
        output = evaluate(ChallengeAPI(url, concurrency=30, progress=False), specs, tmp_path / "tasks", None)
    for spec in specs:
        metric = spec.name.removeprefix("oracle_")
        key = TEMPLATES[metric][1]
        rows = sorted(output["samples"][spec.name], key=lambda row: row["doc_id"])
        # Instance by instance: the oracle's completion was scored as HELM scores it.
        assert [row["resps"][0][0] for row in rows] == [answers[str(n)] for n, c in enumerate(CASES)
                                                      if c["metric"] == metric]
        assert [row[key] for row in rows] == expected[metric], metric
    # And the run's HELM metric is the mean over instances, as HELM's per-run statistic.
    results = {r.metric: r for r in helm_metrics("oracle", specs, output, 1.0)}
    for metric, values in expected.items():
        assert results[f"Oracle - {metric}"].value == pytest.approx(sum(values) / len(values), rel=1e-12, abs=0)
        assert results[f"Oracle - {metric}"].instances == len(values)


def test_math_run_through_the_cli_scores_what_helm_computes(tmp_path, capsys):
    """`python -m eval run --scenarios math` on competition_math rows: the metric recorded is the mean of
    the fork's per-instance values (before the fix every answer scored 0: the gold was the whole solution)."""
    import sqlite3

    from eval.__main__ import main as eval_cli

    # The MATH cases whose gold solution has a boxed answer, as every competition_math solution does.
    cases = [(n, c) for n, c in enumerate(CASES)
             if c["metric"] == "math_equiv_chain_of_thought" and "\\boxed{" in c["golds"][0]]
    folder = tmp_path / "data" / "math"
    folder.mkdir(parents=True)

    def row(problem: str, solution: str) -> str:
        return json.dumps({"problem": problem, "level": "Level 1", "type": "Number Theory", "solution": solution})

    (folder / "train.jsonl").write_text("".join(row(f"What is {k} + {k}?", f"It is $\\boxed{{{2 * k}}}$.") + "\n"
                                                for k in range(1, 9)))
    (folder / "test.jsonl").write_text("".join(row(f"Problem Z{n}Z: {c['note']}", c["golds"][0]) + "\n"
                                               for n, c in cases))
    db = tmp_path / "results.sqlite"
    with Oracle(tmp_path, {str(n): c["completion"] for n, c in cases}) as url:
        assert eval_cli(["run", "--server", url, "--name", "oracle", "--scenarios", "math", "--data",
                         str(tmp_path / "data"), "--db", str(db), "--out", str(tmp_path / "out")]) == 0
    with sqlite3.connect(db) as conn:
        ((value, instances),) = conn.execute("SELECT value, instances FROM results WHERE entry = 'oracle'")
    helm = [c["helm"] for _, c in cases]
    assert instances == len(helm) and 0 < sum(helm) < len(helm)
    assert value == pytest.approx(sum(helm) / len(helm), rel=1e-12, abs=0)


def test_sam_sum_run_through_the_cli_records_helms_bias_metrics(tmp_path):
    """`python -m eval run --scenarios sam_sum`: the oracle answers each dialogue with a golden run's
    completion; the run records ROUGE-2 and the four bias metrics with the fork's values (a metric HELM
    records no value for is missing). Fails if the runner drops the run-level metrics."""
    import sqlite3

    from eval.__main__ import main as eval_cli

    for run in BIAS_RUNS[:2] + BIAS_RUNS[3:4]:  # values in (0, 1), and a run without any group word
        folder = tmp_path / run["note"] / "data" / "sam_sum"
        folder.mkdir(parents=True)
        rows = "".join(f"d{n}\t\"Ann: see you Z{n}Z\"\tAnn will see them.\n" for n in range(len(run["completions"])))
        (folder / "samsum.tsv").write_text("id\tdialogue\tsummary\n" + rows)
        db = tmp_path / run["note"] / "results.sqlite"
        with Oracle(tmp_path, {str(n): text for n, text in enumerate(run["completions"])}) as url:
            assert eval_cli(["run", "--server", url, "--name", "oracle", "--scenarios", "sam_sum", "--data",
                             str(folder.parent), "--db", str(db), "--out", str(tmp_path / run["note"] / "out")]) == 0
        with sqlite3.connect(db) as conn:
            recorded = dict(conn.execute("SELECT metric, value FROM results WHERE entry = 'oracle'").fetchall())
        expected = {f"sam_sum - {BIAS_NAMES[m]}": pytest.approx(v, rel=1e-12, abs=0)
                    for m, v in run["helm"].items() if v is not None}
        assert {m: v for m, v in recorded.items() if m != "sam_sum - ROUGE-2"} == expected, run["note"]
