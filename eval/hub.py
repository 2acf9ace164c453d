"""Where a dataset hub is reachable: export the real datasets into the local JSONL layout the scenarios read.

`python -m eval data --hub mmlu,gsm8k,...` loads each dataset by name with `datasets.load_dataset`
and writes `<root>/<scenario>/<name>.{train,test}.jsonl` in the scenario's schema (docs/eval.md), so an
evaluation never touches the hub. Corr2Cause and ETHICS are not exported: the organizers did not publish
their prompt wording, so they are left to local files.
"""
from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

Rows = Iterable[dict]
Loader = Callable[[str, str | None, str], Rows]  # (dataset, config, split) -> rows
MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                 "prealgebra", "precalculus")
MATH_LEVELS = ("Level 1", "Level 5")  # the judges' MATH runs
TRUTHFUL_QA_TRAIN = 5  # TruthfulQA has one split: its first rows are the in-context pool


def hub_loader(dataset: str, config: str | None, split: str) -> Rows:
    import datasets

    return datasets.load_dataset(dataset, config, split=split)


def write(root: Path, folder: str, name: str, split: str, rows: Iterable[dict]) -> int:
    path = root / folder / f"{name}.{split}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return len(lines)


def mmlu(load: Loader, root: Path) -> int:
    total = 0
    for split, ours in (("dev", "train"), ("test", "test")):
        by_subject: dict[str, list[dict]] = defaultdict(list)
        for row in load("cais/mmlu", "all", split):
            by_subject[row["subject"]].append(
                {"question": row["question"], "choices": list(row["choices"]), "answer": int(row["answer"])})
        total += sum(write(root, "mmlu", subject, ours, rows) for subject, rows in by_subject.items())
    return total


def truthful_qa(load: Loader, root: Path) -> int:
    rows = []
    for row in load("truthful_qa", "multiple_choice", "validation"):
        choices, labels = list(row["mc1_targets"]["choices"]), list(row["mc1_targets"]["labels"])
        order = list(range(len(choices)))
        random.Random(row["question"]).shuffle(order)  # the dataset lists the correct answer first
        rows.append({"question": row["question"], "choices": [choices[i] for i in order],
                     "answer": [labels[i] for i in order].index(1)})
    return (write(root, "truthful_qa", "mc_single", "train", rows[:TRUTHFUL_QA_TRAIN])
            + write(root, "truthful_qa", "mc_single", "test", rows[TRUTHFUL_QA_TRAIN:]))


def gsm8k(load: Loader, root: Path) -> int:
    return sum(write(root, "gsm8k", "main", split,
                     ({"question": r["question"], "answer": r["answer"]} for r in load("gsm8k", "main", split)))
               for split in ("train", "test"))


def sam_sum(load: Loader, root: Path) -> int:
    return sum(write(root, "sam_sum", "samsum", split,
                     ({"document": r["dialogue"], "summary": r["summary"]} for r in load("samsum", None, split)))
               for split in ("train", "test"))


def math(load: Loader, root: Path) -> int:
    total = 0
    for subject in MATH_SUBJECTS:
        for split in ("train", "test"):
            rows = list(load("EleutherAI/hendrycks_math", subject, split))
            for level in MATH_LEVELS:
                name = f"{subject}_{level.lower().replace(' ', '')}"
                picked = ({"problem": r["problem"], "solution": r["solution"]} for r in rows if r["level"] == level)
                total += write(root, "math", name, split, picked)
    return total


EXPORTERS: dict[str, Callable[[Loader, Path], int]] = {
    "mmlu": mmlu, "truthful_qa": truthful_qa, "gsm8k": gsm8k, "sam_sum": sam_sum, "math": math,
}


def export(names: list[str], root: Path, load: Loader = hub_loader) -> dict[str, int]:
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise ValueError(f"no hub export for {', '.join(unknown)}; available: {', '.join(EXPORTERS)}")
    return {name: EXPORTERS[name](load, root) for name in names}
