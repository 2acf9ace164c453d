"""The generation engine: one worker thread that serves every request with continuous batching.

Requests queue up; the worker takes what arrived (waiting a few milliseconds when idle, so a
burst becomes one batch), computes their prompts (reusing cached prefix states, see
prefix_cache.py), and then decodes all running requests together, one token per step. A request
joins the running batch as soon as its prompt is computed and leaves it the step it ends (EOS,
stop sequence, token limit), so a 1-token multiple-choice answer never waits behind a 400-token
generation. Rows of different lengths share one KV cache: shorter rows are padded on the left,
the attention mask hides the padding, and each row carries its own positions, so a row computes
the same values alone or batched (up to float rounding).

Faults stay contained: a request that waits past request_timeout_s fails alone, a full queue
refuses new requests (the server answers 503), a caller that gave up (its future cancelled)
is dropped before it costs anything, and an exception in the worker fails the requests it held
while the worker goes on; should the worker thread end anyway, the engine says so (`alive`) and
refuses new requests instead of queueing them forever.

Memory is bounded in bytes (memory.py): the batch in tokens (rows x the columns they may reach),
the prefix cache and each prompt pass are sized at start from the device's free memory. Should
the device still run out, the engine sheds the prefix cache, lowers the batch bound and computes
the requests in hand again from their prompts, instead of failing them all.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import DynamicCache

from submission.api import ProcessRequest
from submission.attention import additive_mask
from submission.batch_kv import KV, SPARE, SpareLayer, assemble, cache_of, capacity, kv_of, place_rows
from submission.decoding import Completion, Detokenizer, Sampler, TokenTexts, decode
from submission.memory import MAX_PREFILL_TOKENS, free_bytes, plan
from submission.prefix_cache import Entry, PrefixCache, common_prefix
from submission.settings import Settings

log = logging.getLogger("submission.engine")
SHED = 0.75  # after running out of memory, the batch bound becomes this share of what was in use


class InvalidRequest(ValueError):
    """A request the model cannot serve; `field` names the request field at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class Unavailable(RuntimeError):
    """The engine takes no request now: its queue is full (retry after `retry_after` seconds),
    or its worker has stopped (retry_after is None: only a restart helps)."""

    def __init__(self, message: str, retry_after: int | None):
        super().__init__(message)
        self.retry_after = retry_after


class RequestTimeout(RuntimeError):
    """The request was not served within request_timeout_s. (Not a TimeoutError: the handler
    tells it apart from its own wait running out.)"""


RETRY_AFTER_S = 1  # a full queue drains in about a decoding step per waiting request


@dataclass(eq=False)
class Job:
    request: ProcessRequest
    ids: list[int]  # prompt token ids
    max_new_tokens: int  # already capped to the room the context leaves
    sampler: Sampler
    top_k_per_token: int
    echo: bool
    completion: Completion
    deadline: float  # time.monotonic() past which the request fails with RequestTimeout
    future: Future = field(default_factory=Future)
    echoed: list[dict] = field(default_factory=list)  # prompt tokens, when echo_prompt
    uncached: int = 0  # prompt tokens the prefix cache did not hold on arrival
    lookup: tuple | None = None  # (prefix cache version, its answer) of the last lookup
    generated: int = 0
    length: int = 0  # this row's tokens whose states are in the batch cache
    last: int = -1  # the token to feed at the next step

    @property
    def extent(self) -> int:
        """The columns this request's row may reach."""
        return len(self.ids) + self.max_new_tokens


# A prompt to compute (a request, or bare ids), the cached prefix it extends, and that prefix's length.
Row = tuple[Job | list[int], Entry | None, int]


