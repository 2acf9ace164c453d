"""The competition server: `uvicorn submission.main:app` (or `main:app` in the container).

Model work runs on the engine's worker thread, which batches whatever the 30 client threads
send; the handlers only tokenize (about a millisecond), hand the request over and await the
answer, so the event loop never waits on the model. Awaiting instead of blocking a thread-pool
thread per request spares two thread hand-offs per request, which under load cost more CPU than
the tokenizing. Settings come from HARNESS_* environment variables (see settings.py).

Overload is answered, not suffered: a full queue gets 503 with Retry-After, a request not served
within request_timeout_s gets 504, a stopped engine makes /health and /process answer 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from submission.api import (
    DecodeRequest,
    DecodeResponse,
    ProcessRequest,
    ProcessResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from submission.engine import Engine, InvalidRequest, RequestTimeout, Unavailable
from submission.loading import load
from submission.settings import Settings

MAX_BODY_BYTES = 8 * 1024 * 1024
TIMEOUT_GRACE_S = 5.0  # the engine times requests out between steps; this catches a hung step
INLINE_LIMIT = 50_000  # characters or tokens handled on the event loop; larger inputs go to a thread
log = logging.getLogger("submission")


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings = Settings.from_env()
    model, tokenizer, quant = load(settings)
    app.state.engine = Engine(model, tokenizer, settings)
    app.state.info = {"model": settings.model, "adapter": settings.adapter, "quantization": quant}
    log.info("serving %s", app.state.info)
    yield
    app.state.engine.close()


app = FastAPI(title="LLM efficiency harness: competition server", lifespan=lifespan)


@app.middleware("http")
async def limit_body(request: Request, call_next):
    """Refuse over-large bodies before reading them (and chunked ones while reading)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        return too_large()
    if declared is None and request.method == "POST":
        chunks, size = [], 0
        async for chunk in request.stream():
            chunks.append(chunk)  # joined once at the end: concatenating each would copy the body each time
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                return too_large()
        request._body = b"".join(chunks)  # read once; the handler parses it from here
    return await call_next(request)


def too_large() -> JSONResponse:
    message = f"the request body is over {MAX_BODY_BYTES} bytes"
    return JSONResponse(
        status_code=413, content={"detail": [{"loc": ["body"], "msg": message, "type": "too_large"}]}
    )


@app.exception_handler(InvalidRequest)
async def invalid_request(request: Request, error: InvalidRequest) -> JSONResponse:
    detail = [{"loc": ["body", error.field], "msg": str(error), "type": "value_error"}]
    return JSONResponse(status_code=422, content={"detail": detail})


@app.exception_handler(Unavailable)
async def unavailable(request: Request, error: Unavailable) -> JSONResponse:
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else None
    return JSONResponse(status_code=503, content={"detail": str(error)}, headers=headers)


@app.exception_handler(RequestTimeout)
async def timed_out(request: Request, error: RequestTimeout) -> JSONResponse:
    return JSONResponse(status_code=504, content={"detail": str(error)})


@app.exception_handler(RequestValidationError)
async def invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, made safe to serialize whatever the body held (e.g. bytes that are not UTF-8)."""
    detail = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in error.errors()
    ]
    return JSONResponse(status_code=422, content={"detail": detail})


async def inline_if_small(size: int, work, *args):
    """Tokenizing a prompt takes about a millisecond: cheaper on the event loop than a thread
    hand-off. A huge input would hold the loop up, so it runs on a thread."""
    return work(*args) if size <= INLINE_LIMIT else await asyncio.to_thread(work, *args)


@app.get("/health")
def health() -> JSONResponse:
    engine: Engine = app.state.engine
    status = "ok" if engine.alive else "failed: the engine's worker has stopped"
    body = {"status": status, **app.state.info, "context": engine.context, **engine.stats()}
    return JSONResponse(body, status_code=200 if engine.alive else 503)


@app.post("/process", response_model=ProcessResponse)
async def process(request: ProcessRequest) -> JSONResponse:
    start = time.perf_counter()
    engine: Engine = app.state.engine
    submitted = await inline_if_small(len(request.prompt), engine.submit, request)
    limit = engine.settings.request_timeout_s + TIMEOUT_GRACE_S
    try:
        result = await asyncio.wait_for(asyncio.wrap_future(submitted), limit)
    except TimeoutError:  # the worker is stuck in one step: answer anyway
        raise RequestTimeout(f"the request was not served within {limit} s (a step hung)") from None
    # The engine builds the response's exact shape; returning it directly skips re-validating it.
    return JSONResponse({**result, "request_time": time.perf_counter() - start})


@app.post("/tokenize", response_model=TokenizeResponse)
async def tokenize(request: TokenizeRequest) -> JSONResponse:
    start = time.perf_counter()
    engine = app.state.engine
    tokens = await inline_if_small(
        len(request.text), engine.encode, request.text, request.truncation, request.max_length
    )
    return JSONResponse({"tokens": tokens, "request_time": time.perf_counter() - start})


@app.post("/decode", response_model=DecodeResponse)
async def decode(request: DecodeRequest) -> JSONResponse:
    start = time.perf_counter()
    text = await inline_if_small(len(request.tokens), app.state.engine.decode, request.tokens)
    return JSONResponse({"text": text, "request_time": time.perf_counter() - start})
