"""The competition server: `uvicorn submission.main:app` (or `main:app` in the container).

Model work runs on the engine's worker thread, which batches whatever the 30 client threads
send; the handlers only tokenize (about a millisecond), hand the request over and await the
answer, so the event loop never waits on the model. Awaiting instead of blocking a thread-pool
thread per request spares two thread hand-offs per request, which under load cost more CPU than
the tokenizing. Settings come from HARNESS_* environment variables (see settings.py).

Overload is answered, not suffered: a full queue gets 503 with Retry-After, a request not served
within request_timeout_s gets 504, a stopped engine makes /health and /process answer 503.

The same engine also serves the OpenAI-compatible API (openai_api.py: /v1/..., /tokenizer_info,
/detokenize, and vLLM's body shape on /tokenize); its errors come in OpenAI's shape. GET /metrics
speaks Prometheus (metrics.py).
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import Discriminator, Tag

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
from submission.metrics import Metrics
from submission.openai_api import Served, error_body, router, vllm_tokenize
from submission.openai_schema import VllmTokenizeRequest, VllmTokenizeResponse
from submission.serving import inline_if_small, settle
from submission.settings import Settings

MAX_BODY_BYTES = 8 * 1024 * 1024
log = logging.getLogger("submission")


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings = Settings.from_env()
    model, tokenizer, quant = load(settings)
    app.state.engine = Engine(model, tokenizer, settings)
    app.state.openai = Served.of(app.state.engine, settings.model)
    app.state.info = {"model": settings.model, "adapter": settings.adapter, "quantization": quant}
    log.info("serving %s", app.state.info)
    yield
    app.state.engine.close()


app = FastAPI(title="LLM efficiency harness: competition server", lifespan=lifespan)
app.include_router(router)
metrics = Metrics()


@app.middleware("http")
async def observe(request: Request, call_next):
    """Count and time every request by route (one middleware: each layer costs every request)."""
    start = time.perf_counter()
    response = await limit_body(request, call_next)
    route = request.scope.get("route")
    path = route.path if route is not None else "unmatched"
    metrics.observe(request.method, path, response.status_code, time.perf_counter() - start)
    return response


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


def openai_route(request: Request) -> bool:
    return request.url.path.startswith("/v1/")


def failure(request: Request, status: int, detail, message: str, param: str | None = None,
            headers: dict | None = None) -> JSONResponse:
    """An error in the shape of the route's API: the competition's (FastAPI's `detail`), or
    OpenAI's (`error`, with 400 for a bad request, as OpenAI answers)."""
    if openai_route(request):
        status = 400 if status == 422 else status
        return JSONResponse(status_code=status, content=error_body(status, message, param), headers=headers)
    return JSONResponse(status_code=status, content={"detail": detail}, headers=headers)


@app.exception_handler(InvalidRequest)
async def invalid_request(request: Request, error: InvalidRequest) -> JSONResponse:
    detail = [{"loc": ["body", error.field], "msg": str(error), "type": "value_error"}]
    return failure(request, 422, detail, str(error), error.field)


@app.exception_handler(Unavailable)
async def unavailable(request: Request, error: Unavailable) -> JSONResponse:
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else None
    return failure(request, 503, str(error), str(error), headers=headers)


@app.exception_handler(RequestTimeout)
async def timed_out(request: Request, error: RequestTimeout) -> JSONResponse:
    return failure(request, 504, str(error), str(error))


@app.exception_handler(RequestValidationError)
async def invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, made safe to serialize whatever the body held (e.g. bytes that are not UTF-8)."""
    detail = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in error.errors()
    ]
    first = detail[0] if detail else {"loc": [], "msg": "invalid body"}
    param = ".".join(str(part) for part in first["loc"][1:]) or None  # after "body"
    return failure(request, 422, detail, f"{param or 'body'}: {first['msg']}", param)


@app.get("/health")
def health() -> JSONResponse:
    engine: Engine = app.state.engine
    problem = engine.problem()  # the worker stopped, or no progress for stall_s while requests wait
    status = "ok" if problem is None else f"failed: {problem}"
    body = {"status": status, **app.state.info, "context": engine.context, **engine.stats()}
    return JSONResponse(body, status_code=200 if problem is None else 503)


@app.post("/process", response_model=ProcessResponse)
async def process(request: ProcessRequest) -> JSONResponse:
    start = time.perf_counter()
    engine: Engine = app.state.engine
    submitted = await inline_if_small(len(request.prompt), engine.submit, request)
    (result,) = await settle(engine, [submitted])
    # The engine builds the response's exact shape; returning it directly skips re-validating it.
    return JSONResponse({**result, "request_time": time.perf_counter() - start})


def tokenize_shape(body: object) -> str:
    """vLLM's body has `prompt` where the competition's has `text`."""
    return "vllm" if isinstance(body, dict) and "prompt" in body and "text" not in body else "competition"


TokenizeBody = Annotated[
    Annotated[TokenizeRequest, Tag("competition")] | Annotated[VllmTokenizeRequest, Tag("vllm")],
    Discriminator(tokenize_shape),
]


@app.post("/tokenize", response_model=TokenizeResponse | VllmTokenizeResponse)
async def tokenize(request: TokenizeBody) -> JSONResponse:
    """The competition's shape ({text, truncation, max_length}); a body with vLLM's `prompt` and no
    `text` gets vLLM's answer ({count, max_model_len, tokens}), which lm-eval's remote tokenizer reads.
    A bad body's errors are located as ["body", "competition" or "vllm", field]."""
    if isinstance(request, VllmTokenizeRequest):
        return await vllm_tokenize(app.state.openai, request)
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


@app.get("/metrics", response_class=PlainTextResponse)
def prometheus() -> PlainTextResponse:
    engine: Engine = app.state.engine
    text = metrics.render(engine.stats(), engine.alive)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")
