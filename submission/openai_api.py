"""The OpenAI-compatible API beside the competition's: /v1/completions, /v1/chat/completions,
/v1/models, and vLLM's /tokenizer_info, /tokenize and /detokenize, which lm-eval's
`local-completions` and the OpenAI SDK speak.

Every route translates to the engine's own requests (ProcessRequest plus the prompt's token ids),
so both APIs share one engine: the same batching, prefix cache, queue limit, timeouts and errors.
Each prompt times `n` becomes one engine request. The engine runs them in OpenAI's token shape
(`every_token`): echoed prompts keep BOS, a generated EOS is a token, so `token_logprobs` lines up
with the prompt's token ids, which is what lm-eval's loglikelihood slices by.

Text prompts are tokenized like vLLM's: BOS added, special-token text ("</s>") read as the special
token. (The competition's /tokenize reads such text as text; both use the same vocabulary.)
"""

from __future__ import annotations

import copy
import time
import uuid
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from submission.api import MAX_STOP_SEQUENCES, ProcessRequest
from submission.engine import Engine, InvalidRequest
from submission.openai_schema import (
    MAX_PROMPTS,
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    Sampling,
    VllmTokenizeRequest,
)
from submission.serving import inline_if_small, settle

# For a tokenizer without a chat template (the tiny model's): plain "role: content" lines.
PLAIN_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)
router = APIRouter()


@dataclass
class Served:
    """What the OpenAI routes need: the engine, the model's name and a tokenizer of their own."""

    engine: Engine
    name: str
    tokenizer: object  # a copy that reads special-token text as special tokens
    created: int

    @classmethod
    def of(cls, engine: Engine, name: str) -> Served:
        tokenizer = copy.deepcopy(engine.tokenizer)  # the engine's must keep splitting special-token text
        tokenizer.split_special_tokens = False
        return cls(engine, name, tokenizer, int(time.time()))

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.name:
            raise InvalidRequest("model", f"the model {model!r} is not served here; this server serves {self.name!r}")

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer(text, add_special_tokens=add_special_tokens).input_ids

    def prompts(self, prompt: str | list) -> list[tuple[list[int], str | None]]:
        """Each prompt's token ids, and its text when it came as text."""
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):  # one prompt
            prompt = [prompt]
        if not prompt or len(prompt) > MAX_PROMPTS:
            raise InvalidRequest("prompt", f"send between 1 and {MAX_PROMPTS} prompts, not {len(prompt)}")
        return [(self.encode(p), p) if isinstance(p, str) else (list(p), None) for p in prompt]

    def check_prompt(self, ids: list[int]) -> None:
        context, vocab = self.engine.context, self.engine.vocab
        if not ids:
            raise InvalidRequest("prompt", "a prompt is empty (no tokens)")
        if len(ids) > context:
            raise InvalidRequest("prompt", f"a prompt is {len(ids)} tokens; the context holds {context}")
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise InvalidRequest("prompt", f"unknown token ids {bad[:5]}: ids run from 0 to {vocab - 1}")


def served(request: Request) -> Served:
    return request.app.state.openai


def error_body(status: int, message: str, param: str | None) -> dict:
    """OpenAI's error shape."""
    kind = {503: "service_unavailable", 504: "timeout"}.get(status, "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def stop_list(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else [s for s in stop or [] if s]
    if len(stops) > MAX_STOP_SEQUENCES:
        raise InvalidRequest("stop", f"{len(stops)} stop sequences; at most {MAX_STOP_SEQUENCES}")
    return stops


def engine_request(body: Sampling, max_tokens: int, echo: bool, top: int, choice: int) -> ProcessRequest:
    """The engine's request for one choice: choice i of a seeded request samples with seed + i."""
    seed = None if body.seed is None else (body.seed + choice) % 2**63
    return ProcessRequest(
        prompt="", max_new_tokens=max_tokens, top_k=max(body.top_k, 0), temperature=body.temperature,
        seed=seed, echo_prompt=echo, top_p=body.top_p, top_k_per_token=max(top, 1),
        stop_sequences=stop_list(body.stop),
    )


async def run(s: Served, body: Sampling, prompts: list[list[int]], max_tokens: int | None, echo: bool,
              top: int) -> list[list[dict]]:
    """Every prompt's `n` choices through the engine (each its body, with `finish_reason`). Everything
    is checked before anything is queued; should one fail, the others are cancelled."""
    engine = s.engine
    if top > (limit := min(engine.settings.max_top_k_per_token, engine.vocab)):
        raise InvalidRequest("logprobs", f"{top} top log-probabilities asked; at most {limit}")
    if max_tokens is not None and max_tokens > engine.context:
        raise InvalidRequest("max_tokens", f"max_tokens is {max_tokens}; the context holds {engine.context} tokens")
    if len(prompts) * body.n > engine.settings.max_queue:  # would never fit in the queue at once
        raise InvalidRequest("prompt", f"{len(prompts)} prompts x n {body.n} requests; at most "
                                       f"{engine.settings.max_queue} (max_queue) in one request")
    for ids in prompts:
        s.check_prompt(ids)
    futures = []
    try:
        for ids in prompts:
            room = engine.context - len(ids) if max_tokens is None else max_tokens
            for choice in range(body.n):
                futures.append(engine.submit(engine_request(body, room, echo, top, choice), ids, every_token=True,
                                             ignore_eos=body.ignore_eos))
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    results = await settle(engine, futures)
    return [results[i * body.n : (i + 1) * body.n] for i in range(len(prompts))]


def usage(prompts: list[list[int]], results: list[list[dict]], echo: bool) -> dict:
    prompt_tokens = sum(len(ids) for ids in prompts)
    total = sum(len(r["tokens"]) for choices in results for r in choices)
    completion = total - (sum(len(ids) * len(c) for ids, c in zip(prompts, results)) if echo else 0)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def completion_logprobs(tokens: list[dict], top: int, echoed: int) -> dict:
    """OpenAI's legacy logprobs: the first echoed token has no log-probability (nothing before it)."""
    offsets, at = [], 0
    for token in tokens:
        offsets.append(at)
        at += len(token["text"])
    return {
        "tokens": [token["text"] for token in tokens],
        "token_logprobs": [None if i == 0 and echoed else t["logprob"] for i, t in enumerate(tokens)],
        "top_logprobs": [
            None if i == 0 and echoed else dict(list(t["top_logprob"].items())[:top]) for i, t in enumerate(tokens)
        ],
        "text_offset": offsets,
    }


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request) -> JSONResponse:
    s = served(request)
    s.check_model(body.model)
    size = len(body.prompt) if isinstance(body.prompt, str) else sum(map(len_of, body.prompt))
    prompts = await inline_if_small(size, s.prompts, body.prompt)
    ids_only = [ids for ids, _ in prompts]
    results = await run(s, body, ids_only, body.max_tokens, body.echo, body.logprobs or 0)
    choices = []
    for (ids, text), per_prompt in zip(prompts, results):
        for result in per_prompt:
            tokens, completion = result["tokens"], result["text"]
            if body.echo:  # the prompt as sent when it came as text
                echoed = text if text is not None else "".join(t["text"] for t in tokens[: len(ids)])
                completion = echoed + "".join(t["text"] for t in tokens[len(ids) :])
            choices.append({
                "index": len(choices),
                "text": completion,
                "logprobs": None if body.logprobs is None else completion_logprobs(
                    tokens, body.logprobs, len(ids) if body.echo else 0),
                "finish_reason": result["finish_reason"],
            })
    return JSONResponse({
        "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
        "model": s.name, "choices": choices, "usage": usage(ids_only, results, body.echo),
    })


