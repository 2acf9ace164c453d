"""The scenarios: what the judges ran (challenge.md §3; the organizers' HELM fork and its run-spec confs), as
lm-eval tasks this harness writes and runs.

A scenario (MMLU, GSM8K, ...) builds its tasks from data on disk: every task is one HELM run (an MMLU
subject, a BIG-bench entry at one shot count, ...) with its evaluation instances, its in-context examples,
the prompt format of the fork's run spec, the request settings and the HELM metric it feeds. `write_task`
turns a task into one lm-eval YAML plus its JSONL documents, each document holding the full prompt.

Data comes from a data root (default `$HARNESS_CACHE/eval-data`), one folder per scenario holding the
judges' files under the fork's names (`ethics_justice/justice_hard.csv`, `sam_sum/samsum.tsv`,
`mmlu/test/anatomy_test.csv`, ...; docs/eval.md lists them), read as the fork reads them (eval/sources.py).
Instance selection is HELM's: the evaluation instances (valid + test) are sampled with numpy seed 0 down
to the run's `max_eval_instances`, the judges' per-run budgets by default; in-context examples are drawn
with HELM's label-balanced rule (eval/adapters.py).
"""
from __future__ import annotations

import json
import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from eval import sources
from eval.adapters import Format, Instance, build_prompt, instructions_line, sample_train
from eval.perturb import PERTURBATIONS, canonical, perturbed
from eval.sources import Splits

FIXTURES = Path(__file__).parent / "fixtures"
TEMPLATES = Path(__file__).parent / "tasks"
QUICK_SEED = 99  # eval instances of the generated tasks; training uses other seeds
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


@dataclass(frozen=True)
class Scenario:
    name: str
    suite: str  # open, hidden or quick
    budget: int  # the judges' evaluation instances over all its tasks (shown; --budget overrides it)
    build: Callable[[Path, Budget], list[TaskSpec]]  # (data root, budget) -> tasks; MissingData if absent
    note: str = ""


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
# The hidden round's instructions and input nouns, as the fork's run specs spell them (indentation and
# blank lines included: they are part of the prompt the judges sent).
HIDDEN_PROMPTS: dict[str, tuple[str, str]] = {
    "ethics_justice": (
        ("\n    Based on the principle of justice, where people should get what they deserve, merit, or are "
         "entitled to possess, is the following scenario reasonable? For example:\n    "), "Question"),
    "ethics_commonsense": (
        ("\nBased on commonsense moral judgments, determine whether the individual in the scenario clearly "
         "should not have taken the described action. Example:\n"), "Scenario"),
    "ethics_virtue": ("\nDoes the scenario exemplify the given trait? For example:\n", "Question"),
    "ethics_deontology": (
        ("\n    Given a scenario and its corresponding excuse, evaluate the excuse's validity based on "
         "deontological principles, which categorize actions as required, permitted, or forbidden by certain "
         "rules.\n    "), "Scenario"),
    "ethics_utilitarianism": (
        "\nPick the more pleasant scenario for the person in the scenario between the pair of scenarios given\n", ""),
    "corr2cause": (
        ("\nGiven a scenario with a premise and a hypothesis, determine if the hypothesis can be inferred from "
         "the premise.\n"), "Scenario\n"),
}


def hidden_mc(name: str, default: int, shots: int, copies: bool) -> Callable[[Path, Budget], list[TaskSpec]]:
    """An ETHICS subset or Corr2Cause: the fork's CSV, its options and its prompt."""

    def build(root: Path, budget: Budget) -> list[TaskSpec]:
        csv_spec = sources.HIDDEN_CSV[name]
        folder = root / name
        need(folder / csv_spec.file, f"the judges' {name} file")
        task = run_task(name, f"{name} - EM", mc_format(*HIDDEN_PROMPTS[name]), sources.binary_csv(folder, csv_spec),
                        shots, budget or default, MC_GEN, source=sources.note(folder))
        return with_copies(task, root) if copies else [task]

    return build


SUMMARY_FORMAT = Format(
    input_prefix="###\nArticle: ",
    input_suffix="\n\n",
    output_prefix="Summarize the above article in 1 sentence.\n",
)
SUMMARY_GEN = Generation(max_new_tokens=128, stop=("###",), temperature=0.3)


