"""Our per-instance scoring gives, case by case, the value the judges' HELM fork computes; so do SAMSum's
bias metrics, run by run.

The expected values in tests/fixtures/helm/metrics/cases.json were computed by the fork's own metric code
(scripts/helm/metrics_golden.py, run in a side venv) on (reference, completion) pairs written for this
project: answers only HELM's MATH normalisation accepts, near misses, and the shapes its code trips on.
bias.json holds the fork's BiasMetric values over a few runs' completions.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval import bias
from eval.tasks import utils

GOLDEN = Path(__file__).parent / "fixtures" / "helm" / "metrics"
CASES = json.loads((GOLDEN / "cases.json").read_text())
BIAS_RUNS = json.loads((GOLDEN / "bias.json").read_text())
# HELM metric name -> (our lm-eval hook, the key it reports)
OURS = {
    "exact_match": (utils.exact_match, "em"),
    "quasi_exact_match": (utils.quasi_exact_match, "em"),
    "exact_match_indicator": (utils.final_token_match, "em"),
    "rouge_2": (utils.rouge2, "rouge2"),
    "math_equiv_chain_of_thought": (utils.math_equiv, "equiv"),
}


def document(case: dict) -> dict:
    """The lm-eval document eval/task_files.py writes for such an instance."""
    if "choices" in case:
        letter = chr(ord("A") + case["answer"])
        return {"gold": letter, "golds": [letter], "choices": case["choices"]}
    return {"gold": case["golds"][0], "golds": case["golds"]}


@pytest.mark.parametrize("case", CASES, ids=[f"{c['metric']}:{c['note']}" for c in CASES])
def test_per_instance_value_equals_helms(case):
    hook, key = OURS[case["metric"]]
    assert hook(document(case), [case["completion"]])[key] == case["helm"]


def test_the_cases_cover_each_metric_both_ways():
    for metric in OURS:
        values = {c["helm"] for c in CASES if c["metric"] == metric}
        assert {0.0, 1.0} <= values, metric
    # Answers that only HELM's normalisation accepts are there (not equal as written, equivalent for HELM).
    accepted = [c for c in CASES if c["metric"] == "math_equiv_chain_of_thought" and c["helm"] == 1.0
                and utils.last_boxed(c["golds"][0]) != utils.last_boxed(c["completion"])]
    assert len(accepted) >= 15


def test_math_gold_is_the_whole_solution_as_the_documents_carry_it():
    # The fault of issue 11: the metric received the whole solution as gold and compared it to the
    # completion's boxed answer, so every answer scored 0.
    solution = "Half of 6 is 3, so the probability is $\\frac{3}{6} = \\boxed{\\frac{1}{2}}$."
    assert utils.math_equiv({"gold": solution}, ["So $p = \\boxed{0.5}$."])["equiv"] == 1.0
    assert utils.math_equiv({"gold": solution}, ["So $p = \\boxed{2/4}$."])["equiv"] == 0.0


def test_math_normalisation_by_hand():
    assert utils.normalize_math("x = \\dfrac12") == "\\frac{1}{2}"
    assert utils.normalize_math("5\\text{ cm}") == "5"
    assert utils.normalize_math("3/4") == "\\frac{3}{4}"
    with pytest.raises(IndexError):
        utils.normalize_math("2\\sqrt")
    assert utils.last_boxed("\\boxed{a{b}c} then \\boxed{d}") == "d"
    assert utils.last_boxed("\\boxed{a{b}c}") == "a{b}c"


@pytest.mark.parametrize("run", BIAS_RUNS, ids=[r["note"] for r in BIAS_RUNS])
def test_bias_metrics_equal_helms(run):
    """Each bias metric over a run's completions, or None where HELM records no value. Fails on a word
    tokenizer without Punkt's sentences ("nurse." stays one token) and on counting group words once per text."""
    for metric, value in run["helm"].items():
        ours = bias.bias(metric, run["completions"])
        assert ours == (None if value is None else pytest.approx(value, rel=1e-12, abs=0)), metric


def test_the_bias_runs_cover_each_metric_both_ways():
    for metric in bias.METRICS:
        values = [r["helm"][metric] for r in BIAS_RUNS]
        assert None in values and any(v is not None and 0 < v < 1 for v in values), metric
