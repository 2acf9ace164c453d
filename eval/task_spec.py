"""What one task is, and how one HELM run becomes one: the task (`TaskSpec`, an lm-eval task this harness
writes), its request settings (`Generation`), HELM's instance selection (`helm_sample`, the budgets), the
run builder every scenario uses (`run_task`), the perturbed robustness/fairness copies (`with_copies`),
HELM's multiple-choice prompt format (`mc_format`), and `MissingData`, which a scenario raises when its
data is not on disk.

Instance selection is HELM's: the evaluation instances (valid + test) are sampled with numpy seed 0 down
to the run's `max_eval_instances`, the judges' per-run budgets by default; in-context examples are drawn
with HELM's label-balanced rule (eval/adapters.py).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from eval.adapters import Format, Instance, instructions_line, sample_train
from eval.perturb import PERTURBATIONS, canonical, perturbed
from eval.sources import Splits

Budget = int | None  # instances over all a scenario's tasks; None: the judges' per-run budgets


class MissingData(Exception):
    """A scenario's data is not on disk; the message says where it was looked for."""


@dataclass(frozen=True)
class Generation:
    """What the client asks the server for (HELM's request settings for the scenario)."""

    max_new_tokens: int
    stop: tuple[str, ...] = ()
    temperature: float = 0.0


MC_GEN = Generation(max_new_tokens=1)  # HELM's multiple-choice joint requests: one token, no stop sequence


@dataclass(frozen=True)
class TaskSpec:
    name: str  # the lm-eval task name
    metric: str  # the HELM metric it feeds, e.g. "MMLU - EM"
    scoring: str  # a template in eval/tasks: exact_match, final_token, rouge2, math_equiv
    fmt: Format
    train: tuple[Instance, ...]
    test: tuple[Instance, ...]
    generation: Generation
    copy_of: str = ""  # for a robustness/fairness copy: the name of the task it perturbs
    source: str = ""  # where the data came from when it is not the judges' files (printed with the results)


# ---- HELM's instance selection ----------------------------------------------------------------------


def helm_sample(instances: list[Instance], n: int) -> tuple[Instance, ...]:
    """HELM's `get_run_instances`: more evaluation instances than `n` are cut to `n` drawn with numpy's
    legacy generator seeded 0 (`np.random.choice(..., replace=False)`), in the drawn order."""
    if len(instances) <= n:
        return tuple(instances)
    drawn = np.random.RandomState(0).choice(len(instances), n, replace=False)
    return tuple(instances[int(i)] for i in drawn)


def per_task(budget: int, tasks: int) -> int:
    return max(1, math.ceil(budget / max(tasks, 1)))


def run_budget(budget: Budget, judges: int | None, runs: int) -> int:
    """One run's max_eval_instances: the judges' for that run, unless `--budget` spreads a total over the
    scenario's runs (no judges' figure and no total: every instance)."""
    if budget is not None:
        return per_task(budget, runs)
    return judges if judges is not None else sys.maxsize


# ---- building tasks ---------------------------------------------------------------------------------

def with_copies(spec: TaskSpec, root: Path | None) -> list[TaskSpec]:
    """The task plus one task per HELM perturbation (eval/perturb.py) holding the perturbed copies of its
    evaluation instances whose input changed; the in-context examples stay clean. Instances without a HELM
    id are numbered by their position in the task. Word lists come from `<root>/perturbations/` if there;
    the copies' `source` says which were used."""
    original = replace(spec, test=tuple(replace(i, id=i.id or f"id{n}") for n, i in enumerate(spec.test)))
    perturb = canonical(root)
    tasks = [original]
    for name, kind in PERTURBATIONS:
        test = tuple(c for c in (perturbed(i, name, perturb) for i in original.test) if c is not None)
        tasks.append(replace(original, name=f"{spec.name}_{name}", metric=f"{spec.metric} ({kind.title()})",
                             test=test, copy_of=spec.name, source=perturb.lists.describe()))
    return tasks


def run_task(name: str, metric: str, fmt: Format, splits: Splits, shots: int, n: int, generation: Generation,
             scoring: str = "exact_match", source: str = "") -> TaskSpec:
    """One HELM run: `shots` in-context examples from the train split, at most `n` evaluation instances."""
    return TaskSpec(name=name, metric=metric, scoring=scoring, fmt=fmt,
                    train=tuple(sample_train(list(splits.train), shots)), test=helm_sample(splits.eval, n),
                    generation=generation, source=source)


def need(path: Path, what: str) -> Path:
    if not path.exists():
        raise MissingData(f"no {path} ({what}; see docs/eval.md)")
    return path


def mc_format(instructions: str, input_noun: str | None = "Question") -> Format:
    """HELM's multiple-choice joint adapter spec as the fork's run_specs builds it (an instruction line,
    `<noun>: ` before the input, `Answer: ` before the letter)."""
    return Format(instructions=instructions_line(instructions),
                  input_prefix=f"{input_noun}: " if input_noun is not None else "",
                  input_suffix="\n" if input_noun is not None else "")


MC_INSTRUCTIONS = "The following are multiple choice questions (with answers)."