def len_of(prompt: str | int | list[int]) -> int:
    return len(prompt) if isinstance(prompt, (str, list)) else 1


def chat_text(s: Served, body: ChatRequest) -> str:
    """The conversation through the model's chat template (PLAIN_CHAT_TEMPLATE when it has none)."""
    messages = []
    for message in body.messages:
        content = message.content
        if isinstance(content, list):  # OpenAI's content parts: the text ones, joined
            content = "".join(str(part.get("text", "")) for part in content if part.get("type") == "text")
        messages.append({"role": message.role, "content": content or ""})
    template = None if s.tokenizer.chat_template else PLAIN_CHAT_TEMPLATE
    return s.tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)


def chat_logprobs(tokens: list[dict], top: int) -> dict:
    def entry(text: str, logprob: float) -> dict:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {"content": [
        {**entry(t["text"], t["logprob"]),
         "top_logprobs": [entry(k, v) for k, v in list(t["top_logprob"].items())[:top]]}
        for t in tokens
    ]}


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request) -> JSONResponse:
    s = served(request)
    s.check_model(body.model)
    text = chat_text(s, body)
    ids = await inline_if_small(len(text), s.encode, text, False)  # the template wrote the special tokens
    top = body.top_logprobs or 0
    if top and not body.logprobs:
        raise InvalidRequest("top_logprobs", "top_logprobs needs logprobs: true")
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    results = await run(s, body, [ids], max_tokens, False, top)
    choices = [{
        "index": i,
        "message": {"role": "assistant", "content": result["text"]},
        "logprobs": chat_logprobs(result["tokens"], top) if body.logprobs else None,
        "finish_reason": result["finish_reason"],
    } for i, result in enumerate(results[0])]
    return JSONResponse({
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
        "model": s.name, "choices": choices, "usage": usage([ids], results, False),
    })


@router.get("/v1/models")
def models(request: Request) -> dict:
    s = served(request)
    return {"object": "list", "data": [{
        "id": s.name, "object": "model", "created": s.created, "owned_by": "llm-efficiency-harness",
        "max_model_len": s.engine.context,
    }]}


@router.get("/tokenizer_info")
def tokenizer_info(request: Request) -> dict:
    s = served(request)
    tokenizer = s.tokenizer
    return {
        "tokenizer_class": type(tokenizer).__name__,
        "bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token, "unk_token": tokenizer.unk_token,
        "model_max_length": s.engine.context, "vocab_size": s.engine.vocab,
        "chat_template": tokenizer.chat_template or PLAIN_CHAT_TEMPLATE,
    }


async def vllm_tokenize(s: Served, body: VllmTokenizeRequest) -> JSONResponse:
    """vLLM's /tokenize (the competition's shares the route: main.py tells the two apart)."""
    s.check_model(body.model)
    tokens = await inline_if_small(len(body.prompt), s.encode, body.prompt, body.add_special_tokens)
    return JSONResponse({"count": len(tokens), "max_model_len": s.engine.context, "tokens": tokens})


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> JSONResponse:
    s = served(request)
    s.check_model(body.model)
    return JSONResponse({"prompt": await inline_if_small(len(body.tokens), s.engine.decode, body.tokens)})
