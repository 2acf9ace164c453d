"""Faults inside the serving engine, reproduced on the real tiny model and the real engine:
eviction in the middle of an intake, an exception in the worker, a cancelled request, echo
requests against the prefill budget, requests that wait past their timeout, a full queue, and a
body sent in many small chunks.

To make several requests arrive in one intake, a test holds the worker before its next decoding
step (a wrapper around that method of the engine object), submits them, then lets it go.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import fields

import httpx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from submission.api import ProcessRequest
from submission.engine import Engine, RequestTimeout, Unavailable
from submission.loading import load
from submission.settings import Settings, env_name
from tests.helpers import Server, body_strategy, hold_worker, wait_until

LONG = "word " * 10  # greedy on the tiny model: 1500 tokens without an EOS


@pytest.fixture(scope="module")
def loaded(tiny_model):
    model, tokenizer, _ = load(Settings(model=str(tiny_model)))
    return model, tokenizer


@contextmanager
def engine_with(loaded, **overrides) -> Iterator[Engine]:
    engine = Engine(*loaded, Settings(model="test", **{"batch_wait_ms": 0, **overrides}))
    try:
        yield engine
    finally:
        engine.close()


def greedy(prompt: str, max_new_tokens: int, **extra) -> ProcessRequest:
    return ProcessRequest(prompt=prompt, max_new_tokens=max_new_tokens, temperature=0, **extra)


def alone(loaded, requests: list[ProcessRequest]) -> list[str]:
    """Each request's text served alone by a fresh engine without a prefix cache."""
    with engine_with(loaded, prefix_cache_tokens=0) as engine:
        return [engine.submit(r).result(timeout=60)["text"] for r in requests]


