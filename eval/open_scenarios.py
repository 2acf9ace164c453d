"""The open set's scenario builders (ranked in the open stage; challenge.md §3): MMLU (`mmlu`), TruthfulQA
(`truthful_qa`), GSM8K (`gsm8k`), BBQ (`bbq`, with BIG-bench's BBQ-lite as a labelled fallback) and
BIG-bench (`bigbench`, with HELM's split of a task.json), plus the judges' per-run budgets of MMLU and
BIG-bench. Each reads the judges' files from its folder of the data root (eval/sources.py); a builder is
`(data root, budget) -> tasks` and raises MissingData when its files are absent. eval/scenarios.py
registers them (the quick suite's fixture scenarios reuse them on eval/fixtures).
"""
from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from eval import sources
from eval.adapters import Format, Instance
from eval.sources import Splits
from eval.task_spec import (
    MC_GEN,
    MC_INSTRUCTIONS,
    Budget,
    Generation,
    MissingData,
    TaskSpec,
    mc_format,
    need,
    per_task,
    run_budget,
    run_task,
    with_copies,
)

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
    task is graded by multiple_choice_grade, otherwise generation: the references are the best-scored
    targets of `target_scores` when an example has them (HELM reads them first), else `target` (a string
    or a list)."""
    mc = "multiple_choice_grade" in task.get("metrics", [])
    out = []
    for i, ex in enumerate(task.get("examples", [])):
        if mc:
            scores = ex.get("target_scores")
            if not isinstance(scores, dict) or not scores:
                raise ValueError(f"{where}: example {i} has no target_scores")
            choices = tuple(scores)
            out.append(Instance(ex["input"], choices.index(max(scores, key=scores.get)), choices))
        elif isinstance(ex.get("target_scores"), dict) and ex["target_scores"]:
            scores = ex["target_scores"]
            best = [target for target, score in scores.items() if score == max(scores.values())]
            out.append(Instance(ex["input"], best[0], golds=tuple(best[1:])))
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
