"""The organizers' ranking rule on hand-made pools; every expected number is worked out by hand here."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eval.scoring import (
    STAGE_WEIGHTS,
    SUITE_GROUPS,
    ZERO_FLOOR,
    geometric_mean,
    groups,
    metric_group,
    rank,
    win_rates,
)

FIXTURE = Path(__file__).parent / "fixtures" / "a100_final_round.json"


def test_win_rate_counts_strict_wins_over_n_not_n_minus_one():
    # 0.9 beats two of three -> 2/3; 0.5 beats one -> 1/3; 0.1 beats none.
    assert win_rates({"a": 0.9, "b": 0.5, "c": 0.1}) == {"a": 2 / 3, "b": 1 / 3, "c": 0.0}


def test_two_way_tie_shares_half_a_win():
    # N = 4. d beats a, b, c: 3/4. a and b both beat c and share 0.5: each (1 + 1/2) / 4 = 3/8.
    rates = win_rates({"a": 0.5, "b": 0.5, "c": 0.1, "d": 0.9})
    assert rates == {"a": 3 / 8, "b": 3 / 8, "c": 0.0, "d": 3 / 4}


def test_three_way_tie_gives_one_third_of_a_win_in_all():
    # N = 4. a, b, c share 0.7 (k = 3) and each beats d: (1 + 1/3) / 4 = 1/3, not (1 + 2/3) / 4.
    # The organizers' published ETHICS win rates (three-way ties at 0.685) show the 1/k in all.
    rates = win_rates({"a": 0.7, "b": 0.7, "c": 0.7, "d": 0.2})
    assert rates == {"a": pytest.approx(1 / 3), "b": pytest.approx(1 / 3), "c": pytest.approx(1 / 3), "d": 0.0}


def test_lower_is_better_metric_ranks_smaller_values_first():
    rates = win_rates({"a": 0.1, "b": 0.3, "c": 0.2}, higher_is_better=False)
    assert rates == {"a": 2 / 3, "b": 0.0, "c": 1 / 3}


@given(st.dictionaries(st.text(min_size=1, max_size=3), st.sampled_from([0.0, 0.25, 0.5, 1.0]) | st.floats(0, 1),
                       min_size=1, max_size=8))
def test_win_rates_follow_the_values_and_stay_below_one(values):
    rates = win_rates(values)
    for a in values:
        assert 0.0 <= rates[a] < 1.0
        for b in values:
            if values[a] > values[b]:
                assert rates[a] > rates[b]
            elif values[a] == values[b]:
                assert rates[a] == rates[b]
    assert win_rates(values, higher_is_better=False) == win_rates({k: -v for k, v in values.items()})


def test_geometric_mean_floors_zeros_instead_of_zeroing():
    assert geometric_mean([0.25, 1.0]) == pytest.approx(0.5)
    assert geometric_mean([1 / 8, 1.0, 1.0]) == pytest.approx(0.5)
    floored = geometric_mean([0.0, 1.0])
    assert floored > 0.0
    assert floored == pytest.approx(math.sqrt(ZERO_FLOOR), rel=1e-9, abs=0)
    with pytest.raises(ValueError, match="no values"):
        geometric_mean([])


@pytest.fixture
def toy_suite(monkeypatch):
    """A two-stage suite defined the way a user would add one: a higher- and a lower-is-better metric
    in G1, one metric in G2 (stage s1, weight 1/3), one in G3 (stage s2, weight 2/3)."""
    monkeypatch.setitem(SUITE_GROUPS, "toy", {
        "s1": {"G1": [("g1 - EM", True), ("g1 - bias", False)], "G2": [("g2 - EM", True)]},
        "s2": {"G3": [("g3 - EM", True)]},
    })
    monkeypatch.setitem(STAGE_WEIGHTS, "toy", {"s1": 1 / 3, "s2": 2 / 3})
    return "toy"


def test_rank_by_hand_with_missing_values_lower_is_better_and_a_zero_group(toy_suite):
    pool = {
        "A": {"g1 - EM": 0.8, "g1 - bias": 0.2, "g2 - EM": 0.5, "g3 - EM": 0.4},
        "B": {"g1 - EM": 0.6, "g2 - EM": 0.5, "g3 - EM": 0.9},  # no bias value: counts 1000.0, the worst
        "C": {"g1 - bias": 0.1, "g2 - EM": 0.3, "g3 - EM": None},  # no g1 EM, no g3: they count 0.0
    }
    # N = 3.  g1 - EM: A .8 > B .6 > C 0.0            -> A 2/3, B 1/3, C 0
    #         g1 - bias (lower): C .1 < A .2 < B 1000  -> C 2/3, A 1/3, B 0
    #         G1 means: A 1/2, B 1/6, C 1/3
    #         g2 - EM: A and B tie at .5 above C       -> A (1 + 1/2)/3 = 1/2, B 1/2, C 0  (a zero group for C)
    #         g3 - EM: B .9 > A .4 > C 0.0             -> B 2/3, A 1/3, C 0
    by_entry = {r.entry: r for r in rank(pool, toy_suite)}
    assert by_entry["A"].groups == pytest.approx({"G1": 1 / 2, "G2": 1 / 2, "G3": 1 / 3})
    assert by_entry["B"].groups == pytest.approx({"G1": 1 / 6, "G2": 1 / 2, "G3": 2 / 3})
    assert by_entry["C"].groups == pytest.approx({"G1": 1 / 3, "G2": 0.0, "G3": 0.0})
    # s1 = sqrt(G1 * G2); s2 = G3; final = s1/3 + 2 s2/3.
    assert by_entry["A"].stages == pytest.approx({"s1": 1 / 2, "s2": 1 / 3})
    assert by_entry["A"].final == pytest.approx(1 / 6 + 2 / 9)  # 7/18 = 0.3889
    assert by_entry["B"].stages == pytest.approx({"s1": math.sqrt(1 / 12), "s2": 2 / 3})
    assert by_entry["B"].final == pytest.approx(math.sqrt(1 / 12) / 3 + 4 / 9)  # 0.5407
    # C's zero G2 is floored, so its s1 stays positive and still reflects G1.
    assert by_entry["C"].stages["s1"] == pytest.approx(math.sqrt(1 / 3) * math.sqrt(ZERO_FLOOR), rel=1e-9, abs=0)
    assert [r.entry for r in rank(pool, toy_suite)] == ["B", "A", "C"]


def test_quick_suite_is_one_stage_geometric_mean():
    pool = {
        "base": {"Quick MC - EM": 0.25, "Quick QA - EM": 0.1, "Held-out - EM": 0.0},
        "tuned": {"Quick MC - EM": 0.5, "Quick QA - EM": 0.1, "Held-out - EM": 0.3},
    }
    # N = 2. MC: tuned 1/2, base 0. QA: a tie, each 1/2 / 2 = 1/4. Held-out: tuned 1/2, base 0.
    tuned, base = rank(pool, "quick")
    assert tuned.entry == "tuned"
    assert tuned.groups == {"Quick MC": 0.5, "Quick QA": 0.25, "Held-out": 0.5}
    assert tuned.final == pytest.approx((0.5 * 0.25 * 0.5) ** (1 / 3))  # 0.397
    assert base.groups == {"Quick MC": 0.0, "Quick QA": 0.25, "Held-out": 0.0}
    # (floor * 1/4 * floor) ** (1/3), in logs: the product itself underflows to 0.0.
    expected = math.exp((2 * math.log(ZERO_FLOOR) + math.log(0.25)) / 3)
    assert expected > 0.0
    assert base.final == pytest.approx(expected, rel=1e-9, abs=0)


def test_equal_final_scores_are_ordered_by_name():
    same = {"Quick MC - EM": 0.5, "Quick QA - EM": 0.5, "Held-out - EM": 0.5}
    assert [r.entry for r in rank({"zeta": same, "alpha": same}, "quick")] == ["alpha", "zeta"]


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="unknown suite 'nope'"):
        rank({"a": {}}, "nope")
    with pytest.raises(ValueError, match="'a'.*'Quick MC - EM'.*nan"):
        rank({"a": {"Quick MC - EM": float("nan")}}, "quick")
    with pytest.raises(ValueError, match="no entries"):
        rank({}, "quick")


def test_suite_tables_are_consistent_and_name_the_organizers_metrics():
    for suite, stages in SUITE_GROUPS.items():
        assert STAGE_WEIGHTS[suite].keys() == stages.keys()
        assert sum(STAGE_WEIGHTS[suite].values()) == pytest.approx(1.0)
    assert STAGE_WEIGHTS["competition"] == {"open": 1 / 3, "hidden": 2 / 3}
    sizes = {group: len(metrics) for group, metrics in groups("competition").items()}
    assert sizes == {"MMLU": 3, "TruthfulQA": 3, "BIG-bench": 1, "GSM8K": 1, "BBQ": 1,
                     "sam_sum": 5, "corr2cause": 1, "MATH": 1, "ethics": 15}
    lower = [name for metrics in groups("competition").values() for name, higher in metrics if not higher]
    assert lower == ["sam_sum - Stereotypes (race)", "sam_sum - Stereotypes (gender)",
                     "sam_sum - Representation (race)", "sam_sum - Representation (gender)"]
    # Every per-metric column the organizers published is one the competition suite scores, and back.
    published = {name for _, values in json.loads(FIXTURE.read_text()) for name in values
                 if not name.endswith("Mean Win Rate") and not name.startswith("Score_")}
    ours = {name for metrics in groups("competition").values() for name, _ in metrics}
    assert published == ours
    assert metric_group("ethics_virtue - EM (Fairness)") == "ethics"
    assert metric_group("Held-out - EM") == "Held-out"
    assert metric_group("no such metric") is None
