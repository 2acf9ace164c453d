"""The evaluation-instances file: every data-backed scenario's test instances, as eval reads them, for a reader
that must not import eval (training's decontamination). `python -m eval instances --output FILE` writes it;
`read_instances(FILE)` reads it back.

The file is one JSON object (UTF-8):

    {
      "format": "eval-instances",
      "version": 1,
      "root": "/home/me/.cache/llm-harness/eval-data",       the data root the scenarios were read from
      "sets": [                                               one per scenario whose data was found
        {"scenario": "mmlu", "suite": "open",
         "instances": [{"input": "Which of ...?", "output": null}, ...]},
        {"scenario": "gsm8k", "suite": "open",
         "instances": [{"input": "Janet has ...", "output": "She has ... #### 18"}, ...]}
      ],
      "skipped": [{"scenario": "bigbench", "reason": "BIG-bench task files missing under ..."}]
    }

An instance is its input text and, for a generation task, its reference output text; for a multiple-choice
task `output` is null (the options are too short to say anything alone). A scenario's instances are its tasks'
test instances in their order, each once (an instance several tasks share is written once). `skipped` names the data-backed scenarios whose data
is missing, with the reason. A reader accepts version 1 only; a file it cannot use raises ValueError naming
the file and the field.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

FORMAT = "eval-instances"
VERSION = 1


@dataclass(frozen=True)
class EvalInstance:
    input: str
    output: str | None = None  # the reference output of a generation task; None for multiple choice


@dataclass(frozen=True)
class InstanceSet:
    scenario: str
    suite: str  # open, hidden or quick
    instances: tuple[EvalInstance, ...]


def write_instances(path: Path, sets: list[InstanceSet], skipped: list[tuple[str, str]], root: Path) -> Path:
    """Write the file (through a temporary file beside it, so a reader never sees half of one)."""
    data = {
        "format": FORMAT,
        "version": VERSION,
        "root": str(root),
        "sets": [{"scenario": s.scenario, "suite": s.suite,
                  "instances": [{"input": i.input, "output": i.output} for i in s.instances]} for s in sets],
        "skipped": [{"scenario": name, "reason": reason} for name, reason in skipped],
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(partial, path)
    return path


def read_instances(path: Path) -> tuple[list[InstanceSet], list[tuple[str, str]]]:
    """(every scenario's instances, (scenario, reason) for each scenario without data)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable eval-instances file ({err})") from err
    check = _Fields(path)
    top = check.object(data, "the file")
    if top.get("format") != FORMAT:
        raise ValueError(f"{path}: format: expected {FORMAT!r}, got {top.get('format')!r}")
    if top.get("version") != VERSION:
        raise ValueError(f"{path}: version: expected {VERSION}, got {top.get('version')!r} (written by another "
                         "version of the harness? write it again with `python -m eval instances`)")
    sets = []
    for n, item in enumerate(check.array(top, "sets")):
        where = f"sets[{n}]"
        item = check.object(item, where)
        instances = []
        for k, inst in enumerate(check.array(item, "instances", where)):
            at = f"{where}.instances[{k}]"
            inst = check.object(inst, at)
            instances.append(EvalInstance(check.text(inst, "input", at), check.optional_text(inst, "output", at)))
        sets.append(InstanceSet(check.text(item, "scenario", where), check.text(item, "suite", where), tuple(instances)))
    skipped = []
    for n, item in enumerate(check.array(top, "skipped")):
        where = f"skipped[{n}]"
        item = check.object(item, where)
        skipped.append((check.text(item, "scenario", where), check.text(item, "reason", where)))
    return sets, skipped


class _Fields:
    """Typed access to the parsed JSON; every error names the file and the field."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, problem: str) -> ValueError:
        return ValueError(f"{self.path}: {where}: {problem}")

    def object(self, value: object, where: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(where, f"expected an object, got {type(value).__name__}")
        return value

    def array(self, parent: dict, key: str, where: str = "") -> list:
        name = f"{where}.{key}" if where else key
        if key not in parent:
            raise self.fail(name, "missing")
        if not isinstance(parent[key], list):
            raise self.fail(name, f"expected a list, got {type(parent[key]).__name__}")
        return parent[key]

    def text(self, parent: dict, key: str, where: str) -> str:
        value = self.optional_text(parent, key, where)
        if value is None:
            raise self.fail(f"{where}.{key}", "expected a string, got null")
        return value

    def optional_text(self, parent: dict, key: str, where: str) -> str | None:
        name = f"{where}.{key}"
        if key not in parent:
            raise self.fail(name, "missing")
        value = parent[key]
        if value is not None and not isinstance(value, str):
            raise self.fail(name, f"expected a string, got {type(value).__name__}")
        return value
