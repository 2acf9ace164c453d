"""lm-eval hooks named by the task templates: the document loader and HELM's scoring rules.

A document (one JSON line, written by eval/scenarios.py) has `prompt` (the text sent), `gold` (the
reference output) and `golds` (every accepted output). The completion is scored as the server
returned it: like the judges' client, nothing here cuts it at a stop sequence.
"""
from __future__ import annotations

import json
import re
from pathlib import Path


def load_docs(path: str, **_metadata):
    """Read a task's documents into an in-memory dataset (no dataset hub, no cache writes)."""
    import datasets

    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line]
    if not rows:
        raise ValueError(f"{path}: no documents")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def exact_match(doc: dict, results: list[str]) -> dict[str, float]:
    pred = results[0].strip()
    return {"em": float(any(pred == g.strip() for g in doc["golds"]))}


def final_token_match(doc: dict, results: list[str]) -> dict[str, float]:
    words = results[0].split()
    return {"em": float(bool(words) and words[-1] == doc["gold"].split()[-1])}


_ROUGE = None


def rouge2(doc: dict, results: list[str]) -> dict[str, float]:
    global _ROUGE
    if _ROUGE is None:
        from rouge_score import rouge_scorer

        _ROUGE = rouge_scorer.RougeScorer(["rouge2"], use_stemmer=True)
    return {"rouge2": _ROUGE.score(doc["gold"], results[0]).get("rouge2").fmeasure}


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{…}` (braces balanced), or None."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return None


_LATEX_NOISE = [r"\left", r"\right", r"\!", r"\,", r"\;", "$", "^\\circ", "^{\\circ}", "\\%", "%"]


def normalize_math(answer: str) -> str:
    answer = re.sub(r"\\text\{\s*([^}]*)\}", r"\1", answer)
    for noise in _LATEX_NOISE:
        answer = answer.replace(noise, "")
    return answer.replace("dfrac", "frac").replace("tfrac", "frac").replace(" ", "").rstrip(".")


def math_equiv(doc: dict, results: list[str]) -> dict[str, float]:
    pred = last_boxed(results[0])
    return {"equiv": float(pred is not None and normalize_math(pred) == normalize_math(doc["gold"]))}
