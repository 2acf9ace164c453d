"""The organizers' ranking rule (challenge.md §4) as pure functions over {entry: {metric: value}}.

Per metric, each entry's win rate over the N entries of the pool; per group, the mean of those win
rates; per stage, the geometric mean of the group means; the final score, a weighted sum of stages
(competition: 1/3 open + 2/3 hidden).

Two details were settled against the organizers' published A100 final-round tables, which this rule
reproduces to the last digit (tests/test_leaderboard.py):
- ties: k entries sharing exactly one value each get 1/k of a win in all (not 1/k per tied rival);
  the published ETHICS and GSM8K win rates of three-way ties show it.
- a missing value counts 0.0 for a higher-is-better metric and 1000.0 for a lower-is-better one,
  whether or not the entry has other metrics of that scenario; the published sam_sum win rates
  only come out this way.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

# suite -> stage -> group -> [(metric name, higher is better)]. Metric names are HELM's, exactly as the
# organizers print them. Add a suite here (and its stage weights below) to rank a new set of scenarios.
SUITE_GROUPS: dict[str, dict[str, dict[str, list[tuple[str, bool]]]]] = {
    "competition": {
        "open": {
            "MMLU": [("MMLU - EM", True), ("MMLU - EM (Robustness)", True), ("MMLU - EM (Fairness)", True)],
            "TruthfulQA": [
                ("TruthfulQA - EM", True),
                ("TruthfulQA - EM (Robustness)", True),
                ("TruthfulQA - EM (Fairness)", True),
            ],
            "BIG-bench": [("BIG-bench - EM", True)],
            "GSM8K": [("GSM8K - EM", True)],
            "BBQ": [("BBQ - EM", True)],
        },
        "hidden": {
            "sam_sum": [
                ("sam_sum - ROUGE-2", True),
                ("sam_sum - Stereotypes (race)", False),
                ("sam_sum - Stereotypes (gender)", False),
                ("sam_sum - Representation (race)", False),
                ("sam_sum - Representation (gender)", False),
            ],
            "corr2cause": [("corr2cause - EM", True)],
            "MATH": [("MATH (chain-of-thoughts) - Equivalent (chain of thought)", True)],
            "ethics": [
                (f"ethics_{part} - EM{variant}", True)
                for part in ("justice", "commonsense", "virtue", "deontology", "utilitarianism")
                for variant in ("", " (Robustness)", " (Fairness)")
            ],
        },
    },
    "quick": {
        "quick": {group: [(f"{group} - EM", True)] for group in ("Quick MC", "Quick QA", "Held-out")},
    },
}
# suite -> stage -> weight of that stage's score in the final score.
STAGE_WEIGHTS: dict[str, dict[str, float]] = {
    "competition": {"open": 1 / 3, "hidden": 2 / 3},
    "quick": {"quick": 1.0},
}
SUITES = tuple(SUITE_GROUPS)

MISSING_HIGHER_IS_BETTER = 0.0
MISSING_LOWER_IS_BETTER = 1000.0
ZERO_FLOOR = math.ulp(0.0)  # the smallest positive float, standing in for a zero group mean


@dataclass(frozen=True)
class Ranking:
    """One entry's place on the leaderboard."""

    entry: str
    groups: dict[str, float]  # group -> mean win rate
    stages: dict[str, float]  # stage -> geometric mean of its groups' mean win rates
    final: float
    values: dict[str, float | None]  # each metric of the suite -> the entry's value (None: missing)
    win_rates: dict[str, float]  # each metric of the suite -> the entry's win rate on it


def groups(suite: str) -> dict[str, list[tuple[str, bool]]]:
    """All groups of a suite, stage by stage, in the organizers' order."""
    return {group: metrics for stage in _stages(suite).values() for group, metrics in stage.items()}


def metric_group(name: str) -> str | None:
    """The group a metric name belongs to in any suite, or None when no suite scores it."""
    for suite in SUITES:
        for group, metrics in groups(suite).items():
            if any(metric == name for metric, _ in metrics):
                return group
    return None


def win_rates(values: Mapping[str, float], higher_is_better: bool = True) -> dict[str, float]:
    """Each entry's win rate on one metric: (rivals strictly beaten + 1/k when k entries share its
    value) / N, over the N entries given (every entry needs a value: fill missing ones first)."""
    n = len(values)
    sharing = Counter(values.values())
    rates = {}
    for entry, value in values.items():
        beaten = sum(1 for other in values.values() if (other < value if higher_is_better else other > value))
        tie_credit = 1 / sharing[value] if sharing[value] > 1 else 0.0
        rates[entry] = (beaten + tie_credit) / n
    return rates


def geometric_mean(values: list[float]) -> float:
    """Geometric mean with zeros floored at the smallest positive float (one last place does not
    zero the rest); computed in logs, so the floor does not underflow the product."""
    if not values:
        raise ValueError("geometric mean of no values")
    if any(v < 0 for v in values):
        raise ValueError(f"geometric mean of negative values: {values}")
    return math.exp(sum(math.log(max(v, ZERO_FLOOR)) for v in values) / len(values))


def rank(metrics: Mapping[str, Mapping[str, float | None]], suite: str = "competition") -> list[Ranking]:
    """Rank every entry of `metrics` (entry -> {metric name: value or None}) against the others with
    the organizers' rule; best first, ties in final score by entry name."""
    if not metrics:
        raise ValueError("nothing to rank: no entries")
    group_means: dict[str, dict[str, float]] = {entry: {} for entry in metrics}
    metric_rates: dict[str, dict[str, float]] = {entry: {} for entry in metrics}
    for group, group_metrics in groups(suite).items():
        per_metric = {name: win_rates(_filled(metrics, name, higher), higher) for name, higher in group_metrics}
        for entry in metrics:
            group_means[entry][group] = sum(rates[entry] for rates in per_metric.values()) / len(per_metric)
            metric_rates[entry].update({name: rates[entry] for name, rates in per_metric.items()})
    rankings = []
    for entry, means in group_means.items():
        stages = {
            stage: geometric_mean([means[group] for group in stage_groups])
            for stage, stage_groups in _stages(suite).items()
        }
        final = sum(STAGE_WEIGHTS[suite][stage] * score for stage, score in stages.items())
        values = {name: metrics[entry].get(name) for name in metric_rates[entry]}
        rankings.append(Ranking(entry, means, stages, final, values, metric_rates[entry]))
    return sorted(rankings, key=lambda r: (-r.final, r.entry))


def _filled(metrics: Mapping[str, Mapping[str, float | None]], name: str, higher: bool) -> dict[str, float]:
    missing = MISSING_HIGHER_IS_BETTER if higher else MISSING_LOWER_IS_BETTER
    values = {}
    for entry, entry_metrics in metrics.items():
        value = entry_metrics.get(name)
        if value is not None and not math.isfinite(value):
            raise ValueError(f"entry {entry!r}: metric {name!r} is {value}, not a finite number")
        values[entry] = missing if value is None else float(value)
    return values


def _stages(suite: str) -> dict[str, dict[str, list[tuple[str, bool]]]]:
    if suite not in SUITE_GROUPS:
        raise ValueError(f"unknown suite {suite!r}; known suites: {', '.join(SUITES)}")
    return SUITE_GROUPS[suite]
