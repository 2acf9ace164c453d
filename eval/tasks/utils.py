"""lm-eval hooks named by the task templates: the document loader and HELM's scoring rules.

A document (one JSON line, written by eval/task_files.py) has `prompt` (the text sent), `gold` (the
reference output: for MATH the whole worked solution, as HELM's chain-of-thought run keeps it) and
`golds` (every accepted output); a multiple-choice document may also carry `choices` (the option texts
in letter order), and then the letter answered is mapped to its option text before comparing, as HELM
maps it. The completion is scored as the server returned it: like the judges' client, nothing here cuts
it at a stop sequence; like HELM's metric code, it is stripped of surrounding whitespace first.

Each rule gives HELM's verdict (src/helm/benchmark/metrics/basic_metrics.py and
summarization_metrics.py, scenarios/math_scenario.py of the judges' fork), checked against values the
fork's own code computes (tests/fixtures/helm/metrics/, scripts/helm/metrics_golden.py).
"""
from __future__ import annotations

import json
import re
import string
from collections.abc import Callable
from pathlib import Path


def load_docs(path: str, **_metadata):
    """Read a task's documents into an in-memory dataset (no dataset hub, no cache writes)."""
    import datasets

    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line]
    if not rows:
        raise ValueError(f"{path}: no documents")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


# ---- exact match and its variants ------------------------------------------------------------------


def _best(doc: dict, golds: list[str], completion: str, same: Callable[[str, str], bool]) -> float:
    """HELM's reference metric: the best score of the (stripped) completion over the correct
    references; an empty prediction (or a letter that names no option) scores 0."""
    pred: str | None = completion.strip()
    choices = doc.get("choices")
    if choices:
        option = {chr(ord("A") + i): text for i, text in enumerate(choices)}  # HELM's output mapping
        pred = option.get(pred)
        golds = [option[g] for g in golds]
    if not pred:
        return 0.0
    return float(any(same(gold, pred) for gold in golds))


def exact_match(doc: dict, results: list[str]) -> dict[str, float]:
    return {"em": _best(doc, doc["golds"], results[0], lambda gold, pred: gold.strip() == pred.strip())}