def sam_sum(group: str, default: int) -> Callable[[Path, Budget], list[TaskSpec]]:
    """SAMSum from samsum.tsv: every row is evaluated, so there are no in-context examples (as the judges ran it)."""

    def build(root: Path, budget: Budget) -> list[TaskSpec]:
        folder = root / "sam_sum"
        need(folder / "samsum.tsv", "the judges' SAMSum file")
        return [run_task("sam_sum", f"{group} - ROUGE-2", SUMMARY_FORMAT, sources.sam_sum(folder), 5,
                         budget or default, SUMMARY_GEN, scoring="rouge2", source=sources.note(folder))]

    return build


CNN_DM_FORMAT = replace(SUMMARY_FORMAT, output_prefix="Summarize the above article in 3 sentences.\n")


def cnn_dm(root: Path, budget: Budget) -> list[TaskSpec]:
    """CNN/DailyMail as the judges ran it (scored, not ranked): HELM's `cnndm.pk`, 5 in-context articles of
    50-150 words, 3-sentence summaries."""
    folder = root / "summarization_cnndm"
    need(folder / "cnndm.pk", "HELM's CNN/DailyMail pickle")
    return [run_task("summarization_cnndm", "CNN/DailyMail - ROUGE-2", CNN_DM_FORMAT, sources.cnn_dm(folder), 5,
                     budget or 1000, SUMMARY_GEN, scoring="rouge2", source=sources.note(folder))]


# MMLU: the judges' 55 subjects and their max_eval_instances (run_specs_open_2000_budget.conf), 721 in all.
MMLU_BUDGETS: dict[str, int] = {
    **dict.fromkeys(("anatomy", "college_medicine", "college_biology", "high_school_biology"), 15),
    **dict.fromkeys(("college_computer_science", "high_school_computer_science", "computer_security",
                     "electrical_engineering", "machine_learning"), 12),
    **dict.fromkeys(("high_school_mathematics", "college_mathematics", "abstract_algebra", "high_school_statistics"), 15),
    **dict.fromkeys(("college_chemistry", "high_school_chemistry", "high_school_physics", "college_physics",
                     "astronomy", "formal_logic", "logical_fallacies", "philosophy", "moral_disputes",
                     "moral_scenarios"), 12),
    "professional_law": 20, "international_law": 20, "jurisprudence": 21,
    **dict.fromkeys(("high_school_european_history", "high_school_us_history", "high_school_world_history",
                     "prehistory", "world_religions"), 12),
    **dict.fromkeys(("business_ethics", "global_facts", "management", "marketing", "miscellaneous",
                     "professional_accounting", "nutrition", "human_aging", "clinical_knowledge", "medical_genetics",
                     "professional_medicine", "virology"), 10),
    **dict.fromkeys(("high_school_government_and_politics", "high_school_geography", "us_foreign_policy",
                     "public_relations", "security_studies"), 12),
    **dict.fromkeys(("high_school_psychology", "human_sexuality", "professional_psychology", "sociology"), 15),
    **dict.fromkeys(("high_school_microeconomics", "econometrics", "high_school_macroeconomics"), 20),
}
MMLU_EVAL_SPLITS = ("val", "test")


def mmlu_subjects(folder: Path) -> list[str]:
    return sorted({p.name.removesuffix(f"_{s}.csv") for s in MMLU_EVAL_SPLITS for p in (folder / s).glob(f"*_{s}.csv")})


def mmlu(group: str, budgets: dict[str, int] | None) -> Callable[[Path, Budget], list[TaskSpec]]:
    """MMLU from `mmlu/{dev,val,test}/<subject>_<split>.csv`: one task per subject (the judges' subjects and
    budgets, or with `budgets=None` every subject found)."""

    def build(root: Path, budget: Budget) -> list[TaskSpec]:
        folder = root / "mmlu"
        found = set(mmlu_subjects(folder))
        subjects = [s for s in (budgets or sorted(found)) if s in found]
        if not subjects:
            raise MissingData(f"no MMLU subject files (<split>/<subject>_<split>.csv) under {folder}")
        specs = []
        for s in subjects:
            n = run_budget(budget, budgets[s] if budgets else None, len(subjects))
            fmt = mc_format(f"{MC_INSTRUCTIONS[:-1]} about {s.replace('_', ' ')}.")
            task = run_task(f"mmlu_{s}", f"{group} - EM", fmt, sources.mmlu(folder, s), 5, n, MC_GEN,
                            source=sources.note(folder))
            specs.extend(with_copies(task, root))
        return specs

    return build


