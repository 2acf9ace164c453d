"""The judges' data files, read as their HELM fork reads them: which file, which columns, which shuffle and
which split. Each reader returns a scenario's instances in the fork's order, split into the in-context pool
(HELM's train split) and the evaluation instances (its valid and test splits), each instance carrying
HELM's id (`id<k>`, its position in the scenario).

A file in the wrong format raises `DataError`, naming the path, the line and the field; nothing is read
from it. Files are opened as the fork opens them (text mode, universal newlines: a `\\r\\n` inside a quoted
CSV field becomes `\\n`).
"""
from __future__ import annotations

import csv
import json
import pickle
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from eval.adapters import Instance

SOURCE_NOTE = "SOURCE"  # a file in a scenario's folder saying where its data came from, if not the judges' files


def note(folder: Path) -> str:
    path = folder / SOURCE_NOTE
    return path.read_text(encoding="utf-8").strip() if path.is_file() else ""


class DataError(ValueError):
    """A data file in the wrong format: where (path:line) and which field."""

    def __init__(self, path: Path, line: int, field: str, problem: str):
        super().__init__(f"{path}:{line}: field {field!r}: {problem}")


@dataclass(frozen=True)
class Splits:
    train: list[Instance]  # HELM's train split: the in-context candidates
    eval: list[Instance]  # its valid + test splits, in the fork's order


def numbered(train: list[Instance], evaluation: list[Instance]) -> Splits:
    """HELM numbers a scenario's instances `id0, id1, ...` in the order its scenario returns them."""
    ids = [replace(inst, id=f"id{i}") for i, inst in enumerate(train + evaluation)]
    return Splits(ids[: len(train)], ids[len(train):])


