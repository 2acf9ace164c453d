"""Words for overlap checks: lm-eval's decontamination normalisation, word ids, and n-gram hashes.

The normalisation is lm-eval's `Janitor` rule (ASCII letters lower-cased, `string.punctuation`
deleted, split on whitespace). It is restated here rather than imported because importing
`lm_eval.decontamination.janitor` prints a warning and a traceback whenever its optional C++ helper
is not compiled; tests/test_data_report.py checks that the two agree.

A word's id is a hash of its own bytes (blake2b), never a number given in order of first sight: what
is kept as a duplicate or as clean must not depend on what was read first (rank 0 reads the evaluation
instances before the mix, the other ranks do not), and Python's own `hash` of a string is salted per
process. An n-gram's hash is a polynomial over mixed word
ids in wrapping 64-bit arithmetic, computed for a whole chunk of texts at once with numpy.
"""
from __future__ import annotations

import hashlib
import string
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain

import numpy as np

NORMALISE = str.maketrans(string.ascii_lowercase + string.ascii_uppercase, string.ascii_lowercase * 2,
                          string.punctuation)
BASE = np.uint64(0x100000001B3)  # odd, so the polynomial never loses the earlier words


def words(text: str) -> list[str]:
    return text.translate(NORMALISE).split()


def word_id(word: str) -> int:
    """A word's 64-bit id: the same in every process, whatever else was read."""
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")


class Vocabulary:
    """Word -> id (`word_id`), remembered: a mix repeats its words far more often than it adds new ones."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def encode(self, text: str) -> list[int]:
        ids = self.ids
        out = []
        for w in words(text):
            i = ids.get(w)
            if i is None:
                i = ids[w] = word_id(w)
            out.append(i)
        return out


@dataclass
class Texts:
    """Several texts' word ids end to end: `owner[i]` is the text position i belongs to."""

    ids: np.ndarray
    owner: np.ndarray
    starts: np.ndarray  # where each text begins in `ids`

    @classmethod
    def of(cls, id_lists: list[list[int]]) -> Texts:
        lengths = np.fromiter((len(x) for x in id_lists), dtype=np.int64, count=len(id_lists))
        flat = np.fromiter(chain.from_iterable(id_lists), dtype=np.uint64, count=int(lengths.sum()))
        owner = np.repeat(np.arange(len(id_lists), dtype=np.int64), lengths)
        return cls(flat, owner, np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64))


def mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: consecutive ids become well-spread 64-bit values."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def ngram_hashes(texts: Texts, sizes: Iterable[int]) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(n, hashes, start positions) of every n-gram that lies inside one text, for each n in sizes
    (ascending). The hashes of n-grams are extended from those of (n-1)-grams, one word at a time."""
    wanted = set(sizes)
    if not wanted or len(texts.ids) == 0:
        return
    w = mix(texts.ids)
    h = w.copy()
    for n in range(1, max(wanted) + 1):
        if n > 1:
            if len(h) <= 1:
                return
            h = h[:-1] * BASE + w[n - 1:]
        if n in wanted:
            inside = texts.owner[:len(h)] == texts.owner[n - 1:n - 1 + len(h)]
            positions = np.flatnonzero(inside)
            yield n, h[positions], positions