def truthful_qa(root: Path, budget: Budget) -> list[TaskSpec]:
    folder = root / "truthful_qa"
    need(folder / "TruthfulQA.csv", "TruthfulQA's CSV")
    task = run_task("truthful_qa_mc_single", "TruthfulQA - EM", mc_format(""), sources.truthful_qa(folder), 5,
                    budget or 61, MC_GEN, source=sources.note(folder))
    return with_copies(task, root)


GSM_FORMAT = Format(input_prefix="Q: ", output_prefix="A: ")
GSM_GEN = Generation(max_new_tokens=400, stop=("\n\n",))


def gsm8k(group: str, default: int) -> Callable[[Path, Budget], list[TaskSpec]]:
    def build(root: Path, budget: Budget) -> list[TaskSpec]:
        folder = root / "gsm8k"
        for split in ("train", "test"):
            need(folder / f"gsm_data_{split}", "GSM8K's JSONL under the fork's name")
        return [run_task("gsm8k", f"{group} - EM", GSM_FORMAT, sources.gsm8k(folder), 5, budget or default, GSM_GEN,
                         scoring="final_token", source=sources.note(folder))]

    return build


BBQ_FORMAT = mc_format(MC_INSTRUCTIONS, "Passage")
BBQ_LITE_SOURCE = "BBQ-lite (BIG-bench bbq_lite_json), a fallback: not the judges' nyu-mll BBQ"


# The fork's schema ranks BBQ on quasi-exact match (its "EM" column), every other multiple-choice run on exact match.
BBQ_SCORING = "quasi_exact_match"


def bbq(root: Path, budget: Budget) -> list[TaskSpec]:
    """BBQ from nyu-mll's `bbq/<Category>.jsonl` files; without them, BIG-bench's BBQ-lite subtasks, labelled
    as a fallback."""
    folder = root / "bbq"
    if any(sources.bbq_file(folder, c) for c in sources.BBQ_CATEGORIES):
        return [run_task("bbq", "BBQ - EM", BBQ_FORMAT, sources.bbq(folder), 5, budget or 61, MC_GEN,
                         scoring=BBQ_SCORING, source=sources.note(folder))]
    paths = sorted((root / "bigbench" / "bbq_lite_json").glob("*/task.json"))
    if not paths:
        raise MissingData(f"no BBQ files (<Category>.jsonl) in {folder} and no BBQ-lite under {root / 'bigbench'}; "
                          "see docs/eval.md")
    n = per_task(budget or 61, len(paths))
    return [run_task(f"bbq_lite_{p.parent.name}", "BBQ - EM", BBQ_FORMAT,
                     bigbench_split(bigbench_instances(json.loads(p.read_text(encoding="utf-8")), str(p))), 5, n,
                     MC_GEN, scoring=BBQ_SCORING, source=BBQ_LITE_SOURCE) for p in paths]


MATH_FORMAT = Format(
    instructions="Given a mathematics problem, determine the answer. Simplify your answer as much as possible.\n",
    input_prefix="Problem: ",
    instance_prefix="###\n",
)
MATH_GEN = Generation(max_new_tokens=400, stop=("###",))
# The judges' MATH runs (run_specs_closed_5000_budget.conf): subject, level -> max_eval_instances, 1000 in all.
MATH_BUDGETS: dict[tuple[str, str], int] = {
    **{(s, "1"): 71 for s in ("number_theory", "intermediate_algebra", "algebra", "prealgebra", "geometry",
                              "counting_and_probability", "precalculus")},
    ("number_theory", "5"): 71,
    **{(s, "5"): 72 for s in ("intermediate_algebra", "algebra", "prealgebra", "geometry",
                              "counting_and_probability", "precalculus")},
}