class Engine:
    def __init__(self, model, tokenizer, settings: Settings):
        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.device = next(model.parameters()).device
        self.dtype = model.get_input_embeddings().weight.dtype  # the activations' dtype, for masks
        model_context = getattr(model.config, "max_position_embeddings", None) or settings.context
        self.context = min(settings.context, model_context)
        self.vocab = len(tokenizer)
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self.eos = set(eos) | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())
        self.special = set(tokenizer.all_special_ids)
        # Set once, not per call: a per-call setting changes the shared tokenizer under the other
        # request threads.
        tokenizer.split_special_tokens = True
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.memory = plan(free_bytes(self.device), model.config, self.dtype, settings, self.context)
        log.info("memory plan: %s", self.memory.describe())
        self.batch_tokens = self.memory.batch_tokens  # lowered after running out of memory
        self.out_of_memory = 0  # times the engine shed memory and computed its requests again
        self.prefixes = PrefixCache(self.memory.prefix_cache_tokens)
        self.texts = TokenTexts(tokenizer)
        self.queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.rows: list[Job] = []  # requests being decoded (or just finished); row i of the batch cache
        self.cache = DynamicCache()
        self.cache_kwarg = cache_kwarg(model)
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=self.device)
        self.steps = 0
        self.rows_decoded = 0  # sum of the batch sizes of all decoding steps
        self.timing = {"prompt_s": 0.0, "decode_s": 0.0}  # worker time computing prompts / decoding
        self.joins = {"in_place": 0, "rebuilding": 0}  # how requests joined the running batch
        self.last_intake = 0  # requests taken at the last intake
        self.waiting: deque[Job] = deque()  # arrived, not yet admitted
        self.admitting: list[Job] = []  # taken in by the intake in progress
        self.stopped = False  # set (under `accepting`) when the worker ends: no request may queue
        self.accepting = threading.Lock()
        self.worker = threading.Thread(target=self._run, name="engine", daemon=True)
        self.worker.start()

    # ---- called from request threads -------------------------------------------------------

    def encode(self, text: str, truncation: bool = False, max_length: int | None = None) -> list[int]:
        """Token ids as the model sees them, BOS included; with truncation, the first
        `max_length`. Special-token text typed in the input ("<s>") stays text, so
        decode(encode(x)) == x. The cut is made here, not by the tokenizer: its truncation
        settings are shared state, and request threads encode concurrently."""
        ids = self.tokenizer(text).input_ids
        return ids[:max_length] if truncation and max_length is not None else ids

    def decode(self, ids: list[int]) -> str:
        bad = [i for i in ids if not 0 <= i < self.vocab]
        if bad:
            raise InvalidRequest("tokens", f"unknown token ids {bad[:5]}: ids run from 0 to {self.vocab - 1}")
        return decode(self.tokenizer, ids)

    @property
    def alive(self) -> bool:
        return not self.stopped and self.worker.is_alive()

    def submit(self, request: ProcessRequest) -> Future:
        """Queue a request; the future's result is the response body (without request_time), or
        RequestTimeout. Raises InvalidRequest, or Unavailable when the queue is full or the
        worker has stopped."""
        limit = min(self.settings.max_top_k_per_token, self.vocab)
        if request.top_k_per_token > limit:
            raise InvalidRequest(
                "top_k_per_token", f"top_k_per_token is {request.top_k_per_token}; at most {limit}"
            )
        if request.max_new_tokens > self.context:
            raise InvalidRequest(
                "max_new_tokens",
                f"max_new_tokens is {request.max_new_tokens}; the context holds {self.context} tokens",
            )
        ids = self.encode(request.prompt)
        if not ids:
            raise InvalidRequest(
                "prompt", "the prompt encodes to no tokens (the tokenizer adds no BOS); send some text"
            )
        if len(ids) > self.context:
            raise InvalidRequest(
                "prompt", f"the prompt is {len(ids)} tokens; the context holds {self.context}"
            )
        job = self._job(request, ids, deadline=time.monotonic() + self.settings.request_timeout_s)
        if job.max_new_tokens == 0 and not job.echo:
            job.future.set_result(self._result(job))
            return job.future
        with self.accepting:
            if self.stopped:
                raise Unavailable("the engine's worker has stopped; the server needs a restart", None)
            queued = self.queue.qsize() + len(self.waiting)
            if queued >= self.settings.max_queue:
                raise Unavailable(
                    f"the server is busy: {queued} requests are waiting (max_queue); retry shortly",
                    RETRY_AFTER_S,
                )
            self.queue.put(job)
        return job.future

    def _job(self, request: ProcessRequest, ids: list[int], deadline: float) -> Job:
        return Job(
            request=request,
            ids=ids,
            # Documented truncation: generation ends where the context does.
            max_new_tokens=min(request.max_new_tokens, self.context - len(ids)),
            sampler=Sampler(request.temperature, request.top_k, request.top_p, request.seed),
            top_k_per_token=request.top_k_per_token,
            echo=bool(request.echo_prompt),
            completion=Completion(
                Detokenizer(self.tokenizer, ids), [s for s in request.stop_sequences or [] if s]
            ),
            deadline=deadline,
        )

    def close(self) -> None:
        self.queue.put(None)
        self.worker.join(timeout=30)

    # ---- the worker thread -----------------------------------------------------------------

    def _run(self) -> None:
        ending: Exception = RuntimeError("the server is shutting down")
        try:
            with torch.inference_mode():
                while self._serve():
                    pass
        except BaseException:
            log.exception("the engine's worker stopped")
            ending = RuntimeError("the engine's worker stopped; the server needs a restart")
            raise
        finally:
            with self.accepting:  # from here on, submit refuses: nothing queues unseen
                self.stopped = True
            jobs = self.admitting + self.rows + list(self.waiting)
            while not self.queue.empty():
                jobs.append(self.queue.get_nowait())
            for job in jobs:
                if job is not None:
                    fail(job, ending)

    def _serve(self) -> bool:
        """Take requests in and run a decoding step; False when closing. An exception fails
        the requests the worker holds (a bug must fail its requests, not stop the server)."""
        try:
            new = self._take()
            if new is None:
                return False
            begin = time.perf_counter()
            if new:
                self._admit(new)
            middle = time.perf_counter()
            if self.rows:
                self._step()
            self.timing["prompt_s"] += middle - begin
            self.timing["decode_s"] += time.perf_counter() - middle
        except torch.OutOfMemoryError as error:
            self._shed(error)
        except Exception as error:
            log.exception("engine step failed")
            for job in self.admitting + self.rows + list(self.waiting):
                fail(job, error)
            self.waiting.clear()
            self._set_batch([], [])
            self.prefixes.clear()  # whatever state led here is not reused
        finally:
            self.admitting = []
        return True

    def _shed(self, error: torch.OutOfMemoryError) -> None:
        """Out of device memory: drop the prefix cache and the batch, lower the batch bound to
        SHED of what was in use, and queue the requests in hand again, first, from their prompts
        (a greedy or seeded answer comes out the same). Once the bound is down to one context,
        there is nothing left to shed: the requests in hand fail."""
        jobs = [job for job in self.admitting + self.rows if not job.future.done()]
        in_use = len(jobs) * (max(job.extent for job in jobs) + SPARE) if jobs else self.batch_tokens
        self._set_batch([], [])
        self.prefixes.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if self.batch_tokens <= self.context:
            log.error("out of memory with the batch bound at one context; failing %d requests", len(jobs))
            for job in jobs:
                fail(job, error)
            return
        self.batch_tokens = max(self.context, int(SHED * min(self.batch_tokens, in_use)))
        self.out_of_memory += 1
        log.warning(
            "out of memory with %d requests in hand: prefix cache dropped, batch bound now %d tokens;"
            " computing them again",
            len(jobs),
            self.batch_tokens,
        )
        for job in reversed(jobs):
            again = self._job(job.request, job.ids, job.deadline)
            again.future, again.uncached = job.future, len(job.ids)  # the cache is empty
            self.waiting.appendleft(again)

    def _expire(self) -> None:
        """Fail the requests past their deadline, waiting or running (a running one's row is
        then finished, and freed like any other)."""
        now = time.monotonic()
        late = [job for job in [*self.waiting, *self.rows] if job.deadline < now and not job.future.done()]
        for job in late:
            timeout = self.settings.request_timeout_s
            fail(job, RequestTimeout(f"the request was not served within {timeout} s (request_timeout_s)"))
        if late:
            self.waiting = deque(job for job in self.waiting if not job.future.done())

    def _take(self) -> list[Job] | None:
        """The requests to admit now; None when closing.

        An idle engine blocks for the first request and, when requests have lately come
        together, waits batch_wait_ms for company (a lone client should not pay the wait on
        every request). While rows are decoding, new prompts are admitted up to
        prefill_budget uncached tokens per step, oldest first, so a stream of short requests
        cannot stall the running generations indefinitely.
        """
        if not self.rows and not self.waiting:
            first = self.queue.get()
            if first is None:
                return None
            self._arrive(first)
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
                self._arrive(job)
        while True:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                if self.rows or self.waiting:
                    self.queue.put(None)
                    break
                return None
            self._arrive(job)
        self._expire()
        running = [self.rows[i] for i in self._running()]
        room = self.settings.max_batch - len(running)
        budget = self.settings.prefill_budget if self.rows else float("inf")
        extent = max((job.extent for job in running), default=0)
        while self.waiting and len(self.admitting) < room:
            job = self.waiting[0]
            if self.admitting and job.uncached > budget:
                break
            rows, extent = len(running) + len(self.admitting) + 1, max(extent, job.extent)
            if rows > 1 and rows * (extent + SPARE) > self.batch_tokens:
                break  # the batch's memory bound: it waits for rows to finish
            self.waiting.popleft()
            # A request queued again after running out of memory is running already.
            if job.future.running() or job.future.set_running_or_notify_cancel():  # False: cancelled
                budget -= job.uncached
                self.admitting.append(job)
        self.last_intake = len(self.admitting)
        return self.admitting

    def _arrive(self, job: Job) -> None:
        """Queue a request for admission, noting how many of its prompt tokens need computing:
        an echoed prompt is computed in full (every position's logits), whatever is cached."""
        self.waiting.append(job)  # first: should the lookup fail, the request fails with the rest
        job.uncached = len(job.ids) if job.echo else len(job.ids) - self._cached(job)[1]

    def _admit(self, jobs: list[Job]) -> None:
        """Compute the prompts of new requests, choose their first tokens, and move the ones
        that go on into the running batch. The cached prefixes they build on stay cached until
        the last of them is computed."""
        try:
            for chunk in self._plan([job for job in jobs if not job.echo]):
                kv, mask, logits = self._forward(chunk)
                self._remember(chunk, kv, mask)
                self._join([job for job, _, _ in chunk], kv, mask, logits[:, -1])
        finally:
            self.prefixes.release()
        for job in jobs:
            if job.echo:  # needs every prompt position's logits: computed alone, uncached
                kv, mask, logits = self._forward([(job, None, 0)], all_logits=True)
                self._echo(job, logits[0])
                self._join([job], kv, mask, logits[:, -1])

    def _plan(self, jobs: list[Job]) -> list[list[Row]]:
        """Pair each request with the cached prefix it extends, and cut them into forward
        passes of similar uncached lengths (less padding). Prompts of this intake that share a
        long prefix the cache lacks (a burst from one scenario) get it computed once, first."""
        self._cache_shared_prefixes(jobs)
        rows = sorted(((job, *self._cached(job)) for job in jobs), key=lambda r: len(r[0].ids) - r[2])
        for _, entry, _ in rows:
            self.prefixes.pin(entry)
        chunks: list[list[Row]] = []
        for row in rows:
            own = len(row[0].ids) - row[2]
            if chunks:
                first = len(chunks[-1][0][0].ids) - chunks[-1][0][2]
                rows = len(chunks[-1]) + 1
                states = rows * (max(row[2], *(r[2] for r in chunks[-1])) + own)  # cached + new columns
                fits = rows * own <= MAX_PREFILL_TOKENS and states <= self.memory.prefill_tokens
                if fits and own <= 2 * first + 16:
                    chunks[-1].append(row)
                    continue
            chunks.append([row])
        return chunks

    def _cached(self, prompt: Job | list[int]) -> tuple[Entry | None, int]:
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

    def _cache_shared_prefixes(self, jobs: list[Job]) -> None:
        if self.prefixes.max_tokens < self.settings.min_prefix:
            return  # the cache is off
        misses = sorted(job.ids for job in jobs if self._cached(job)[0] is None)
        shared: set[tuple[int, ...]] = set()
        for a, b in itertools.pairwise(misses):  # in sorted order, neighbours share the longest prefixes
            length = min(common_prefix(np.asarray(a), np.asarray(b)), len(a) - 1, len(b) - 1)
            if length >= self.settings.min_prefix:
                shared.add(tuple(a[:length]))
        for prefix in sorted(shared, key=len):  # shorter first: longer ones build on them
            ids = list(prefix)
            kv, _, _ = self._forward([(ids, *self._cached(ids))])
            self.prefixes.pin(self.prefixes.insert(ids, kv))

    def _remember(self, rows: list[Row], kv: KV, mask: torch.Tensor) -> None:
        """Cache the prompts that the cache covered less than half of: they may start a new
        scenario (or a longer few-shot variant) whose later requests will share them."""
        for i, (job, _, length) in enumerate(rows):
            if length >= len(job.ids) / 2 or len(job.ids) < self.settings.min_prefix:
                continue
            columns = mask[i].nonzero().squeeze(1)
            self.prefixes.insert(
                job.ids, [(k[i : i + 1, :, columns], v[i : i + 1, :, columns]) for k, v in kv]
            )

    def _forward(self, rows: list[Row], all_logits: bool = False) -> tuple[KV, torch.Tensor, torch.Tensor]:
        """Run prompts through the model, each on top of its cached prefix (entry, length).
        A row is laid out [padding | cached prefix | padding | rest of the prompt]: prefixes
        end at one column and every prompt's last token is the last column. Returns the
        states, the attention mask over them and the logits."""
        prompts = [job.ids if isinstance(job, Job) else job for job, _, _ in rows]
        n = len(rows)
        cached = max(length for _, _, length in rows)
        width = max(len(ids) - length for ids, (_, _, length) in zip(prompts, rows))
        input_ids = torch.full((n, width), self.pad, dtype=torch.long)
        positions = torch.zeros((n, width), dtype=torch.long)
        mask = torch.zeros((n, cached + width), dtype=torch.long)
        for i, (ids, (_, _, length)) in enumerate(zip(prompts, rows)):
            own = len(ids) - length
            input_ids[i, width - own :] = torch.tensor(ids[length:])
            positions[i, width - own :] = torch.arange(length, len(ids))
            mask[i, cached - length : cached] = 1
            mask[i, cached + width - own :] = 1
        mask = mask.to(self.device)
        cache = DynamicCache() if cached == 0 else self._prefix_cache(rows, cached, width)
        out = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=additive_mask(mask, width, self.dtype),
            position_ids=positions.to(self.device),
            use_cache=True,
            logits_to_keep=0 if all_logits else 1,
            **{self.cache_kwarg: cache},
        )
        return kv_of(cache), mask, out.logits  # the cache object is filled in place

    def _prefix_cache(self, rows: list[Row], cached: int, width: int) -> DynamicCache:
        """The rows' cached prefix states, right-aligned at column `cached`, with room for
        `width` more columns written in place by the forward pass."""
        entries = [(i, entry, length) for i, (_, entry, length) in enumerate(rows) if entry is not None]
        layers = []
        for layer in range(len(entries[0][1].kv)):
            k0, v0 = entries[0][1].kv[layer]
            keys = k0.new_zeros(len(rows), k0.shape[1], cached + width, k0.shape[-1])
            values = v0.new_zeros(len(rows), v0.shape[1], cached + width, v0.shape[-1])
            for i, entry, length in entries:
                k, v = entry.kv[layer]
                keys[i, :, cached - length : cached] = k[0, :, :length]
                values[i, :, cached - length : cached] = v[0, :, :length]
            layers.append(SpareLayer(keys, values, len(rows), cached))
        for _, entry, length in entries:
            self.prefixes.touch(entry, length)
        return cache_of(layers)

    def _echo(self, job: Job, logits: torch.Tensor) -> None:
        """The prompt's tokens with their log-probabilities. Leading special tokens (BOS) are left
        out: their text is not in the prompt. Each token's log-probability is conditioned on the
        tokens before it; a first token with nothing before it (no BOS) gets 0.0 and no top list."""
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        first = 0
        while first < len(job.ids) - 1 and job.ids[first] in self.special:
            first += 1
        detokenizer = Detokenizer(self.tokenizer, job.ids[:first])
        top_lp, top_ids = logprobs.topk(job.top_k_per_token, dim=-1)
        for t in range(first, len(job.ids)):
            token = {"text": detokenizer.push(job.ids[t]), "logprob": 0.0, "top_logprob": {}}
            if t > 0:
                token["logprob"] = float(logprobs[t - 1, job.ids[t]])
                token["top_logprob"] = self.texts.top(top_ids[t - 1].tolist(), top_lp[t - 1].tolist())
            job.echoed.append(token)
        if job.echoed:
            job.echoed[-1]["text"] += detokenizer.flush()

    def _step(self) -> None:
        """One decoding step for every running request. Finished rows stay in the batch, their
        output ignored, until joining requests take their place or they are a third of it:
        rebuilding the batch copies all of its states, so it is done for several rows at once."""
        rows = self.rows
        live = [i for i, job in enumerate(rows) if not job.future.done()]
        if not live:  # every row ended between steps (timed out)
            self._set_batch([], [])
            return
        input_ids = torch.tensor([[job.last] for job in rows], device=self.device)
        positions = torch.tensor([[job.length] for job in rows], device=self.device)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(rows), 1)], dim=1)
        out = self.model(
            input_ids=input_ids,
            attention_mask=additive_mask(self.mask, 1, self.dtype),
            position_ids=positions,
            use_cache=True,
            **{self.cache_kwarg: self.cache},
        )
        self.steps += 1
        self.rows_decoded += len(live)
        for i in live:
            rows[i].length += 1
        going = self._advance([rows[i] for i in live], out.logits[live, -1])
        keep = [i for i, go in zip(live, going) if go]
        if not keep or self._wasteful(len(rows) - len(keep), keep):
            self._set_batch([rows[i] for i in keep], [(kv_of(self.cache), self.mask, keep)])

    def _wasteful(self, finished: int, keep: list[int]) -> bool:
        """Whether finished rows, or leading columns no running row attends to, cost the
        decoding steps more than a rebuild would."""
        if finished > max(4, len(self.rows) // 3):
            return True
        width = self.mask.shape[1]
        unused = int(self.mask[keep].any(dim=0).int().argmax())  # leading columns no row uses
        return unused > max(SPARE, width // 4)

    def _advance(self, jobs: list[Job], logits: torch.Tensor) -> list[bool]:
        """Choose each row's next token; finish the rows that end. True for rows that go on."""
        logits = logits.float().cpu()
        logprobs = torch.log_softmax(logits, dim=-1)
        top_lp, top_ids = logprobs.topk(max(job.top_k_per_token for job in jobs), dim=-1)
        greedy = logits.argmax(dim=-1).tolist()  # one call for the batch, not one per row
        going = []
        for i, job in enumerate(jobs):
            done = job.generated >= job.max_new_tokens
            if not done:
                token = greedy[i] if job.sampler.greedy else job.sampler.choose(logits[i])
                done = token in self.eos
            if not done:
                k = job.top_k_per_token
                top = self.texts.top(top_ids[i, :k].tolist(), top_lp[i, :k].tolist())
                stopped = job.completion.add(token, float(logprobs[i, token]), top)
                job.generated += 1
                job.last = token
                done = stopped or job.generated >= job.max_new_tokens
            if done:
                job.completion.finish()
                job.future.set_result(self._result(job))
            going.append(not done)
        return going

    def _join(self, jobs: list[Job], kv: KV, mask: torch.Tensor, logits: torch.Tensor) -> None:
        """Choose the first tokens of freshly computed prompts; rows that go on join the batch:
        written into free rows when they fit its width, else by rebuilding it."""
        going = self._advance(jobs, logits)
        keep = [i for i, go in enumerate(going) if go]
        if not keep:
            return
        for i in keep:
            jobs[i].length = len(jobs[i].ids)
        running = self._running()
        busy = set(running)
        slots = [i for i in range(len(self.rows)) if i not in busy]
        slots += list(range(len(self.rows), capacity(self.cache)))
        if self.rows and mask.shape[1] <= self.mask.shape[1] and len(keep) <= len(slots):
            slots = slots[: len(keep)]
            self.mask = place_rows(self.cache, self.mask, slots, kv, mask, keep)
            self.joins["in_place"] += len(keep)
            for slot, i in zip(slots, keep):
                if slot < len(self.rows):
                    self.rows[slot] = jobs[i]
                else:
                    self.rows.append(jobs[i])
            return
        parts = [(kv_of(self.cache), self.mask, running)] if running else []
        self.joins["rebuilding"] += len(keep)
        self._set_batch([self.rows[i] for i in running] + [jobs[i] for i in keep], [*parts, (kv, mask, keep)])

    def _running(self) -> list[int]:
        """Batch rows whose requests are still generating."""
        return [i for i, job in enumerate(self.rows) if not job.future.done()]

    def _set_batch(self, rows: list[Job], parts: list[tuple[KV, torch.Tensor, list[int]]]) -> None:
        """Install the running batch built from `parts` (see batch_kv.assemble)."""
        self.rows = rows
        if rows:
            # Spare rows for requests to join in place; bounded, as they cost memory and copying.
            width = max(mask.shape[1] for _, mask, _ in parts) + SPARE
            spare_rows = min(self.settings.max_batch, max(2 * len(rows), len(rows) + 4))
            spare_rows = max(len(rows), min(spare_rows, self.batch_tokens // width))
            self.cache, self.mask = assemble(parts, rows_capacity=spare_rows)
        else:
            self.cache, self.mask = DynamicCache(), self.mask[:0, :0]

    def _result(self, job: Job) -> dict:
        completion = job.completion
        tokens = job.echoed + [
            {"text": text, "logprob": logprob, "top_logprob": top}
            for text, logprob, top in zip(completion.texts, completion.logprobs, completion.tops)
        ]
        text = "".join(token["text"] for token in job.echoed) + completion.text
        return {"text": text, "tokens": tokens, "logprob": sum(token["logprob"] for token in tokens)}

    def stats(self) -> dict:
        return {
            "running": len(self._running()),
            "queued": self.queue.qsize() + len(self.waiting),
            "decode_steps": self.steps,
            "mean_batch": self.rows_decoded / max(self.steps, 1),
            **{key: round(value, 3) for key, value in self.timing.items()},
            "joins": dict(self.joins),
            "prefix_cache": {
                "entries": len(self.prefixes.entries),
                "tokens": self.prefixes.tokens,
                "hits": self.prefixes.hits,
                "reused_tokens": self.prefixes.reused_tokens,
                "evictions": self.prefixes.evictions,
            },
            "memory": {
                "kv_bytes_per_token": self.memory.kv_bytes_per_token,
                "prefix_cache_tokens": self.memory.prefix_cache_tokens,
                "batch_tokens": self.batch_tokens,
                "out_of_memory": self.out_of_memory,
            },
        }


def cache_kwarg(model) -> str:
    """The forward argument that takes the KV cache: `cache` since transformers 5.2x,
    `past_key_values` before (the GPU image's 5.17)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def fail(job: Job, error: Exception) -> None:
    """Settle a request with an error, unless it is settled already or its caller cancelled it."""
    try:
        job.future.set_exception(error)
    except InvalidStateError:
        pass
