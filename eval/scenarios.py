"""The scenarios: what the judges ran (challenge.md §3; the organizers' HELM fork and its run-spec confs), as
lm-eval tasks this harness writes and runs. This module is the registry: `SCENARIOS` (every scenario by
name, with its suite and the judges' budget), the suites (`SUITES`, `suite`) and the quick suite's own
builders (generated tasks, and the open set's builders on the project's fixtures).

A scenario (MMLU, GSM8K, ...) builds its tasks from data on disk: every task is one HELM run (an MMLU
subject, a BIG-bench entry at one shot count, ...) with its evaluation instances, its in-context examples,
the prompt format of the fork's run spec, the request settings and the HELM metric it feeds
(eval/task_spec.py). The builders live by set: eval/open_scenarios.py (MMLU, TruthfulQA, BIG-bench, GSM8K,
BBQ) and eval/hidden_scenarios.py (ETHICS, Corr2Cause, SAMSum, MATH, CNN/DailyMail); eval/task_files.py
writes a task as one lm-eval YAML plus its JSONL documents, each document holding the full prompt.

Data comes from a data root (default `$HARNESS_CACHE/eval-data`), one folder per scenario holding the
judges' files under the fork's names (`ethics_justice/justice_hard.csv`, `sam_sum/samsum.tsv`,
`mmlu/test/anatomy_test.csv`, ...; docs/eval.md lists them), read as the fork reads them (eval/sources.py).
Instance selection is HELM's (eval/task_spec.py).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from eval.adapters import Format, Instance
from eval.hidden_scenarios import MATH_BUDGETS, cnn_dm, hidden_mc, math_scenario, sam_sum
from eval.open_scenarios import (
    BIGBENCH_BUDGETS,
    BIGBENCH_SHOTS,
    MMLU_BUDGETS,
    bbq,
    bigbench,
    gsm8k,
    mmlu,
    truthful_qa,
)
from eval.task_spec import MC_GEN, Budget, Generation, TaskSpec, per_task

FIXTURES = Path(__file__).parent / "fixtures"
QUICK_SEED = 99  # eval instances of the generated tasks; training uses other seeds


@dataclass(frozen=True)
class Scenario:
    name: str
    suite: str  # open, hidden or quick
    budget: int  # the judges' evaluation instances over all its tasks (shown; --budget overrides it)
    build: Callable[[Path, Budget], list[TaskSpec]]  # (data root, budget) -> tasks; MissingData if absent
    note: str = ""


# ---- the quick suite ----------------------------------------------------------------------------------


def generated_scenario(task_names: list[str], group: str) -> Callable[[Path, Budget], list[TaskSpec]]:
    """Tasks of core/generated.py, zero-shot: their prompts are already in the judges' formats, the
    same as the training records, with an evaluation seed the training data never uses."""

    def build(_root: Path, budget: Budget) -> list[TaskSpec]:
        from core.generated import TASKS

        specs = []
        for name in task_names:
            task = TASKS[name]
            records = task.make(per_task(budget or 60, len(task_names)), seed=QUICK_SEED)
            mc = task.fmt == "mc"
            specs.append(
                TaskSpec(
                    name=f"quick_{name}",
                    metric=f"{group} - EM",
                    scoring="exact_match",
                    fmt=Format(input_prefix="", input_suffix="", output_prefix="", output_suffix=""),
                    train=(),
                    test=tuple(Instance(r["prompt"], r["completion"].strip()) for r in records),
                    generation=MC_GEN if mc else Generation(max_new_tokens=8, stop=("\n",)),
                )
            )
        return specs

    return build


def fixture_root(build: Callable[[Path, Budget], list[TaskSpec]], default: int) -> Callable[[Path, Budget], list[TaskSpec]]:
    """A builder reading the project's own small fixtures (eval/fixtures, the judges' file formats) instead
    of the data root."""
    return lambda _root, budget: build(FIXTURES, budget or default)


ETHICS = ("justice", "commonsense", "virtue", "deontology", "utilitarianism")
SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        # the open set (ranked in the open stage)
        Scenario("mmlu", "open", sum(MMLU_BUDGETS.values()), mmlu("MMLU", MMLU_BUDGETS)),
        Scenario("truthful_qa", "open", 61, truthful_qa),
        Scenario("bigbench", "open", sum(BIGBENCH_BUDGETS.values()) * len(BIGBENCH_SHOTS),
                 bigbench(BIGBENCH_BUDGETS, "BIG-bench")),
        Scenario("gsm8k", "open", 61, gsm8k("GSM8K", 61)),
        Scenario("bbq", "open", 61, bbq),
        # the hidden set (ranked in the hidden stage)
        Scenario("sam_sum", "hidden", 1000, sam_sum("sam_sum", 1000)),
        Scenario("corr2cause", "hidden", 1000, hidden_mc("corr2cause", 1000, shots=1, copies=False)),
        Scenario("math", "hidden", sum(MATH_BUDGETS.values()), math_scenario),
        Scenario("summarization_cnndm", "hidden", 1000, cnn_dm, note="run by the judges, not ranked"),
        *(Scenario(f"ethics_{s}", "hidden", 200, hidden_mc(f"ethics_{s}", 200, shots=5, copies=True)) for s in ETHICS),
        # the quick suite: generated tasks (the leaderboard's quick groups) and fixture-sized open scenarios
        Scenario("quick_mc", "quick", 60, generated_scenario(["mc_largest", "mc_arith", "mc_next_letter"], "Quick MC")),
        Scenario("quick_qa", "quick", 60,
                 generated_scenario(["arith_qa", "count_letter_qa", "reverse_word_qa"], "Quick QA")),
        Scenario("held_out", "quick", 40, generated_scenario(["mc_smallest", "mult_qa"], "Held-out")),
        Scenario("fixture_mmlu", "quick", 8, fixture_root(mmlu("Fixture MMLU", None), 8)),
        Scenario("fixture_bigbench", "quick", 16, fixture_root(bigbench(None, "Fixture BIG-bench"), 16)),
        Scenario("fixture_gsm8k", "quick", 4, fixture_root(gsm8k("Fixture GSM8K", 4), 4)),
        Scenario("fixture_sam_sum", "quick", 4, fixture_root(sam_sum("Fixture sam_sum", 4), 4)),
    ]
}
SUITES = ("open", "hidden", "quick", "all")


def suite(name: str) -> list[Scenario]:
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose one of {', '.join(SUITES)}")
    return [s for s in SCENARIOS.values() if name == "all" or s.suite == name]
