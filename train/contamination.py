"""Contamination: n-gram overlap between training records and the judges' evaluation instances.

The rule is the GPT-3 paper's (appendix C), as lm-eval's decontamination applies it: words are
normalised (train/words.py), and a training record overlaps an instance when they share an n-gram.
n is 13, shorter for a scenario whose instances are short (the 5th percentile of its instances'
lengths in words), never below 8; an instance shorter than n overlaps a record that contains all of
it. An instance is its input, plus its reference output for a generation task (a summary, a worked
solution); multiple-choice options are too short to say anything alone.

The instances come from eval's own scenario readers (eval/scenarios.py): every test instance of every
scenario whose data is on disk - under the eval data root (`python -m eval data` fetches BIG-bench and
BBQ-lite there) or among the project's fixtures. Scenarios that generate their instances from code
(the quick suite's generated tasks) are not data and are left out.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from train.words import Texts, Vocabulary, ngram_hashes

MAX_N = 13
MIN_N = 8
EVERY_INSTANCE = 10**9  # a budget no scenario reaches: all test instances, not the judges' sample
CHUNK = 8192


@dataclass
class EvalSet:
    scenario: str
    suite: str
    instances: list[str]  # the input of each instance, for examples in the report
    segments: list[tuple[int, str]] = field(default_factory=list)  # (instance, text) pairs that are checked
    n: int = MAX_N


@dataclass(frozen=True)
class Hit:
    instance: int  # global instance number (Index.owner_set tells its scenario)
    start: int  # first word of the shared n-gram in the training record
    length: int  # words in the shared n-gram


def eval_root_default() -> Path:
    from train.tiny import cache_root

    return cache_root() / "eval-data"


def _reads_data(scenario, empty: Path) -> bool:
    """Whether a scenario's instances come from files: from the data root (it finds nothing in an empty
    one) or from the fixtures."""
    from eval.scenarios import MissingData

    if scenario.name.startswith("fixture_"):
        return True
    try:
        scenario.build(empty, 1)
    except MissingData:
        return True
    except (OSError, ValueError):
        return True
    return False


def load_eval_sets(root: Path) -> tuple[list[EvalSet], list[tuple[str, str]]]:
    """Every data-backed scenario's test instances, and (scenario, reason) for those without data."""
    from eval.scenarios import MissingData, suite

    sets, skipped = [], []
    with tempfile.TemporaryDirectory() as empty:
        for scenario in suite("all"):
            if not _reads_data(scenario, Path(empty)):
                continue
            try:
                specs = scenario.build(root, EVERY_INSTANCE)
            except MissingData as err:
                skipped.append((scenario.name, str(err)))
                continue
            seen: set[tuple[str, str]] = set()
            eval_set = EvalSet(scenario.name, scenario.suite, [])
            for spec in specs:
                if spec.copy_of:  # perturbed copies of the same instances
                    continue
                for inst in spec.test:
                    key = (inst.input, str(inst.output))
                    if key in seen:  # BIG-bench's k-shot tasks share their test instances
                        continue
                    seen.add(key)
                    number = len(eval_set.instances)
                    eval_set.instances.append(inst.input)
                    eval_set.segments.append((number, inst.input))
                    if not inst.is_mc:
                        eval_set.segments.append((number, str(inst.output)))
            sets.append(eval_set)
    return sets, skipped


def ngram_size(lengths: list[int]) -> int:
    """13, or the 5th percentile of the instances' lengths in words when that is shorter; at least 8."""
    lengths = [n for n in lengths if n > 0]
    if not lengths:
        return MAX_N
    return int(min(MAX_N, max(MIN_N, np.percentile(lengths, 5))))


class Index:
    """Every checked n-gram of every instance, sorted by hash, with the instance it came from."""

    def __init__(self, sets: list[EvalSet], vocab: Vocabulary) -> None:
        self.sets = sets
        self.offsets = np.cumsum([0] + [len(s.instances) for s in sets])  # global instance numbers
        by_size: dict[int, tuple[list[list[int]], list[int]]] = {}
        for s, eval_set in enumerate(sets):
            encoded = [(number, vocab.encode(text)) for number, text in eval_set.segments]
            eval_set.n = ngram_size([len(ids) for _, ids in encoded if ids])
            for number, ids in encoded:
                if ids:  # a short segment is checked whole: its one n-gram of its own length
                    texts, owners = by_size.setdefault(min(len(ids), eval_set.n), ([], []))
                    texts.append(ids)
                    owners.append(int(self.offsets[s]) + number)
        self.keys: dict[int, np.ndarray] = {}
        self.owners: dict[int, np.ndarray] = {}
        for n, (id_lists, owner_list) in by_size.items():
            texts = Texts.of(id_lists)
            (_, hashes, positions), = ngram_hashes(texts, [n])
            order = np.argsort(hashes, kind="stable")
            self.keys[n] = hashes[order]
            self.owners[n] = np.asarray(owner_list, dtype=np.int64)[texts.owner[positions]][order]

    def owner_set(self, instance: int) -> int:
        return int(np.searchsorted(self.offsets, instance, side="right") - 1)

    def scan(self, id_lists: list[list[int]], progress: Callable[[int], None] = lambda n: None
             ) -> tuple[dict[int, Hit], set[int]]:
        """(first hit of each record that overlaps some instance, every instance that is overlapped)."""
        first: dict[int, Hit] = {}
        touched: set[int] = set()
        for start in range(0, len(id_lists), CHUNK):
            texts = Texts.of(id_lists[start:start + CHUNK])
            for n, hashes, positions in ngram_hashes(texts, sorted(self.keys)):
                keys = self.keys[n]
                lo = np.searchsorted(keys, hashes, side="left")
                hi = np.searchsorted(keys, hashes, side="right")
                for at in np.flatnonzero(hi > lo):
                    position = int(positions[at])
                    local = int(texts.owner[position])
                    instances = self.owners[n][lo[at]:hi[at]]
                    touched.update(instances.tolist())
                    record = start + local
                    first.setdefault(record, Hit(int(instances[0]), position - int(texts.starts[local]), n))
            progress(min(CHUNK, len(id_lists) - start))
        return first, touched
