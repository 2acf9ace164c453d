"""Admission: which requests the worker takes in at each step, and how their prompts are computed.

Requests queue up from the request threads, then wait in the worker's own line. An idle worker
blocks for the first request and, when requests have lately come together, waits batch_wait_ms
for company (a lone client should not pay the wait on every request). While rows are decoding, new
prompts are admitted up to prefill_budget uncached tokens per step, oldest first, so a stream of
short requests cannot stall the running generations indefinitely, and only as many as the batch's
bound in tokens holds.

Each prompt builds on the longest cached prefix it extends (prefix_cache.py). Prompts of one intake
that share a long prefix the cache lacks (a burst from one scenario) get it computed once, first;
prompts of similar uncached lengths share a forward pass (less padding); a prompt the cache covered
less than half of is cached in turn.
"""

from __future__ import annotations

import itertools
import queue
import time
from collections import deque

import numpy as np
import torch

from submission.batch_kv import KV, SPARE
from submission.decoding import Job
from submission.memory import MAX_PREFILL_TOKENS
from submission.prefix_cache import Entry, PrefixCache, common_prefix
from submission.settings import Settings

# A prompt to compute (a request, or bare ids), the cached prefix it extends, and that prefix's length.
Row = tuple[Job | list[int], Entry | None, int]


class Admission:
    def __init__(self, settings: Settings, prefixes: PrefixCache, prefill_tokens: int):
        self.settings, self.prefixes = settings, prefixes
        self.prefill_tokens = prefill_tokens  # prompt states one forward pass may hold (memory.py)
        self.queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()  # None: close
        self.waiting: deque[Job] = deque()  # arrived, not yet admitted
        self.admitting: list[Job] = []  # taken in by the intake in progress
        self.last_intake = 0  # requests taken at the last intake

    def queued(self) -> int:
        """Requests waiting for a batch row."""
        return self.queue.qsize() + len(self.waiting)

    def collect(self, busy: bool) -> bool:
        """Move what arrived into the waiting line; False when closing. `busy`: the batch has rows,
        so the worker must not block."""
        if not busy and not self.waiting:
            first = self.queue.get()
            if first is None:
                return False
            self.arrive(first)
            wait = self.settings.batch_wait_ms / 1000 if self.last_intake > 1 else 0.0
            deadline = time.monotonic() + wait
            while len(self.waiting) < self.settings.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    job = self.queue.get(timeout=remaining) if remaining > 0 else self.queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self.queue.put(None)  # close after serving what was taken
                    break
                self.arrive(job)
        while True:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                if busy or self.waiting:
                    self.queue.put(None)
                    break
                return False
            self.arrive(job)
        return True

    def arrive(self, job: Job) -> None:
        """Queue a request for admission, noting how many of its prompt tokens need computing:
        an echoed prompt is computed in full (every position's logits), whatever is cached."""
        self.waiting.append(job)  # first: should the lookup fail, the request fails with the rest
        job.uncached = len(job.ids) if job.echo else len(job.ids) - self.cached(job)[1]

    def prune(self) -> None:
        """Drop the waiting requests that are settled already (failed, or cancelled by their caller)."""
        self.waiting = deque(job for job in self.waiting if not job.future.done())

    def choose(self, running: list[Job], busy: bool, batch_tokens: int) -> list[Job]:
        """Take waiting requests in, oldest first, into the batch's free rows, within the prefill
        budget (while `busy`) and the batch's bound in tokens."""
        room = self.settings.max_batch - len(running)
        budget = self.settings.prefill_budget if busy else float("inf")
        extent = max((job.extent for job in running), default=0)
        while self.waiting and len(self.admitting) < room:
            job = self.waiting[0]
            if self.admitting and job.uncached > budget:
                break
            rows, extent = len(running) + len(self.admitting) + 1, max(extent, job.extent)
            if rows > 1 and rows * (extent + SPARE) > batch_tokens:
                break  # the batch's memory bound: it waits for rows to finish
            self.waiting.popleft()
            # A request queued again after running out of memory is running already.
            if job.future.running() or job.future.set_running_or_notify_cancel():  # False: cancelled
                budget -= job.uncached
                self.admitting.append(job)
        self.last_intake = len(self.admitting)
        return self.admitting

    def end_intake(self) -> None:
        """The intake's requests are in the batch now, finished, or failed."""
        self.admitting = []

    def cached(self, prompt: Job | list[int]) -> tuple[Entry | None, int]:
        """The cached prefix to build on (at least one prompt token is left to compute). A
        request remembers its answer until the cache changes."""
        job = prompt if isinstance(prompt, Job) else None
        if job is not None and job.lookup is not None and job.lookup[0] == self.prefixes.version:
            return job.lookup[1]
        ids = job.ids if job is not None else prompt
        entry, length = self.prefixes.lookup(np.asarray(ids))
        length = min(length, len(ids) - 1)
        found = (entry, length) if length >= self.settings.min_prefix else (None, 0)
        if job is not None:
            job.lookup = (self.prefixes.version, found)
        return found

    def shared_prefixes(self, jobs: list[Job]) -> list[list[int]]:
        """Long prefixes the cache lacks that several of these prompts share, shortest first:
        longer ones build on them once they are cached."""
        if self.prefixes.max_tokens < self.settings.min_prefix:
            return []  # the cache is off
        misses = sorted(job.ids for job in jobs if self.cached(job)[0] is None)
        shared: set[tuple[int, ...]] = set()
        for a, b in itertools.pairwise(misses):  # in sorted order, neighbours share the longest prefixes
            length = min(common_prefix(np.asarray(a), np.asarray(b)), len(a) - 1, len(b) - 1)
            if length >= self.settings.min_prefix:
                shared.add(tuple(a[:length]))
        return [list(prefix) for prefix in sorted(shared, key=len)]

    def passes(self, jobs: list[Job]) -> list[list[Row]]:
        """Pair each request with the cached prefix it extends (pinned until the intake releases
        the cache), and cut them into forward passes of similar uncached lengths (less padding),
        each within the prompt pass's bounds in tokens."""
        rows = sorted(((job, *self.cached(job)) for job in jobs), key=lambda r: len(r[0].ids) - r[2])
        for _, entry, _ in rows:
            self.prefixes.pin(entry)
        chunks: list[list[Row]] = []
        for row in rows:
            own = len(row[0].ids) - row[2]
            if chunks:
                first = len(chunks[-1][0][0].ids) - chunks[-1][0][2]
                count = len(chunks[-1]) + 1
                states = count * (max(row[2], *(r[2] for r in chunks[-1])) + own)  # cached + new columns
                fits = count * own <= MAX_PREFILL_TOKENS and states <= self.prefill_tokens
                if fits and own <= 2 * first + 16:
                    chunks[-1].append(row)
                    continue
            chunks.append([row])
        return chunks

    def remember(self, rows: list[Row], kv: KV, mask: torch.Tensor) -> None:
        """Cache the computed prompts that the cache covered less than half of: they may start a
        new scenario (or a longer few-shot variant) whose later requests will share them."""
        for i, (job, _, length) in enumerate(rows):
            if length >= len(job.ids) / 2 or len(job.ids) < self.settings.min_prefix:
                continue
            columns = mask[i].nonzero().squeeze(1)
            self.prefixes.insert(
                job.ids, [(k[i : i + 1, :, columns], v[i : i + 1, :, columns]) for k, v in kv]
            )