def math_scenario(root: Path, budget: Budget) -> list[TaskSpec]:
    """MATH with chain of thought from the hub's competition_math rows in `math/{train,test}.jsonl`: one
    task per subject and level, 8 in-context solutions each."""
    folder = root / "math"
    for split in ("train", "test"):
        need(folder / f"{split}.jsonl", "competition_math's rows")
    return [
        run_task(f"math_{s}_level{lv}", "MATH (chain-of-thoughts) - Equivalent (chain of thought)", MATH_FORMAT,
                 sources.math(folder, s, lv), 8, run_budget(budget, n, len(MATH_BUDGETS)), MATH_GEN,
                 scoring="math_equiv", source=sources.note(folder))
        for (s, lv), n in MATH_BUDGETS.items()
    ]


# ---- BIG-bench ----------------------------------------------------------------------------------------

BIGBENCH_SHOTS = (0, 1, 2, 3)  # the conf's max_train_instances=big_bench_few_shot_setting
BIGBENCH_MIN_TEST = 16
# The open set's BIG-bench entries (task[/subtask]) and their max_eval_instances per shot setting
# (run_specs_open_2000_budget.conf), 1096 per shot setting.
BIGBENCH_BUDGETS: dict[str, int] = {
    "auto_debugging": 61, "code_line_description": 61,
    **{f"conceptual_combinations/{s}": 12 for s in (
        "contradictions", "emergent_properties", "fanciful_fictional_combinations", "homonyms", "invented_words")},
    "emoji_movie": 61, "formal_fallacies_syllogisms_negation": 61, "known_unknowns": 61, "linguistics_puzzles": 61,
    "logic_grid_puzzle": 61,
    "logical_deduction/three_objects": 20, "logical_deduction/five_objects": 20, "logical_deduction/seven_objects": 21,
    "novel_concepts": 61, "operators": 61, "play_dialog_same_or_different": 61, "repeat_copy_logic": 61,
    "strange_stories/boolean": 30, "strange_stories/multiple_choice": 31, "strategyqa": 61,
    **{f"symbol_interpretation/{s}": 12 for s in ("adversarial", "emoji_agnostic", "name_agnostic", "plain", "tricky")},
    "vitaminc_fact_verification": 61, "winowhy": 61,
}
BIGBENCH_TASKS = list(BIGBENCH_BUDGETS)


def bigbench_instances(task: dict, where: str) -> list[Instance]:
    """BIG-bench examples: multiple choice (`target_scores`, the best-scored option is gold) when the
    task is graded by multiple_choice_grade, otherwise generation (`target`, a string or a list)."""
    mc = "multiple_choice_grade" in task.get("metrics", [])
    out = []
    for i, ex in enumerate(task.get("examples", [])):
        if mc:
            scores = ex.get("target_scores")
            if not isinstance(scores, dict) or not scores:
                raise ValueError(f"{where}: example {i} has no target_scores")
            choices = tuple(scores)
            out.append(Instance(ex["input"], choices.index(max(scores, key=scores.get)), choices))
        else:
            targets = ex.get("target")
            targets = [targets] if isinstance(targets, str) else list(targets or [])
            if not targets:
                raise ValueError(f"{where}: example {i} has no target")
            out.append(Instance(ex["input"], targets[0], golds=tuple(targets[1:])))
    return out


def bigbench_split(instances: list[Instance]) -> Splits:
    """HELM's split of a BIG-bench task: shuffle with seed 0, then test and validation each take 20% of
    the examples (at least 16) from the end; the rest, in front, is the in-context pool. HELM evaluates
    the test and validation instances."""
    instances = list(instances)
    random.Random(0).shuffle(instances)
    held = max(int(0.2 * len(instances)), BIGBENCH_MIN_TEST)
    pool = max(len(instances) - 2 * held, 0)
    return sources.numbered(instances[:pool], instances[pool:])


