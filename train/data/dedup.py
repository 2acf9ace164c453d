"""Duplicate records: exact (same normalised words) and near (MinHash LSH from datasketch).

A record counts as a duplicate when it repeats an earlier record of the mix; the first of each group
is kept and not counted. Near means an estimated Jaccard similarity of at least NEAR_THRESHOLD
between the sets of word 5-grams (a record shorter than that is one shingle: all its words). Only
records that are not duplicates go into the LSH index. Its bands (BANDS of ROWS signature values) make
a pair of similarity 0.8 a candidate with probability 0.95 and one of 0.9 with 0.9999 (datasketch's
own choice for a 0.8 threshold, 9 bands of 13, misses one pair in 14 at 0.9); a candidate counts only
when the signatures' own Jaccard estimate reaches NEAR_THRESHOLD, so the band structure's false
positives cost a comparison each and nothing more.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from datasketch import MinHash, MinHashLSH

from train.data.ngrams import Texts, ngram_hashes

SHINGLE_WORDS = 5
NUM_PERM = 128
NEAR_THRESHOLD = 0.8
BANDS, ROWS = 16, 8  # BANDS * ROWS = NUM_PERM
CHUNK = 4096


@dataclass
class Duplicates:
    exact: np.ndarray  # bool per record: repeats an earlier record word for word (after normalisation)
    near: np.ndarray  # bool per record: not exact, but near an earlier kept record
    near_of: dict[int, int]  # near duplicate -> the earlier record it resembles


def shingles(texts: Texts, count: int) -> list[list[int]]:
    """Each text's distinct shingle hashes (32-bit, the width datasketch's default scheme takes)."""
    out: list[list[int]] = [[] for _ in range(count)]
    lengths = np.diff(np.append(texts.starts, len(texts.ids)))
    for n, hashes, positions in ngram_hashes(texts, [SHINGLE_WORDS, *sorted(set(lengths[lengths < SHINGLE_WORDS]) - {0})]):
        owners = texts.owner[positions]
        if n < SHINGLE_WORDS:  # a short text: its single whole-text shingle
            keep = lengths[owners] == n
            hashes, owners = hashes[keep], owners[keep]
        top = (hashes >> np.uint64(32)).astype(np.int64)
        order = np.argsort(owners, kind="stable")
        bounds = np.searchsorted(owners[order], np.arange(count + 1))
        for i in range(count):
            if bounds[i + 1] > bounds[i]:
                out[i] = np.unique(top[order[bounds[i]:bounds[i + 1]]]).tolist()
    return out


def find_duplicates(id_lists: list[list[int]], progress: Callable[[int], None] = lambda n: None) -> Duplicates:
    count = len(id_lists)
    exact = np.zeros(count, dtype=bool)
    near = np.zeros(count, dtype=bool)
    near_of: dict[int, int] = {}
    seen: set[bytes] = set()
    lsh = MinHashLSH(num_perm=NUM_PERM, params=(BANDS, ROWS))
    signatures: dict[int, np.ndarray] = {}
    for start in range(0, count, CHUNK):
        chunk = id_lists[start:start + CHUNK]
        sketches = MinHash.generator(shingles(Texts.of(chunk), len(chunk)), num_perm=NUM_PERM, hashfunc=int)
        for offset, (ids, sketch) in enumerate(zip(chunk, sketches)):
            i = start + offset
            key = hashlib.blake2b(np.asarray(ids, dtype=np.uint64).tobytes(), digest_size=16).digest()
            if key in seen:
                exact[i] = True
                continue
            seen.add(key)
            signature = sketch.hashvalues.astype(np.uint32)
            similar = next((c for c in lsh.query(sketch)
                            if np.mean(signatures[c] == signature) >= NEAR_THRESHOLD), None)
            if similar is not None:
                near[i], near_of[i] = True, similar
                continue
            lsh.insert(i, sketch)
            signatures[i] = signature
        progress(len(chunk))
    return Duplicates(exact, near, near_of)
