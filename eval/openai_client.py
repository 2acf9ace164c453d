"""`openai-api`: the judges' scenarios against any server speaking the OpenAI completions API
(vLLM, TGI, llama.cpp's server, the submission's own /v1), with the judges' prompts and scoring.

Everything but the wire is challenge-api's (eval/client.py): the same lm-eval documents, threads and
HELM fitting rule. A generation request is POST /v1/completions {model, prompt, max_tokens,
temperature, top_p 1, stop}: greedy is temperature 0, and the server ends the completion at a stop
sequence as the competition API does. The prompt is counted (to drop in-context examples that do not
fit) with vLLM's POST /tokenize {prompt} where the server has it; a server without it gets the prompt
as it is. A loglikelihood request echoes the prompt with logprobs 1; the continuation's tokens are
those whose `text_offset` lies in it. The model name is the server's first in GET /v1/models.
"""
from __future__ import annotations

import httpx
from lm_eval.api.registry import register_model

from eval.client import CONTEXT_WINDOW, Call, ChallengeAPI, Server, ServerError, _check, split_pair


class OpenAIServer(Server):
    def __init__(self, base_url: str, timeout_s: float, concurrency: int):
        super().__init__(base_url.removesuffix("/v1/completions").removesuffix("/v1"), timeout_s, concurrency)
        self.model = self._model()
        self.counts = True  # the server answers vLLM's /tokenize; set False at its first 404

    def _model(self) -> str:
        url = f"{self.base_url}/v1/models"
        try:
            response = self.http.get(url)
        except httpx.TransportError as exc:
            raise ServerError(f"GET {url}: server unreachable ({type(exc).__name__}: {exc})") from exc
        if response.status_code != 200:
            raise ServerError(f"GET {url} answered HTTP {response.status_code}: {response.text[:300]}")
        data = _check(response.json(), {"data": list}, f"GET {url}")["data"]
        if not data or not isinstance(data[0], dict) or not isinstance(data[0].get("id"), str):
            raise ServerError(f"GET {url} lists no model: {str(data)[:200]}")
        return data[0]["id"]

    def _tokens(self, text: str, what: str) -> list[int] | None:
        if not self.counts:
            return None
        try:
            body = self.post("/tokenize", {"model": self.model, "prompt": text}, what)
        except ServerError as exc:
            if "HTTP 404" not in str(exc):
                raise
            self.counts = False
            return None
        return _check(body, {"tokens": list}, f"{what}: POST /tokenize")["tokens"]

    def count_tokens(self, text: str, what: str) -> int:
        tokens = self._tokens(text, what)
        return 0 if tokens is None else len(tokens)

    def truncate(self, text: str, max_length: int, what: str) -> str:
        tokens = self._tokens(text, what) or []
        body = self.post("/detokenize", {"model": self.model, "tokens": tokens[:max_length]}, what)
        return _check(body, {"prompt": str}, f"{what}: POST /detokenize")["prompt"]

    def complete(self, body: dict, call: Call) -> dict:
        what = f"{call.where()}: POST {self.base_url}/v1/completions"
        answer = _check(self.post("/v1/completions", {"model": self.model, **body}, call.where()),
                        {"choices": list}, what)
        if not answer["choices"] or not isinstance(answer["choices"][0], dict):
            raise ServerError(f"{what} answered no choice")
        return _check(answer["choices"][0], {"text": str}, f"{what}: choices[0]")

    def generate(self, call: Call) -> str:
        body = {"prompt": self.fit(call), "max_tokens": call.max_new_tokens, "temperature": call.temperature,
                "top_p": 1, "stop": list(call.stop) or None}
        return self.complete(body, call)["text"]

    def loglikelihood(self, call: Call) -> tuple[float, bool]:
        context, continuation = split_pair(call.prompt, call.continuation)
        whole = context + continuation
        if self.count_tokens(whole, call.where()) > CONTEXT_WINDOW:
            raise ServerError(f"{call.where()}: context + continuation exceed the context ({CONTEXT_WINDOW} tokens)")
        body = {"prompt": whole, "max_tokens": 1, "temperature": 0, "logprobs": 1, "echo": True}
        logprobs = self.complete(body, call).get("logprobs")
        logprobs = _check(logprobs, {"token_logprobs": list, "top_logprobs": list, "text_offset": list},
                          f"{call.where()}: logprobs")
        total, greedy = 0.0, True
        for offset, logprob, top in zip(logprobs["text_offset"], logprobs["token_logprobs"],
                                        logprobs["top_logprobs"]):
            if len(context) <= offset < len(whole) and logprob is not None:
                total += logprob
                greedy = greedy and (not top or logprob >= max(top.values()))
        return total, greedy


@register_model("openai-api")
class OpenAICompletionsAPI(ChallengeAPI):
    """lm-eval model arguments as challenge-api's; base_url is the server (with or without /v1)."""

    server_class = OpenAIServer
