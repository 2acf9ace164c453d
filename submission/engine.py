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
the device still run out (any out-of-memory-class error, recovery.py), the engine sheds the prefix
cache, lowers the batch bound and computes the requests in hand again from their prompts, instead of
failing them all; the bound climbs back once steps run calm and memory allows. `problem` says why the
engine cannot serve (its worker stopped, or no progress for stall_s while requests wait): /health's 503.

The rooms: admission.py (the waiting line, each step's intake, prompts planned into forward
passes), batch_kv.py (the running batch's rows, states and layout), decoding.py (each request's
state, token choice, text and response), prefix_cache.py, memory.py. This module runs the worker
and the model, and tells the story.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from concurrent.futures import Future, InvalidStateError

import torch
from transformers import DynamicCache

from submission.admission import Admission, Row
from submission.api import ProcessRequest
from submission.attention import additive_mask
from submission.batch_kv import KV, SPARE, Batch, kv_of, prefix_states, prompt_layout
from submission.decoding import (
    Completion,
    Detokenizer,
    Job,
    Sampler,
    TokenTexts,
    advance,
    decode,
    echo,
    response,
)
from submission.memory import free_bytes, plan
from submission.prefix_cache import PrefixCache
from submission.recovery import Progress, Regrowth, is_out_of_memory
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
        self.out_of_memory = 0  # times the engine shed memory and computed its requests again
        self.prefixes = PrefixCache(self.memory.prefix_cache_tokens)
        self.admission = Admission(settings, self.prefixes, self.memory.prefill_tokens)
        self.batch = Batch(self.device, settings.max_batch, self.memory.batch_tokens)
        self.regrowth = Regrowth(self.memory.batch_tokens, self.memory.kv_bytes_per_token)
        self.progress = Progress(settings.stall_s)
        self.texts = TokenTexts(tokenizer)
        self.cache_kwarg = cache_kwarg(model)
        self.steps = 0
        self.rows_decoded = 0  # sum of the batch sizes of all decoding steps
        self.timing = {"prompt_s": 0.0, "decode_s": 0.0}  # worker time computing prompts / decoding
        self.stopped = False  # set (under `accepting`) when the worker ends: no request may queue
        self.accepting = threading.Lock()
        self.worker = threading.Thread(target=self._run, name="engine", daemon=True)
        self.worker.start()

    @property
    def batch_tokens(self) -> int:
        """The running batch's bound in tokens (rows x columns), lowered after running out of memory."""
        return self.batch.bound

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

    def problem(self) -> str | None:
        """Why the engine cannot serve now, or None when it can."""
        if not self.alive:
            return "the engine's worker has stopped"
        held = {id(job) for job in self._held()}  # a request being taken in may be in the batch already
        return self.progress.stalled(self.admission.queue.qsize() + len(held))

    def submit(self, request: ProcessRequest, ids: list[int] | None = None, every_token: bool = False,
               ignore_eos: bool = False) -> Future:
        """Queue a request; the future's result is the response body (without request_time), or
        RequestTimeout. Raises InvalidRequest, or Unavailable when the queue is full or the
        worker has stopped. `ids`: the prompt already as token ids (the OpenAI API's token prompts);
        `every_token`: the OpenAI API's token lists; `ignore_eos`: generate past end-of-sequence (see decoding.Job)."""
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
        ids = self.encode(request.prompt) if ids is None else ids
        if not ids:
            raise InvalidRequest(
                "prompt", "the prompt encodes to no tokens (the tokenizer adds no BOS); send some text"
            )
        if len(ids) > self.context:
            raise InvalidRequest(
                "prompt", f"the prompt is {len(ids)} tokens; the context holds {self.context}"
            )
        job = self._job(request, ids, time.monotonic() + self.settings.request_timeout_s, every_token, ignore_eos)
        if job.max_new_tokens == 0 and not job.echo:
            job.future.set_result(response(job))
            return job.future
        with self.accepting:
            if self.stopped:
                raise Unavailable("the engine's worker has stopped; the server needs a restart", None)
            queued = self.admission.queued()
            if queued >= self.settings.max_queue:
                raise Unavailable(
                    f"the server is busy: {queued} requests are waiting (max_queue); retry shortly",
                    RETRY_AFTER_S,
                )
            self.progress.woke()  # before the worker can see the job: it may serve it and go idle at once
            self.admission.queue.put(job)
        return job.future

    def _job(self, request: ProcessRequest, ids: list[int], deadline: float, every_token: bool = False,
             ignore_eos: bool = False) -> Job:
        return Job(
            request=request,
            ids=ids,
            # Documented truncation: generation ends where the context does.
            max_new_tokens=min(request.max_new_tokens, self.context - len(ids)),
            sampler=Sampler(request.temperature, request.top_k, request.top_p, request.seed),
            top_k_per_token=request.top_k_per_token,
            echo=bool(request.echo_prompt),
            every_token=every_token,
            ignore_eos=ignore_eos,
            completion=Completion(
                Detokenizer(self.tokenizer, ids), [s for s in request.stop_sequences or [] if s]
            ),
            deadline=deadline,
        )

    def close(self) -> None:
        self.admission.queue.put(None)
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
            jobs = self._held()
            while not self.admission.queue.empty():
                jobs.append(self.admission.queue.get_nowait())
            for job in jobs:
                if job is not None:
                    fail(job, ending)

    def _held(self) -> list[Job]:
        """Every request the worker holds: being taken in, in the batch, waiting."""
        return self.admission.admitting + self.batch.rows + list(self.admission.waiting)

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
            if self.batch.rows:
                self._step()
                self.batch.bound = self.regrowth.next_bound(self.batch.bound, self.device)
            self.timing["prompt_s"] += middle - begin
            self.timing["decode_s"] += time.perf_counter() - middle
            self.progress.advanced(idle=not self.batch.rows and not self.admission.waiting)
        except Exception as error:
            self.progress.failed(error)
            if is_out_of_memory(error):
                self._shed(error)
                return True
            log.exception("engine step failed")
            for job in self._held():
                fail(job, error)
            self.admission.waiting.clear()
            self.batch.set([], [])
            self.prefixes.clear()  # whatever state led here is not reused
        finally:
            self.admission.end_intake()
        return True

    def _shed(self, error: Exception) -> None:
        """Out of device memory: drop the prefix cache and the batch, lower the batch bound to
        SHED of what was in use, and queue the requests in hand again, first, from their prompts
        (a greedy or seeded answer comes out the same). Once the bound is down to one context,
        there is nothing left to shed: the requests in hand fail."""
        jobs = [job for job in self.admission.admitting + self.batch.rows if not job.future.done()]
        in_use = len(jobs) * (max(job.extent for job in jobs) + SPARE) if jobs else self.batch_tokens
        self.batch.set([], [])
        self.prefixes.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if self.batch_tokens <= self.context:
            log.error("out of memory with the batch bound at one context; failing %d requests", len(jobs))
            for job in jobs:
                fail(job, error)
            return
        self.batch.bound = max(self.context, int(SHED * min(self.batch_tokens, in_use)))
        self.regrowth.shed()
        self.out_of_memory += 1
        log.warning(
            "out of memory with %d requests in hand: prefix cache dropped, batch bound now %d tokens;"
            " computing them again",
            len(jobs),
            self.batch_tokens,
        )
        for job in reversed(jobs):
            again = self._job(job.request, job.ids, job.deadline, job.every_token, job.ignore_eos)
            again.future, again.uncached = job.future, len(job.ids)  # the cache is empty
            self.admission.waiting.appendleft(again)

    def _take(self) -> list[Job] | None:
        """The requests to admit now (see admission.py); None when closing. Requests past their
        deadline fail first and leave their rows free."""
        if not self.admission.collect(busy=bool(self.batch.rows)):
            return None
        self._expire()
        running = [self.batch.rows[i] for i in self._running()]
        return self.admission.choose(running, bool(self.batch.rows), self.batch_tokens)

    def _expire(self) -> None:
        """Fail the requests past their deadline, waiting or running (a running one's row is
        then finished, and freed like any other)."""
        now = time.monotonic()
        held = [*self.admission.waiting, *self.batch.rows]
        late = [job for job in held if job.deadline < now and not job.future.done()]
        for job in late:
            timeout = self.settings.request_timeout_s
            fail(job, RequestTimeout(f"the request was not served within {timeout} s (request_timeout_s)"))
        if late:
            self.admission.prune()

    def _running(self) -> list[int]:
        """Batch rows whose requests are still generating."""
        return self.batch.running()

    def _admit(self, jobs: list[Job]) -> None:
        """Compute the prompts of new requests, choose their first tokens, and move the ones
        that go on into the running batch. The cached prefixes they build on stay cached until
        the last of them is computed."""
        try:
            computed = [job for job in jobs if not job.echo]
            for ids in self.admission.shared_prefixes(computed):  # computed once, before the prompts
                kv, _, _ = self._forward([(ids, *self.admission.cached(ids))])
                self.prefixes.pin(self.prefixes.insert(ids, kv))
            for chunk in self.admission.passes(computed):
                kv, mask, logits = self._forward(chunk)
                self.admission.remember(chunk, kv, mask)
                self._join([job for job, _, _ in chunk], kv, mask, logits[:, -1])
        finally:
            self.prefixes.release()
        for job in jobs:
            if job.echo:  # needs every prompt position's logits: computed alone, uncached
                kv, mask, logits = self._forward([(job, None, 0)], all_logits=True)
                echo(job, logits[0], self.tokenizer, self.special, self.texts)
                self._join([job], kv, mask, logits[:, -1])

    def _forward(self, rows: list[Row], all_logits: bool = False) -> tuple[KV, torch.Tensor, torch.Tensor]:
        """Run prompts through the model, each on top of its cached prefix (entry, length), laid
        out by batch_kv.prompt_layout. Returns the states, the attention mask over them and the
        logits."""
        prompts = [job.ids if isinstance(job, Job) else job for job, _, _ in rows]
        input_ids, positions, mask = prompt_layout(prompts, [length for _, _, length in rows], self.pad)
        mask = mask.to(self.device)
        if max(length for _, _, length in rows) == 0:
            cache = DynamicCache()
        else:
            kvs = [(entry.kv if entry is not None else None, length) for _, entry, length in rows]
            cache = prefix_states(kvs, input_ids.shape[1])
            for _, entry, length in rows:
                if entry is not None:
                    self.prefixes.touch(entry, length)
        out = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=additive_mask(mask, input_ids.shape[1], self.dtype),
            position_ids=positions.to(self.device),
            use_cache=True,
            logits_to_keep=0 if all_logits else 1,
            **{self.cache_kwarg: cache},
        )
        return kv_of(cache), mask, out.logits  # the cache object is filled in place

    def _join(self, jobs: list[Job], kv: KV, mask: torch.Tensor, logits: torch.Tensor) -> None:
        """Choose the first tokens of freshly computed prompts; the rows that go on join the batch."""
        going = advance(jobs, logits, self.eos, self.texts)
        self.batch.join(jobs, kv, mask, [i for i, go in enumerate(going) if go])

    def _step(self) -> None:
        """One decoding step for every running request; rows that end leave the batch when it
        pays (Batch.keep)."""
        live = self._running()
        if not live:  # every row ended between steps (timed out)
            self.batch.set([], [])
            return
        rows = self.batch.rows
        input_ids = torch.tensor([[job.last] for job in rows], device=self.device)
        positions = torch.tensor([[job.length] for job in rows], device=self.device)
        out = self.model(
            input_ids=input_ids,
            attention_mask=additive_mask(self.batch.widen(), 1, self.dtype),
            position_ids=positions,
            use_cache=True,
            **{self.cache_kwarg: self.batch.cache},
        )
        self.steps += 1
        self.rows_decoded += len(live)
        for i in live:
            rows[i].length += 1
        going = advance([rows[i] for i in live], out.logits[live, -1], self.eos, self.texts)
        self.batch.keep([i for i, go in zip(live, going) if go])

    def stats(self) -> dict:
        return {
            "running": len(self._running()),
            "queued": self.admission.queued(),
            "decode_steps": self.steps,
            "mean_batch": self.rows_decoded / max(self.steps, 1),
            **{key: round(value, 3) for key, value in self.timing.items()},
            "joins": dict(self.batch.joins),
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
