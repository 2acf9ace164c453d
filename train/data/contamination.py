"""Contamination: n-gram overlap between training records and the judges' evaluation instances.

The rule is the GPT-3 paper's (appendix C), as lm-eval's decontamination applies it: words are
normalised (train/data/ngrams.py), and a training record overlaps an instance when they share an n-gram.
n is 13, shorter for a scenario whose instances are short (the 5th percentile of its instances'
lengths in words), never below 8; an instance shorter than n overlaps a record that contains all of
it. An instance is its input, plus its reference output for a generation task (a summary, a worked
solution); multiple-choice options are too short to say anything alone.

The instances are the ones eval's scenario readers build: every test instance of every scenario whose
data is on disk - under the eval data root (`python -m eval data` fetches BIG-bench and BBQ-lite there)
or among the project's fixtures. Training does not import eval: it runs `python -m eval instances`, which
exports them in the foundation's file format (core/instances.py), and reads that file. Scenarios that
generate their instances from code (the quick suite's generated tasks) are not data and are left out.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.cache import build_once, cache_root
from core.instances import read_instances
from train.data.ngrams import Texts, Vocabulary, ngram_hashes

MAX_N = 13
MIN_N = 8
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
    return cache_root() / "eval-data"


def load_eval_sets(root: Path) -> tuple[list[EvalSet], list[tuple[str, str]]]:
    """Every data-backed scenario's test instances under `root`, and (scenario, reason) for those without
    data: exported by `python -m eval instances` into core/instances.py's file, then read back."""
    with tempfile.TemporaryDirectory() as folder:
        exported = Path(folder) / "instances.json"
        command = [sys.executable, "-m", "eval", "instances", "--data", str(root), "--output", str(exported)]
        done = subprocess.run(command, check=False, capture_output=True, text=True)
        if done.returncode != 0:
            detail = (done.stderr.strip() or done.stdout.strip()).splitlines()
            raise ValueError(f"evaluation data {root}: `python -m eval instances` failed (exit {done.returncode})"
                             + (f": {detail[-1]}" if detail else ""))
        sets, skipped = read_instances(exported)
    eval_sets = []
    for instance_set in sets:
        eval_set = EvalSet(instance_set.scenario, instance_set.suite, [])
        for number, instance in enumerate(instance_set.instances):
            eval_set.instances.append(instance.input)
            eval_set.segments.append((number, instance.input))
            if instance.output is not None:
                eval_set.segments.append((number, instance.output))
        eval_sets.append(eval_set)
    return eval_sets, skipped


def ngram_size(lengths: list[int]) -> int:
    """13, or the 5th percentile of the instances' lengths in words when that is shorter; at least 8."""
    lengths = [n for n in lengths if n > 0]
    if not lengths:
        return MAX_N
    return int(min(MAX_N, max(MIN_N, np.percentile(lengths, 5))))


INDEX_FORMAT = 1  # change it with the n-gram rule (train/data/ngrams.py) or the saved arrays: old indexes go unread


def index_key(sets: list[EvalSet]) -> str:
    """A digest of everything an Index is made from: the rule's version and sizes, every checked segment."""
    digest = hashlib.sha256(f"{INDEX_FORMAT} {MAX_N} {MIN_N}".encode())
    for s in sets:
        digest.update(f"\0{s.scenario}\0{s.suite}\0{len(s.instances)}\0{len(s.segments)}".encode())
        for number, text in s.segments:
            digest.update(f"\0{number}\0{text}".encode())
    return digest.hexdigest()[:32]


def instance_offsets(sets: list[EvalSet]) -> np.ndarray:
    """Where each set's instances begin in the global instance numbering."""
    return np.cumsum([0] + [len(s.instances) for s in sets])


class Index:
    """Every checked n-gram of every instance, sorted by hash, with the instance it came from."""

    def __init__(self, sets: list[EvalSet], keys: dict[int, np.ndarray], owners: dict[int, np.ndarray]) -> None:
        self.sets = sets
        self.offsets = instance_offsets(sets)
        self.keys = keys
        self.owners = owners

    @classmethod
    def build(cls, sets: list[EvalSet], vocab: Vocabulary) -> Index:
        """Encode every segment, choose each set's n (EvalSet.n) and hash the n-grams."""
        offsets = instance_offsets(sets)
        by_size: dict[int, tuple[list[list[int]], list[int]]] = {}
        for s, eval_set in enumerate(sets):
            encoded = [(number, vocab.encode(text)) for number, text in eval_set.segments]
            eval_set.n = ngram_size([len(ids) for _, ids in encoded if ids])
            for number, ids in encoded:
                if ids:  # a short segment is checked whole: its one n-gram of its own length
                    texts, owners = by_size.setdefault(min(len(ids), eval_set.n), ([], []))
                    texts.append(ids)
                    owners.append(int(offsets[s]) + number)
        keys, owner_arrays = {}, {}
        for n, (id_lists, owner_list) in by_size.items():
            texts = Texts.of(id_lists)
            (_, hashes, positions), = ngram_hashes(texts, [n])
            order = np.argsort(hashes, kind="stable")
            keys[n] = hashes[order]
            owner_arrays[n] = np.asarray(owner_list, dtype=np.int64)[texts.owner[positions]][order]
        return cls(sets, keys, owner_arrays)

    @classmethod
    def cached(cls, sets: list[EvalSet], vocab: Vocabulary, root: Path | None = None) -> Index:
        """build(), once per machine for the same instances (index_key): every later run, resume and
        rank reads it back from `root` (default $HARNESS_CACHE/contamination-index) instead of spending its
        budget hashing the evaluation data again. Where the cache cannot be written, it is built in memory."""
        folder = (root or cache_root() / "contamination-index") / index_key(sets)

        def save(staging: Path) -> None:
            index = cls.build(sets, vocab)
            np.savez(staging / "index.npz", ns=np.array([s.n for s in sets], dtype=np.int64),
                     **{f"keys_{n}": k for n, k in index.keys.items()},
                     **{f"owners_{n}": o for n, o in index.owners.items()})

        for rebuild in (False, True):  # a damaged cache is built again, once
            try:
                with np.load(build_once(folder, save, rebuild) / "index.npz") as saved:
                    ns = saved["ns"].tolist()
                    keys = {int(name[5:]): saved[name] for name in saved.files if name.startswith("keys_")}
                    owners = {n: saved[f"owners_{n}"] for n in keys}
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
                continue
            if len(ns) == len(sets):
                for eval_set, n in zip(sets, ns):
                    eval_set.n = n
                return cls(sets, keys, owners)
        return cls.build(sets, vocab)

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