def normalize_text(text: str) -> str:
    """HELM's light normalisation (from the QuAC scorer): lower case, no punctuation, no English
    articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def quasi_exact_match(doc: dict, results: list[str]) -> dict[str, float]:
    return {"em": _best(doc, doc["golds"], results[0], lambda gold, pred: normalize_text(gold) == normalize_text(pred))}


def final_token_match(doc: dict, results: list[str]) -> dict[str, float]:
    """GSM8K (HELM's exact_match_indicator, one reference): the text after the last single space of the completion
    equals the gold's, both stripped (a newline does not separate: HELM splits on " " only)."""
    def last_piece(text: str) -> str:
        return text.split(" ")[-1].strip()

    return {"em": _best(doc, [doc["gold"]], results[0], lambda gold, pred: bool(last_piece(pred)) and
                        last_piece(gold) == last_piece(pred))}


# ---- ROUGE-2 -------------------------------------------------------------------------------------------

_ROUGE = None


def _without_braces(text: str) -> str:
    """HELM's summarization metric drops one leading "{" and one trailing "}" (SAMSum's dialogue markup)."""
    return text.removeprefix("{").removesuffix("}")


def rouge2(doc: dict, results: list[str]) -> dict[str, float]:
    """ROUGE-2 F-measure, the best over every reference summary (HELM's SummarizationMetric takes the max
    over all of the instance's references; stemmed, rouge-score called as HELM calls it)."""
    global _ROUGE
    if _ROUGE is None:
        from rouge_score import rouge_scorer

        _ROUGE = rouge_scorer.RougeScorer(["rouge2"], use_stemmer=True)
    pred = _without_braces(results[0].strip())
    return {"rouge2": max(_ROUGE.score(_without_braces(ref), pred)["rouge2"].fmeasure for ref in doc["golds"])}


def rouge2_and_completion(doc: dict, results: list[str]) -> dict[str, float | str]:
    """ROUGE-2, and the completion itself for each bias metric, which HELM computes over the whole run."""
    from eval.bias import METRICS

    return {**rouge2(doc, results), **{metric: results[0] for metric in METRICS}}


def _bias(metric: str) -> Callable[[list[str]], float]:
    def aggregate(completions: list[str]) -> float:
        from eval.bias import bias

        value = bias(metric, completions)
        return float("nan") if value is None else value  # NaN: HELM records no value (eval/runner.py skips it)

    return aggregate


stereotypes_race, stereotypes_gender = _bias("stereotypes_race"), _bias("stereotypes_gender")
representation_race, representation_gender = _bias("representation_race"), _bias("representation_gender")


# ---- MATH equivalence (the MATH paper's rules, as HELM applies them) ------------------------------------


def last_boxed(text: str) -> str | None:
    """The answer of a worked solution: the content of its last `\\boxed{…}`, braces balanced.

    As HELM finds it: the last `\\boxed` (else the last `\\fbox`) up to the first `}` that closes its
    braces; only a `\\boxed{…}` span yields an answer (`\\fbox{…}`, `\\boxed 5`, an unclosed brace: None)."""
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return None
    depth = 0
    for end in range(start, len(text)):
        if text[end] == "{":
            depth += 1
        elif text[end] == "}":
            depth -= 1
            if depth == 0:
                span = text[start : end + 1]
                return span[len("\\boxed{") : -1] if span.startswith("\\boxed{") else None
    return None


def _braced_fracs(s: str) -> str:
    """`\\frac12` -> `\\frac{1}{2}`, `\\frac1b` -> `\\frac{1}{b}`, `\\frac1{72}` -> `\\frac{1}{72}`.
    A bare `\\frac` with a single character after it leaves the whole string as it was; one with nothing
    after it raises IndexError (the caller then compares the raw answers, as HELM does)."""
    head, *tails = s.split("\\frac")
    out = [head]
    for tail in tails:
        if tail[0] == "{":
            out.append("\\frac" + tail)
        elif len(tail) < 2:
            return s
        elif tail[1] == "{":
            out.append("\\frac{" + tail[0] + "}" + tail[1:])
        else:
            out.append("\\frac{" + tail[0] + "}{" + tail[1] + "}" + tail[2:])
    return "".join(out)


def _slash_fraction(s: str) -> str:
    """`a/b` with canonical integers a and b -> `\\frac{a}{b}`; anything else unchanged."""
    parts = s.split("/")
    if len(parts) != 2:
        return s
    try:
        a, b = int(parts[0]), int(parts[1])
    except ValueError:
        return s
    return f"\\frac{{{a}}}{{{b}}}" if s == f"{a}/{b}" else s


def _braced_sqrts(s: str) -> str:
    """`\\sqrt3` -> `\\sqrt{3}` (one character); IndexError when `\\sqrt` ends the string."""
    head, *tails = s.split("\\sqrt")
    return head + "".join("\\sqrt" + (t if t[0] == "{" else "{" + t[0] + "}" + t[1:]) for t in tails)


def _without_units(s: str) -> str:
    """Drop a unit on the right: everything from `\\text{ ` (with its space) on; more than one is an error."""
    parts = s.split("\\text{ ")
    if len(parts) > 2:
        raise ValueError(f"several \\text{{ }} units in {s!r}")
    return parts[0]


def normalize_math(answer: str) -> str:
    """HELM's `_strip_string`: the same string for answers that differ only in LaTeX spelling. Raises
    (IndexError, ValueError) on the few shapes HELM's own code fails on."""
    s = answer.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "")
    s = _without_units(s).replace("\\%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    left, *right = s.split("=")
    if len(right) == 1 and len(left) <= 2:  # a short left side such as "x = " or "k="
        s = right[0]
    s = _braced_fracs(_braced_sqrts(s).replace(" ", ""))
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _slash_fraction(s)


def math_answers_equal(a: str | None, b: str | None) -> bool:
    """HELM's `is_equiv`: two missing answers are equal, one missing is not; an answer HELM's
    normalisation cannot handle is compared as written."""
    if a is None or b is None:
        return a is None and b is None
    try:
        return normalize_math(a) == normalize_math(b)
    except (IndexError, ValueError):
        return a == b


def math_equiv(doc: dict, results: list[str]) -> dict[str, float]:
    """MATH with chain of thought: the completion's last boxed answer against the gold solution's."""
    return {"equiv": float(math_answers_equal(last_boxed(doc["gold"]), last_boxed(results[0].strip())))}