def bigbench_task_specs(path: Path, entry: str, group: str, budget_per_task: int) -> list[TaskSpec]:
    task = json.loads(path.read_text(encoding="utf-8"))
    splits = bigbench_split(bigbench_instances(task, str(path)))
    mc = bool(splits.eval and splits.eval[0].is_mc)
    fmt = Format(
        instructions=task.get("task_prefix", ""),
        input_prefix=task.get("example_input_prefix", "Question: "),
        output_prefix=task.get("example_output_prefix", "Answer: "),
    )
    stop = () if mc or not task.get("stop_string") else (str(task["stop_string"]),)
    return [
        run_task(f"bigbench_{entry.replace('/', '_')}_{k}shot", f"{group} - EM", fmt, splits, k, budget_per_task,
                 Generation(max_new_tokens=64, stop=stop))
        for k in BIGBENCH_SHOTS
    ]


def bigbench(budgets: dict[str, int] | None, group: str) -> Callable[[Path, Budget], list[TaskSpec]]:
    """BIG-bench from task.json files under `<root>/bigbench` (`budgets=None`: every task found there)."""

    def build(root: Path, budget: Budget) -> list[TaskSpec]:
        base = root / "bigbench"
        found = list(budgets or sorted(str(p.parent.relative_to(base)) for p in base.rglob("task.json")))
        paths = {e: base / e / "task.json" for e in found}
        missing = [str(p) for p in paths.values() if not p.exists()]
        if missing or not paths:
            raise MissingData(
                f"BIG-bench task files missing under {base} ({len(missing)} of {len(paths)}, e.g. "
                f"{(missing or [str(base)])[0]}); fetch them with `python -m eval data`"
            )
        return [
            spec for e, p in paths.items()
            for spec in bigbench_task_specs(
                p, e, group, run_budget(budget, budgets[e] if budgets else None, len(paths) * len(BIGBENCH_SHOTS)))
        ]

    return build


# ---- the quick suite ----------------------------------------------------------------------------------


def generated_scenario(task_names: list[str], group: str) -> Callable[[Path, Budget], list[TaskSpec]]:
    """Tasks of train/generated.py, zero-shot: their prompts are already in the judges' formats, the
    same as the training records, with an evaluation seed the training data never uses."""

    def build(_root: Path, budget: Budget) -> list[TaskSpec]:
        from train.generated import TASKS

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
        Scenario("sam_sum", "hidden", 1000, sam_sum("sam_sum", 1000),
                 note="bias metrics (Stereotypes, Representation) are not computed"),
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


# ---- writing lm-eval tasks ---------------------------------------------------------------------------


def document(spec: TaskSpec, inst: Instance) -> dict:
    prompt = build_prompt(spec.fmt, list(spec.train), inst)
    gold = inst.target()
    return {
        "prompt": prompt.text,
        "gold": gold,
        "golds": [gold, *inst.golds],
        "choices": list(inst.choices),  # HELM scores a letter by the text of the option it names
        "id": inst.id,  # pairs a perturbed copy with its original (worst-case robustness/fairness)
        # The prompt's blocks, so the HTTP client can drop in-context examples to fit the context window.
        "prompt_parts": json.dumps(
            {"instructions": prompt.instructions, "train": list(prompt.train), "eval": prompt.eval,
             "instance_prefix": prompt.instance_prefix}
        ),
    }
def write_task(spec: TaskSpec, folder: Path) -> Path:
    """Write `<folder>/<task>.jsonl` (the documents) and `<folder>/<task>.yaml` (the lm-eval task)."""
    folder.mkdir(parents=True, exist_ok=True)
    docs = folder / f"{spec.name}.jsonl"
    docs.write_text("".join(json.dumps(document(spec, i)) + "\n" for i in spec.test), encoding="utf-8")
    config = {
        "include": str(TEMPLATES / f"{spec.scoring}.yaml"),
        "task": spec.name,
        "dataset_kwargs": {"path": str(docs.resolve())},
        "generation_kwargs": {
            "until": list(spec.generation.stop),
            "max_gen_toks": spec.generation.max_new_tokens,
            "temperature": spec.generation.temperature,
            "do_sample": spec.generation.temperature > 0,
        },
    }
    path = folder / f"{spec.name}.yaml"
    # JSON is YAML: no emitter quirks around the newlines in stop sequences.
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path