def text(words: int, seed: int) -> str:
    """A distinct prompt of about `words` words (its own first word keeps prefixes apart)."""
    vocabulary = ["alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "ember", "north", "violet"]
    return f"Topic{seed}: " + " ".join(vocabulary[(seed * 7 + i * i) % 10] for i in range(words))


def test_eviction_in_the_middle_of_an_intake_fails_no_request(loaded, monkeypatch):
    """The intake's first forward pass caches a new prompt, which evicts the least recent entry;
    a later pass of the same intake builds on that entry."""
    tokenizer = loaded[1]
    warm = [text(60, seed) for seed in range(3)]  # P1 (oldest), P2, P3 fill the cache
    size = sum(len(tokenizer(p).input_ids) for p in [*warm, LONG])  # LONG is cached too
    short_new = text(25, 7)  # a new prompt, computed in the first pass and cached
    extends_oldest = warm[0] + " " + text(90, 8)  # builds on P1, computed in the second pass
    requests = [greedy(short_new, 4), greedy(extends_oldest, 4)]
    expected = alone(loaded, requests)
    with engine_with(loaded, prefix_cache_tokens=size, prefill_budget=100_000) as engine:
        for prompt in warm:
            engine.submit(greedy(prompt, 1)).result(timeout=60)
        reached, release = hold_worker(monkeypatch, engine)
        running = engine.submit(greedy(LONG, 40))
        assert reached.wait(60)
        assert engine.prefixes.tokens == size  # full: the next prompt cached evicts P1
        futures = [engine.submit(r) for r in requests]
        release.set()
        assert [f.result(timeout=60)["text"] for f in futures] == expected
        assert len(running.result(timeout=60)["tokens"]) == 40
        assert engine.prefixes.tokens <= size  # back within its bound once the intake is over
        assert engine.prefixes.hits >= 1


def test_an_exception_in_the_worker_fails_its_requests_and_the_worker_lives_on(loaded, monkeypatch):
    """A failure where the worker takes requests in (a prefix lookup) once ended its thread:
    every later request waited forever and /health still said ok."""
    with engine_with(loaded) as engine:
        real = engine.prefixes.lookup
        failures = iter([RuntimeError("injected lookup failure")])

        def lookup(ids):
            error = next(failures, None)
            if error is not None:
                raise error
            return real(ids)

        monkeypatch.setattr(engine.prefixes, "lookup", lookup)
        with pytest.raises(RuntimeError, match="injected lookup failure"):
            engine.submit(greedy("The capital of France is", 3)).result(timeout=30)
        assert engine.alive
        served = engine.submit(greedy("The capital of France is", 3)).result(timeout=30)
        assert served["text"] == alone(loaded, [greedy("The capital of France is", 3)])[0]


def test_a_dead_worker_is_reported_and_new_requests_are_refused(loaded, monkeypatch):
    """Should the worker thread end anyway (an exception that is not an Exception), the requests
    it held fail, the engine says it is down and refuses new ones instead of queueing them forever."""
    with engine_with(loaded) as engine:
        monkeypatch.setattr(engine.prefixes, "lookup", lambda ids: (_ for _ in ()).throw(SystemExit(3)))
        with pytest.raises(RuntimeError, match="worker"):
            engine.submit(greedy("hello there", 3)).result(timeout=30)
        engine.worker.join(timeout=30)
        assert not engine.alive
        with pytest.raises(Unavailable, match="worker"):
            engine.submit(greedy("hello there", 3))


def test_a_cancelled_request_fails_no_other(loaded, monkeypatch):
    """A request whose caller gave up (its future cancelled) before the worker took it in."""
    requests = [greedy(text(20, 1), 1), greedy(text(20, 2), 1)]
    expected = alone(loaded, requests)
    with engine_with(loaded) as engine:
        reached, release = hold_worker(monkeypatch, engine)
        running = engine.submit(greedy(LONG, 30))
        assert reached.wait(60)
        doomed, kept = (engine.submit(r) for r in requests)
        assert doomed.cancel()
        release.set()
        assert kept.result(timeout=60)["text"] == expected[1]
        assert len(running.result(timeout=60)["tokens"]) == 30
        assert doomed.cancelled()


def test_echo_requests_are_admitted_within_the_prefill_budget(loaded, monkeypatch):
    """An echoed prompt is computed in full (every position's logits), whatever the prefix cache
    holds, so it must count in full against the per-step prefill budget."""
    budget = 64
    prompt = text(80, 3)
    with engine_with(loaded, prefill_budget=budget) as engine:
        engine.submit(greedy(prompt, 1)).result(timeout=60)  # now cached
        intakes: list[tuple[int, int]] = []  # (requests, echoed prompt tokens) taken while rows ran
        admit = engine._admit

        def recording(jobs):
            if engine._running():
                intakes.append((len(jobs), sum(len(j.ids) for j in jobs if j.echo)))
            admit(jobs)

        monkeypatch.setattr(engine, "_admit", recording)
        reached, release = hold_worker(monkeypatch, engine)
        running = engine.submit(greedy(LONG, 60))
        assert reached.wait(60)
        echoes = [engine.submit(greedy(f"{prompt} {i}", 1, echo_prompt=True)) for i in range(4)]
        release.set()
        for future in echoes:
            assert future.result(timeout=60)["text"].startswith(prompt)
        running.result(timeout=60)
    echoed = [intake for intake in intakes if intake[1]]
    assert echoed and all(count == 1 or tokens <= budget for count, tokens in echoed), echoed


def test_a_request_waiting_past_its_timeout_gets_a_timeout_error(loaded, monkeypatch):
    """Requests held past request_timeout_s fail with RequestTimeout and free their rows; the
    engine serves the next request."""
    with engine_with(loaded, request_timeout_s=0.5) as engine:
        reached, release = hold_worker(monkeypatch, engine)
        running = engine.submit(greedy(LONG, 1000))
        assert reached.wait(60)
        waiting = engine.submit(greedy("The capital of France is", 3))
        time.sleep(1.0)
        release.set()
        for future in (running, waiting):
            with pytest.raises(RequestTimeout, match="0.5 s"):
                future.result(timeout=30)
        assert engine.submit(greedy("The capital of France is", 3)).result(timeout=30)["tokens"]
        assert not engine._running()


def test_a_full_queue_refuses_new_requests(loaded, monkeypatch):
    with engine_with(loaded, max_batch=1, max_queue=2) as engine:
        reached, release = hold_worker(monkeypatch, engine)
        running = engine.submit(greedy(LONG, 20))
        assert reached.wait(60)
        queued = [engine.submit(greedy(f"question {i}", 2)) for i in range(2)]
        with pytest.raises(Unavailable, match="2 requests"):
            engine.submit(greedy("one too many", 2))
        release.set()
        for future in [running, *queued]:
            assert future.result(timeout=60)["tokens"]
        assert engine.submit(greedy("room again", 2)).result(timeout=60)["tokens"]


def test_a_body_in_many_small_chunks_is_read_in_linear_time():
    """The size limit reads chunked bodies piece by piece; joining them by repeated
    concatenation copied the body once per chunk (32768 chunks of 64 bytes: gigabytes)."""
    from starlette.requests import Request
    from starlette.responses import Response

    from submission.main import limit_body

    chunk, count = b"x" * 64, 32768

    async def receive():
        nonlocal count
        count -= 1
        return {"type": "http.request", "body": chunk, "more_body": count > 0}

    async def call_next(request: Request) -> Response:
        return Response(str(len(await request.body())))

    scope = {"type": "http", "method": "POST", "path": "/tokenize", "headers": [], "query_string": b""}
    begin = time.perf_counter()
    response = asyncio.run(limit_body(Request(scope, receive), call_next))
    elapsed = time.perf_counter() - begin
    assert response.body == str(64 * 32768).encode()
    assert elapsed < 4, elapsed  # about 0.1 s; the quadratic join took 16-19 s here


# ---- the same limits over HTTP: a real uvicorn server with small bounds ------------------------


@pytest.fixture(scope="module")
def bounded(tiny_model, tmp_path_factory):
    """A server that takes 2 rows, queues 2 more, and gives each request 2 seconds."""
    env = {
        "HARNESS_MODEL": str(tiny_model),
        "HARNESS_THREADS": "1",
        "HARNESS_MAX_BATCH": "2",
        "HARNESS_MAX_QUEUE": "2",
        "HARNESS_REQUEST_TIMEOUT_S": "2",
    }
    server = Server(["-m", "submission"], env, tmp_path_factory.mktemp("bounded") / "server.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def long_request() -> dict:
    return {"prompt": LONG, "max_new_tokens": 1500, "temperature": 1e-7}


def test_overload_gets_503_with_retry_after_and_slow_requests_504(bounded):
    """Twelve 1500-token requests at once against 2 rows and a queue of 2: the ones beyond the
    queue are refused at once, the ones taken time out with a message, and the server serves on."""

    def send(_) -> httpx.Response:
        with bounded.client() as client:
            return client.post("/process", json=long_request())

    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(send, range(12)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {503, 504}, [r.text for r in responses]
    for response in responses:
        if response.status_code == 503:
            assert response.headers["retry-after"] == "1"
            assert "max_queue" in response.json()["detail"]
        else:
            assert "request_timeout_s" in response.json()["detail"]
    with bounded.client() as client:
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["running"] == 0
        assert client.post("/process", json={"prompt": "still up?", "max_new_tokens": 2}).status_code == 200


def test_fuzz_under_overload_bad_input_still_names_the_field(bounded):
    """The schema fuzz of test_server.py, sent while other clients keep the bounded server's rows
    and queue full: each answer is a 200, a 422 naming a field, a 503 with Retry-After or a 504,
    never a server error."""
    schema = httpx.get(bounded.url + "/openapi.json").json()["components"]["schemas"]
    stop = threading.Event()

    def load() -> None:
        with bounded.client() as client:
            while not stop.is_set():
                client.post("/process", json=long_request())

    # Three times the server's 4 places (2 rows, 2 queued): a place freed by a timeout is taken again at
    # once, however slowly a loaded machine answers.
    loaders = [threading.Thread(target=load) for _ in range(12)]
    for thread in loaders:
        thread.start()
    fields = set(schema["ProcessRequest"]["properties"])
    seen: set[int] = set()
    try:
        with bounded.client() as client:
            wait_until(lambda: client.post("/process", json={"prompt": "full yet?", "max_new_tokens": 1}).status_code
                       == 503, 60, "the loaders never filled the server")

            @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
            @given(body=body_strategy(schema, "ProcessRequest"))
            def answered(body):
                response = client.post(
                    "/process", content=json.dumps(body), headers={"content-type": "application/json"}
                )
                seen.add(response.status_code)
                assert response.status_code in (200, 422, 503, 504), (body, response.text)
                if response.status_code == 422:
                    for error in response.json()["detail"]:  # a field, the body itself, or bad JSON
                        loc = error["loc"]
                        assert loc[0] == "body", response.text
                        assert len(loc) == 1 or loc[1] in fields or error["type"] == "json_invalid", loc
                if response.status_code == 503:
                    assert response.headers["retry-after"] == "1"

            answered()
    finally:
        stop.set()
        for thread in loaders:
            thread.join()
    assert {422, 503} <= seen


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from([f.name for f in fields(Settings)]),
    raw=st.one_of(
        st.text(max_size=12),
        st.sampled_from(["0", "-1", "nan", "inf", "-inf", "1e400", "1.5", "10**9", "99999999999999999999"]),
    ),
)
def test_fuzz_settings_from_the_environment(name, raw):
    """Every HARNESS_* value is either taken or refused with a ValueError naming the setting,
    the new bounds (max_queue, request_timeout_s) included."""
    try:
        Settings.from_env({env_name(name): raw})
    except ValueError as error:
        assert name in str(error).lower(), (name, raw, str(error))


# ---- recovery: out of memory, and a worker that makes no progress ------------------------------------


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")],
                         ids=["torch-oom", "cublas-alloc"])
def test_out_of_memory_sheds_then_the_batch_bound_climbs_back(loaded, monkeypatch, error):
    """An out-of-memory-class error (torch's, or cuBLAS's RuntimeError) in a forward pass over several rows
    sheds: every request in hand is still served as it would be alone, and the batch bound drops. Normal
    load then brings the bound back to the one planned at start. Fails if the bound never climbs back
    (Regrowth.next_bound returning the bound as it is), or if the cuBLAS error takes the fail-everything
    branch (is_out_of_memory recognising torch.OutOfMemoryError only)."""
    requests = [greedy(text(20, seed), 6) for seed in range(4)]
    expected = alone(loaded, requests)
    model = loaded[0]
    forward = model.forward
    raised = []

    def short_of_memory(*args, **kwargs):
        if not raised and kwargs["input_ids"].shape[0] >= 2:
            raised.append(kwargs["input_ids"].shape)
            raise error
        return forward(*args, **kwargs)

    with engine_with(loaded, prefill_budget=100_000) as engine:
        planned = engine.batch_tokens
        monkeypatch.setattr(model, "forward", short_of_memory)
        futures = [engine.submit(r) for r in requests]
        assert [f.result(timeout=60)["text"] for f in futures] == expected
        assert raised and engine.stats()["memory"]["out_of_memory"] == 1
        assert engine.batch_tokens < planned
        # Normal load: 250 decoding steps without an error; the bound doubles every 32 of them.
        engine.submit(greedy(LONG, 250)).result(timeout=120)
        assert engine.batch_tokens == planned


def test_health_names_a_worker_that_makes_no_progress_while_requests_wait(loaded, monkeypatch):
    """/health (the app's own handler on a real engine) answers 200 while the engine is idle, however
    long; 503 naming why once a step hangs past stall_s with a request waiting; 200 again once the
    step goes on. Fails if /health looks only at whether the worker thread is alive."""
    from fastapi.testclient import TestClient

    from submission.main import app

    with engine_with(loaded, stall_s=0.2) as engine:
        app.state.engine, app.state.info = engine, {"model": "test"}
        client = TestClient(app)
        idle_since = time.monotonic()
        engine.submit(greedy("The capital of France is", 2)).result(timeout=60)
        reached, release = hold_worker(monkeypatch, engine)
        while time.monotonic() - idle_since < 0.5:  # idle well past stall_s
            assert client.get("/health").status_code == 200
        stuck = engine.submit(greedy("The capital of France is", 2))
        assert reached.wait(60)
        deadline = time.monotonic() + 30
        while (answer := client.get("/health")).status_code == 200:
            assert time.monotonic() < deadline, "the stalled worker was never reported"
        assert answer.status_code == 503
        assert "no progress" in answer.json()["status"] and "1 requests in hand" in answer.json()["status"]
        release.set()
        stuck.result(timeout=60)
        # The answer is sent from inside the step; the worker marks its progress when the step returns.
        wait_until(lambda: client.get("/health").status_code == 200, 30, "/health never recovered once the step went on")


def test_health_names_the_error_when_every_step_fails(loaded, monkeypatch):
    """A worker that swallows an error on every step is alive but serves nothing: once stall_s has passed
    without a served step, a request in hand makes the engine's problem name the error, though the worker
    woke for it just now. Fails if waking for new work restarted the clock after a failure."""
    entered, go = threading.Semaphore(0), threading.Semaphore(0)

    def failing_lookup(ids):
        entered.release()
        assert go.acquire(timeout=60)
        raise RuntimeError("disk on fire")

    with engine_with(loaded, stall_s=0.2) as engine:
        monkeypatch.setattr(engine.prefixes, "lookup", failing_lookup)
        first = engine.submit(greedy("hello there", 3))
        assert entered.acquire(timeout=60)
        wait_until(lambda: engine.problem() is not None, 30, "no problem reported")  # one step hangs past stall_s
        assert "a step may hang" in engine.problem()
        go.release()
        with pytest.raises(RuntimeError, match="disk on fire"):
            first.result(timeout=30)
        second = engine.submit(greedy("hello there", 3))
        assert entered.acquire(timeout=60)  # the worker took it in and is failing again
        assert "disk on fire" in engine.problem() and engine.alive
        go.release()
        with pytest.raises(RuntimeError, match="disk on fire"):
            second.result(timeout=30)
