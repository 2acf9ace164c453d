"""A bounded LRU cache of the KV states of prompt prefixes.

Every request of one HELM scenario repeats the same instruction and in-context examples; with
their keys and values cached, a request computes only its own question. Entries are looked up by
the longest common token prefix, so one cached prompt serves every prompt that starts like it.
Keys are cached after the rotary position embedding, so a prefix's states are valid for any
continuation of it.

An intake of new requests may cache prompts while its later forward passes still build on
entries it looked up earlier; those entries are pinned for the intake, so eviction passes them
by, and the bound is restored when the intake releases them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [batch, heads, tokens, dim]


@dataclass
class Entry:
    ids: np.ndarray  # token ids of the cached prefix
    kv: KV  # batch of one
    key: tuple[int, ...]


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


class PrefixCache:
    def __init__(self, max_tokens: int):
        self.max_tokens = max_tokens
        self.entries: OrderedDict[tuple[int, ...], Entry] = OrderedDict()
        self.tokens = 0
        self.pinned: set[tuple[int, ...]] = set()  # in use by the current intake: not evicted
        self.version = 0  # changes whenever entries come or go: earlier lookups are stale
        self.hits = 0
        self.evictions = 0
        self.reused_tokens = 0

    def lookup(self, ids: np.ndarray) -> tuple[Entry | None, int]:
        """The entry sharing the longest prefix with `ids`, and that prefix's length."""
        best, best_len = None, 0
        for entry in self.entries.values():
            length = common_prefix(entry.ids, ids)
            if length > best_len:
                best, best_len = entry, length
        return best, best_len

    def touch(self, entry: Entry, used: int) -> None:
        """Record a use: the entry becomes the most recent."""
        self.entries.move_to_end(entry.key)
        self.hits += 1
        self.reused_tokens += used

    def pin(self, entry: Entry | None) -> None:
        """Keep `entry` until `release`: the current intake builds on it."""
        if entry is not None and entry.key in self.entries:
            self.pinned.add(entry.key)

    def release(self) -> None:
        """Unpin every entry and evict down to the bound again."""
        self.pinned.clear()
        self._evict()

    def clear(self) -> None:
        """Drop every entry (their memory is freed once no batch holds a view of it)."""
        self.entries.clear()
        self.pinned.clear()
        self.tokens = 0
        self.version += 1

    def insert(self, ids: list[int], kv: KV) -> Entry | None:
        if len(ids) > self.max_tokens:
            return None
        key = tuple(ids)
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key]
        self.version += 1
        entry = Entry(np.array(ids, dtype=np.int64), kv, key)
        self.entries[key] = entry
        self.tokens += len(ids)
        self._evict()
        return entry

    def _evict(self) -> None:
        """Drop the least recently used unpinned entries until the bound holds."""
        for key in [key for key in self.entries if key not in self.pinned]:  # oldest first
            if self.tokens <= self.max_tokens:
                return
            self.tokens -= len(self.entries.pop(key).ids)
            self.evictions += 1
            self.version += 1
