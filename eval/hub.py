"""For users without the judges' files, where a dataset hub is reachable: export hub datasets into the judges'
file formats, labelled as exports.

`python -m eval data --hub mmlu,gsm8k,...` loads each dataset by name with `datasets.load_dataset` and writes
it under `<root>/<scenario>/` in the format and under the file names the judges' HELM fork reads
(eval/sources.py), plus a `SOURCE` file saying where it came from; every run on that data prints it. The
hub's copies are not always the judges' files: the hub's SAMSum test split is not the judges' samsum.tsv,
and the hidden round's ETHICS and Corr2Cause files (the fork downloads them from the organizers' gists,
docs/eval.md) have no hub export here.
"""
from __future__ import annotations

import csv
import json
import pickle
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

from eval.sources import MATH_SUBJECTS, SOURCE_NOTE, TRUTHFUL_QA_COLUMNS

Rows = Iterable[dict]
Loader = Callable[[str, str | None, str], Rows]  # (dataset, config, split) -> rows


def hub_loader(dataset: str, config: str | None, split: str) -> Rows:
    import datasets

    return datasets.load_dataset(dataset, config, split=split)


def label(folder: Path, dataset: str, note: str = "") -> None:
    text = f"exported from the dataset hub ({dataset}) by `python -m eval data --hub`, not the judges' file"
    (folder / SOURCE_NOTE).write_text(text + (f"; {note}" if note else "") + "\n", encoding="utf-8")


def write_csv(path: Path, rows: list[list[str]], delimiter: str = ",") -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter=delimiter).writerows(rows)
    return len(rows)


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return len(lines)


def mmlu(load: Loader, root: Path) -> int:
    """cais/mmlu -> mmlu/{dev,val,test}/<subject>_<split>.csv (question, options, letter; no header)."""
    total = 0
    for hub_split, split in (("dev", "dev"), ("validation", "val"), ("test", "test")):
        by_subject: dict[str, list[list[str]]] = defaultdict(list)
        for row in load("cais/mmlu", "all", hub_split):
            by_subject[row["subject"]].append([row["question"], *row["choices"], "ABCDE"[int(row["answer"])]])
        total += sum(write_csv(root / "mmlu" / split / f"{s}_{split}.csv", rows) for s, rows in by_subject.items())
    label(root / "mmlu", "cais/mmlu")
    return total


def truthful_qa(load: Loader, root: Path) -> int:
    """truthful_qa (generation config) -> truthful_qa/TruthfulQA.csv in the original CSV's columns."""
    rows = [list(TRUTHFUL_QA_COLUMNS)] + [
        [r["type"], r["category"], r["question"], r["best_answer"], "; ".join(r["correct_answers"]),
         "; ".join(r["incorrect_answers"]), r["source"]]
        for r in load("truthful_qa", "generation", "validation")
    ]
    count = write_csv(root / "truthful_qa" / "TruthfulQA.csv", rows) - 1
    label(root / "truthful_qa", "truthful_qa")
    return count


def gsm8k(load: Loader, root: Path) -> int:
    """gsm8k -> gsm8k/gsm_data_{train,test} (GSM8K's JSONL under the names the fork saves it as)."""
    count = sum(write_jsonl(root / "gsm8k" / f"gsm_data_{split}",
                            ({"question": r["question"], "answer": r["answer"]} for r in load("gsm8k", "main", split)))
                for split in ("train", "test"))
    label(root / "gsm8k", "gsm8k")
    return count


def sam_sum(load: Loader, root: Path) -> int:
    """samsum's test split -> sam_sum/samsum.tsv (id, dialogue, summary)."""
    rows = [["id", "dialogue", "summary"]] + [[r["id"], r["dialogue"], r["summary"]]
                                              for r in load("samsum", None, "test")]
    count = write_csv(root / "sam_sum" / "samsum.tsv", rows, delimiter="\t") - 1
    label(root / "sam_sum", "samsum", "the judges' TSV is a different selection of SAMSum dialogues")
    return count


def math(load: Loader, root: Path) -> int:
    """EleutherAI/hendrycks_math (one config per subject) -> math/{train,test}.jsonl, competition_math's rows."""
    total = 0
    for split in ("train", "test"):
        rows = [{"problem": r["problem"], "level": r["level"], "type": r["type"], "solution": r["solution"]}
                for subject in MATH_SUBJECTS for r in load("EleutherAI/hendrycks_math", subject, split)]
        total += write_jsonl(root / "math" / f"{split}.jsonl", rows)
    label(root / "math", "EleutherAI/hendrycks_math")
    return total


def summarization_cnndm(load: Loader, root: Path) -> int:
    """cnn_dailymail 3.0.0 -> summarization_cnndm/cnndm.pk, HELM's pickle of plain dicts (same splits)."""
    data = {split: [{"article": r["article"], "highlights": r["highlights"]} for r in load("cnn_dailymail", "3.0.0", split)]
            for split in ("train", "validation", "test")}
    folder = root / "summarization_cnndm"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "cnndm.pk", "wb") as f:
        pickle.dump(data, f)
    label(folder, "cnn_dailymail 3.0.0")
    return sum(map(len, data.values()))


EXPORTERS: dict[str, Callable[[Loader, Path], int]] = {
    "mmlu": mmlu, "truthful_qa": truthful_qa, "gsm8k": gsm8k, "sam_sum": sam_sum, "math": math,
    "summarization_cnndm": summarization_cnndm,
}


def export(names: list[str], root: Path, load: Loader = hub_loader) -> dict[str, int]:
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise ValueError(f"no hub export for {', '.join(unknown)}; available: {', '.join(EXPORTERS)}")
    return {name: EXPORTERS[name](load, root) for name in names}