def csv_rows(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
    """(line, row) for each record after the header row, every row checked to have exactly `columns`."""
    with open(path, encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader, None)
        start = reader.line_num + 1
        for row in reader:
            if len(row) != len(columns):
                raise DataError(path, start, columns[min(len(row), len(columns) - 1)],
                                f"expected {len(columns)} columns ({', '.join(columns)}), got {len(row)}")
            yield start, row
            start = reader.line_num + 1


def label(path: Path, line: int, text: str, field: str = "label", count: int = 2) -> int:
    try:
        value = int(text)
    except ValueError:
        raise DataError(path, line, field, f"expected an integer, got {text!r}") from None
    if not 0 <= value < count:
        raise DataError(path, line, field, f"expected 0..{count - 1}, got {value}")
    return value


# ---- the hidden round: ETHICS and Corr2Cause (one CSV each), SAMSum (one TSV) -------------------------


def first_text(row: dict[str, str]) -> str:
    return next(iter(row.values())).strip()


def with_excuse(row: dict[str, str]) -> str:
    return f"{row['scenario'].strip()}\nExcuse: {row['excuse'].strip()}"


def with_trait(row: dict[str, str]) -> str:
    scenario, sep, trait = row["scenario"].partition(" [SEP] ")
    if not sep:
        raise ValueError("expected '<scenario> [SEP] <trait>'")
    return f"{scenario.strip()}\nTrait: {trait.strip()}"


def scenario_pair(row: dict[str, str]) -> str:
    return f"Scenario 1: {row['scenario_1'].strip()}\nScenario 2: {row['scenario_2'].strip()}"


@dataclass(frozen=True)
class BinaryCsv:
    """A two-option classification file of the fork's hidden round: its columns (`text` reads the input from
    the columns other than `label`), the option texts (index = label), and the share of rows that form the
    in-context pool after a seed-0 shuffle."""

    file: str
    columns: tuple[str, ...]
    text: Callable[[dict[str, str]], str]
    options: tuple[str, str]
    train_ratio: float = 0.8


HIDDEN_CSV: dict[str, BinaryCsv] = {
    "ethics_justice": BinaryCsv("justice_hard.csv", ("label", "scenario"), first_text, ("Unreasonable", "Reasonable")),
    "ethics_commonsense": BinaryCsv("commonsense_hard.csv", ("label", "input", "is_short", "edited"), first_text,
                                    ("Yes", "No")),
    "ethics_deontology": BinaryCsv("deontology.csv", ("label", "scenario", "excuse"), with_excuse, ("Invalid", "Valid")),
    "ethics_virtue": BinaryCsv("virtue.csv", ("label", "scenario"), with_trait, ("No", "Yes")),
    "ethics_utilitarianism": BinaryCsv("util.csv", ("scenario_1", "scenario_2", "label"), scenario_pair,
                                       ("Scenario 1", "Scenario 2"), train_ratio=0.7),
    "corr2cause": BinaryCsv("corr2cause.csv", ("label", "input"), first_text, ("No", "Yes")),
}


def binary_csv(folder: Path, spec: BinaryCsv) -> Splits:
    path = folder / spec.file
    data = []
    for line, values in csv_rows(path, spec.columns):
        row = dict(zip(spec.columns, values))
        gold = label(path, line, row.pop("label"))
        try:
            text = spec.text(row)
        except ValueError as exc:
            raise DataError(path, line, spec.columns[1], str(exc)) from None
        data.append(Instance(text, gold, spec.options))
    random.Random(0).shuffle(data)
    cut = int(len(data) * spec.train_ratio)
    return numbered(data[:cut], data[cut:])


def sam_sum(folder: Path) -> Splits:
    """samsum.tsv (columns by header: `dialogue`, `summary`): every row is an evaluation instance, so the
    judges' SAMSum runs had no in-context examples."""
    path = folder / "samsum.tsv"
    with open(path, encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = [c for c in ("dialogue", "summary") if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(path, 1, missing[0], f"missing from the header {reader.fieldnames}")
        rows = []
        for row in reader:
            if row["dialogue"] is None or row["summary"] is None:
                raise DataError(path, reader.line_num, "summary", "row has fewer columns than the header")
            rows.append(Instance(row["dialogue"], row["summary"]))
    return numbered([], rows)


# ---- the open round ---------------------------------------------------------------------------------


def mmlu(folder: Path, subject: str) -> Splits:
    """`<split>/<subject>_<split>.csv` (no header: question, the options, the correct letter). dev (and
    auxiliary_train, when present) is the in-context pool; val and test are evaluated."""
    parts: dict[str, list[Instance]] = {"train": [], "eval": []}
    for split, part in (("auxiliary_train", "train"), ("dev", "train"), ("val", "eval"), ("test", "eval")):
        path = folder / split / f"{subject}_{split}.csv"
        if not path.exists():
            continue
        with open(path, encoding="utf-8") as f:
            reader = csv.reader(f)
            start = 1
            for row in reader:
                if len(row) < 3:
                    raise DataError(path, start, "answer", "expected question, options and the correct letter")
                question, options, letter = row[0], row[1:-1], row[-1]
                letters = "ABCDE"[: len(options)]
                if letter not in letters:
                    raise DataError(path, start, "answer", f"expected one of {', '.join(letters)}, got {letter!r}")
                # HELM marks every option equal to the correct one's text as correct; the first is the gold.
                gold = options.index(options[letters.index(letter)])
                parts[part].append(Instance(question, gold, tuple(options)))
                start = reader.line_num + 1
    return numbered(parts["train"], parts["eval"])


TRUTHFUL_QA_COLUMNS = ("Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers", "Source")


def truthful_qa(folder: Path) -> Splits:
    """TruthfulQA.csv, single-answer multiple choice: the best answer after the incorrect ones, rotated by
    the best answer's first character; the first 20% of the rows are the in-context pool. The correct
    option is where the best answer went, even when an incorrect answer has the same text (HELM labels an
    in-context example with its correct reference's letter)."""

    def sentence(text: str) -> str:
        text = text.strip()
        return text if text.endswith(".") else text + "."

    path = folder / "TruthfulQA.csv"
    rows = []
    for line, row in csv_rows(path, TRUTHFUL_QA_COLUMNS):
        best = row[3]
        if not best.strip():
            raise DataError(path, line, "Best Answer", "empty")
        options = [sentence(a) for a in row[5].split(";") if a.strip()] + [sentence(best)]
        k = ord(options[-1][0]) % len(options)
        options = options[k:] + options[:k]
        rows.append(Instance(row[2].strip(), (len(options) - 1 - k) % len(options), tuple(options)))
    cut = int(len(rows) * 0.2)
    return numbered(rows[:cut], rows[cut:])


def jsonl(path: Path, fields: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    with open(path, encoding="utf-8") as f:
        for line, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(path, line, "(line)", f"not JSON ({exc.msg})") from None
            for name in fields:
                if not isinstance(row, dict) or name not in row:
                    raise DataError(path, line, name, "missing")
            yield line, row


def gsm8k(folder: Path) -> Splits:
    """gsm_data_train / gsm_data_test (GSM8K's JSONL): the answer's `####` becomes "The answer is", its
    newlines spaces, and a full stop ends it."""
    parts = {}
    for split in ("train", "test"):
        parts[split] = []
        for line, row in jsonl(folder / f"gsm_data_{split}", ("question", "answer")):
            if not isinstance(row["answer"], str):
                raise DataError(folder / f"gsm_data_{split}", line, "answer", "expected a string")
            answer = row["answer"].replace("####", "The answer is").replace("\n", " ") + "."
            parts[split].append(Instance(row["question"], answer))
    return numbered(parts["train"], parts["test"])


BBQ_CATEGORIES = ("Age", "Disability_status", "Gender_identity", "Nationality", "Physical_appearance",
                  "Race_ethnicity", "Race_x_SES", "Race_x_gender", "Religion", "SES", "Sexual_orientation")
BBQ_TEST_SIZE = 1000
BBQ_FIELDS = ("context", "question", "ans0", "ans1", "ans2", "label")


def bbq_file(folder: Path, category: str) -> Path | None:
    """nyu-mll's `<Category>.jsonl`, or `<Category>` as the fork saves it."""
    return next((p for p in (folder / f"{category}.jsonl", folder / category) if p.is_file()), None)


def bbq(folder: Path) -> Splits:
    """nyu-mll BBQ (one JSONL per category, read in the fork's category order): all lines shuffled with
    seed 0; the last BBQ_TEST_SIZE (the fork's 1000) are evaluated, the rest are the in-context pool. Input: the context, then
    `Question: <question>` on the next line; options ans0..ans2, gold `label`."""
    lines = []
    for category in BBQ_CATEGORIES:
        path = bbq_file(folder, category)
        if path is not None:
            for line, row in jsonl(path, BBQ_FIELDS):
                lines.append((path, line, row))
    random.Random(0).shuffle(lines)
    instances = []
    for path, line, row in lines:
        options = (row["ans0"], row["ans1"], row["ans2"])
        gold = options.index(options[label(path, line, str(row["label"]), count=3)])
        instances.append(Instance(f"{row['context']}\nQuestion: {row['question']}", gold, options))
    cut = len(instances) - BBQ_TEST_SIZE
    return numbered(instances[:max(cut, 0)], instances[max(cut, 0):])


MATH_SUBJECTS = {"number_theory": "Number Theory", "intermediate_algebra": "Intermediate Algebra",
                 "algebra": "Algebra", "prealgebra": "Prealgebra", "geometry": "Geometry",
                 "counting_and_probability": "Counting & Probability", "precalculus": "Precalculus"}


def math(folder: Path, subject: str, level: str) -> Splits:
    """The hub's competition_math rows (`problem`, `level`, `type`, `solution`) in `train.jsonl` and
    `test.jsonl`, filtered to one subject and level; with chain of thought the reference is the whole
    solution."""
    parts = {}
    for split in ("train", "test"):
        parts[split] = [
            Instance(row["problem"], row["solution"])
            for _, row in jsonl(folder / f"{split}.jsonl", ("problem", "level", "type", "solution"))
            if row["type"] == MATH_SUBJECTS[subject] and row["level"] == f"Level {level}"
        ]
    return numbered(parts["train"], parts["test"])


class PlainUnpickler(pickle.Unpickler):
    """Reads only plain containers and strings: a pickle naming any class or function is refused (loading
    one would run code from the file)."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"it names {module}.{name}")


CNN_DM_SPLITS = {"train": "train", "validation": "eval", "test": "eval"}


def cnn_dm(folder: Path, min_words: int = 50, max_words: int = 150, doc_words: int = 512) -> Splits:
    """HELM's `cnndm.pk` (a dict of splits, each a list of {`article`, `highlights`}): newlines become spaces
    and articles keep their first 512 words; the in-context pool keeps train articles of 50 to 150 words;
    validation and test are evaluated."""
    path = folder / "cnndm.pk"
    try:
        with open(path, "rb") as f:
            data = PlainUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError) as exc:
        raise DataError(path, 1, "(pickle)", f"not read ({exc}); only plain dicts, lists and strings are") from None

    def clean(text: str, limit: int | None = None) -> str:
        return " ".join(text.replace("\n", " ").split()[:limit])

    parts: dict[str, list[Instance]] = {"train": [], "eval": []}
    for split, part in CNN_DM_SPLITS.items():
        if not isinstance(data, dict) or split not in data:
            raise DataError(path, 1, split, "missing split")
        for record, example in enumerate(data[split], 1):
            for name in ("article", "highlights"):
                if not isinstance(example, dict) or not isinstance(example.get(name), str):
                    raise DataError(path, record, name, f"record {record} of {split!r} has no string {name!r}")
            article = clean(example["article"], doc_words)
            if part == "train" and not min_words <= len(article.split()) <= max_words:
                continue
            parts[part].append(Instance(article, clean(example["highlights"])))
    return numbered(parts["train"], parts["eval"])
