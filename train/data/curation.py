"""What is in a mix before it is trained on: lengths, duplicates and contamination of every record,
and which records the recipe's [curation] options keep.

`curate` renders every source's records with the recipe's templates, measures them under the recipe's
tokenizer, and runs the checks the recipe needs (all of them for a data report). Duplicates are
counted over the whole mix in recipe order, so a record that repeats one from an earlier source
counts in its own source.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from train.data.contamination import EvalSet, Hit, Index, eval_root_default, load_eval_sets
from train.data.ngrams import Vocabulary
from train.recipe import DataSource, Recipe

TOKENIZE_BATCH = 1024
DROP_REASONS = ("length", "duplicates", "contaminated")


@dataclass
class SourceFindings:
    name: str
    source: DataSource
    pairs: list[tuple[str, str]]  # (prompt, response) of every record, rendered
    prompt_tokens: np.ndarray
    tokens: np.ndarray  # prompt + response + EOS, before truncation at max_seq_len
    duplicates_exact: np.ndarray
    duplicates_near: np.ndarray
    contaminated: np.ndarray
    hits: dict[int, Hit] = field(default_factory=dict)  # record -> its first overlap with an instance
    near_of: dict[int, tuple[str, int]] = field(default_factory=dict)  # record -> (source, record) it resembles
    dropped_by: dict[str, np.ndarray] = field(default_factory=dict)  # reason -> records dropped for it first
    keep: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


@dataclass
class Findings:
    sources: list[SourceFindings]
    checked: set[str]  # which checks ran: exact, near, contamination
    eval_root: Path | None = None
    eval_sets: list[EvalSet] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # scenarios without data, and why
    index: Index | None = None
    touched: set[int] = field(default_factory=set)  # evaluation instances some record overlaps

    def dropped(self) -> dict[str, int]:
        """Records the recipe's options drop, by the first reason that applies."""
        out = dict.fromkeys(DROP_REASONS, 0)
        for s in self.sources:
            for reason, mask in s.dropped_by.items():
                out[reason] += int(mask.sum())
        return out

    def contaminated_records(self) -> int:
        return sum(int(s.contaminated.sum()) for s in self.sources)


def token_lengths(tokenizer, pairs: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """(prompt tokens, prompt + response + EOS tokens) of each pair, as data.tokenize counts them."""
    prompts, totals = [], []
    for i in range(0, len(pairs), TOKENIZE_BATCH):
        batch = pairs[i:i + TOKENIZE_BATCH]
        p = tokenizer([prompt for prompt, _ in batch])["input_ids"]
        r = tokenizer([response for _, response in batch], add_special_tokens=False)["input_ids"]
        prompts += [len(x) for x in p]
        totals += [len(x) + len(y) + 1 for x, y in zip(p, r)]
    return np.asarray(prompts, dtype=np.int64), np.asarray(totals, dtype=np.int64)


def _bar(total: int, what: str) -> tqdm:
    return tqdm(total=total, desc=f"data report: {what}", unit=" records", file=sys.stderr, leave=False,
                disable=None, mininterval=0.5)


def eval_root_of(recipe: Recipe, given: Path | None = None) -> Path:
    """The evaluation data root checked for contamination: `given`, the recipe's, or eval's own."""
    return Path(given or recipe.curation.eval_data or eval_root_default())


def checks_needed(recipe: Recipe, full: bool) -> set[str]:
    """The checks a curation runs: all of them for a data report (`full`), else those the options need."""
    c = recipe.curation
    checks = {"exact", "near", "contamination"} if full else (
        {"exact", "near"} if c.dedup == "near" else {"exact"} if c.dedup == "exact" else set())
    return checks | ({"contamination"} if c.decontaminate else set())


def curate(recipe: Recipe, tokenizer, rendered: list[tuple[str, DataSource, list[tuple[str, str]]]],
           full: bool = False, eval_root: Path | None = None,
           eval_data: tuple[list[EvalSet], list[tuple[str, str]]] | None = None) -> Findings:
    """Measure every rendered record and decide what the recipe keeps. `full` runs every check (for a
    data report); otherwise only those the recipe's options need. `eval_data`: load_eval_sets' answer
    for the evaluation data root, when it was read already (a run reads it before the model loads)."""
    checks = checks_needed(recipe, full)
    total = sum(len(pairs) for _, _, pairs in rendered)
    sources = []
    with _bar(total, "tokens") as bar:
        for name, source, pairs in rendered:
            prompt_tokens, tokens = token_lengths(tokenizer, pairs)
            empty = np.zeros(len(pairs), dtype=bool)
            sources.append(SourceFindings(name, source, pairs, prompt_tokens, tokens, empty.copy(), empty.copy(),
                                          empty.copy()))
            bar.update(len(pairs))
    findings = Findings(sources, checks)
    if checks:
        vocab = Vocabulary()
        if "contamination" in checks:
            findings.eval_root = eval_root_of(recipe, eval_root)
            findings.eval_sets, findings.skipped = eval_data or load_eval_sets(findings.eval_root)
            findings.index = Index.cached(findings.eval_sets, vocab)
        with _bar(total, "words") as bar:
            ids = []
            for s in sources:
                ids += [vocab.encode(f"{p} {r}") for p, r in s.pairs]
                bar.update(len(s.pairs))
        if checks & {"exact", "near"}:
            # Imported here: datasketch is needed only when a recipe deduplicates (a GPU image without it
            # still trains and runs bench/gpu_check.py).
            from train.data.dedup import find_duplicates

            with _bar(total, "duplicates") as bar:
                dups = find_duplicates(ids, bar.update)
            _spread(sources, dups.exact, "duplicates_exact")
            if "near" in checks:
                _spread(sources, dups.near, "duplicates_near")
                where = _locator(sources)
                for i, j in dups.near_of.items():
                    s, local = where(i)
                    sources[s].near_of[local] = (sources[where(j)[0]].name, where(j)[1])
        if "contamination" in checks:
            with _bar(total, "contamination") as bar:
                first, findings.touched = findings.index.scan(ids, bar.update)
            where = _locator(sources)
            for i, hit in first.items():
                s, local = where(i)
                sources[s].contaminated[local] = True
                sources[s].hits[local] = hit
    for s in sources:
        _decide(recipe, s)
    return findings


def _spread(sources: list[SourceFindings], flags: np.ndarray, attribute: str) -> None:
    at = 0
    for s in sources:
        setattr(s, attribute, flags[at:at + len(s.pairs)].copy())
        at += len(s.pairs)


def _locator(sources: list[SourceFindings]) -> Callable[[int], tuple[int, int]]:
    """Mix-wide record number -> (source, record within it)."""
    starts = np.cumsum([0] + [len(s.pairs) for s in sources])

    def where(i: int) -> tuple[int, int]:
        s = int(np.searchsorted(starts, i, side="right") - 1)
        return s, i - int(starts[s])

    return where


def _decide(recipe: Recipe, s: SourceFindings) -> None:
    """Which records the [curation] options drop; each dropped record is counted under its first reason."""
    c = recipe.curation
    none = np.zeros(len(s.pairs), dtype=bool)
    chars = np.fromiter((len(p) + len(r) for p, r in s.pairs), dtype=np.int64, count=len(s.pairs))
    reasons = {
        "length": (s.tokens < c.min_tokens) | (chars < c.min_chars)
        | ((s.tokens > c.max_tokens) if c.max_tokens else none) | ((chars > c.max_chars) if c.max_chars else none),
        "duplicates": (s.duplicates_exact if c.dedup in ("exact", "near") else none)
        | (s.duplicates_near if c.dedup == "near" else none),
        "contaminated": s.contaminated if c.decontaminate else none,
    }
    drop = none.copy()
    for reason in DROP_REASONS:
        s.dropped_by[reason] = reasons[reason] & ~drop
        drop |= reasons[reason]
    s.keep = ~drop
