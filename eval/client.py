"""An lm-eval model that evaluates a running server over the competition's HTTP API, like the judges.

Each generation request becomes the body the organizers' HELM client sent (challenge.md §2): the
prompt, a temperature of 1e-7 for greedy, one return sequence, max_new_tokens, top_p, top_k_per_token,
the stop sequences and echo_prompt false. Like HELM, the prompt length is counted with the server's own
tokenizer (POST /tokenize): when prompt + max_new_tokens exceeds the context window, in-context
examples are dropped from the end, and as a last resort the prompt is cut (/tokenize with truncation,
then /decode). The completion is returned as the server sent it: the judges' client never cut it at a
stop sequence, so neither does this one. Requests run on `concurrency` threads (30, like the judges).

Loglikelihood requests (lm-eval's multiple-choice tasks) echo the prompt: /process with echo_prompt,
max_new_tokens 0 and top_k_per_token 1 returns every prompt token with its log-probability; the
continuation's tokens are the last ones, as many as /tokenize counts beyond the context's (the split
lm-eval's `hf` model makes: trailing spaces of the context move to the continuation). `openai-api`
(eval/openai_client.py) speaks the OpenAI completions API instead.

Several servers of the same entry (`base_url` "URL1,URL2,..."; "|" also separates, for lm-eval's
model_args string, which splits on commas) share one queue of requests, each with its own `concurrency`
threads, so a faster server takes more of them. Greedy answers do not depend on which server answered.
"""
from __future__ import annotations

import json
import queue
import re
import threading
import time
from dataclasses import dataclass, replace

import httpx

# lm-eval registers its own models (hf, local-completions) only while its registry is empty: import
# them first, so that registering ours below does not hide them.
import lm_eval.models  # noqa: F401
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from core.rules import load_rules

CONTEXT_WINDOW = load_rules().max_total_tokens  # budget.toml: prompt + completion
DEFAULT_CONCURRENCY = 30
DEFAULT_TIMEOUT_S = 3000.0  # the judges' client allowed up to 3000 s


class ServerError(RuntimeError):
    """The server could not be reached, or answered something the competition API does not allow."""


@dataclass(frozen=True)
class Call:
    """One generation request, and where it came from (for error messages)."""

    index: int
    task: str
    doc_id: int
    prompt: str
    parts: dict | None  # the prompt's blocks (see eval.adapters.Prompt), when the task provides them
    max_new_tokens: int
    temperature: float
    stop: tuple[str, ...]
    continuation: str = ""  # a loglikelihood request's: its log-probability given `prompt`

    def where(self) -> str:
        return f"request {self.index} (task {self.task}, document {self.doc_id})"


def process_body(prompt: str, max_new_tokens: int, temperature: float, stop: tuple[str, ...]) -> dict:
    """The /process body the organizers' HELM client sends (including the keys the API ignores)."""
    return {
        "prompt": prompt,
        "temperature": temperature if temperature > 0 else 1e-7,
        "num_return_sequences": 1,
        "max_new_tokens": max_new_tokens,
        "top_p": 1,
        "echo_prompt": False,
        "top_k_per_token": 1,
        "stop_sequences": list(stop),
    }


def _check(body: object, fields: dict[str, type | tuple[type, ...]], what: str) -> dict:
    if not isinstance(body, dict):
        raise ServerError(f"{what} answered JSON that is not an object: {str(body)[:200]}")
    for name, kind in fields.items():
        if name not in body:
            raise ServerError(f"{what} answered JSON without the field {name!r} (got {sorted(body)})")
        if not isinstance(body[name], kind) or isinstance(body[name], bool) and kind is not bool:
            raise ServerError(
                f"{what} answered field {name!r} of type {type(body[name]).__name__}: {str(body[name])[:100]}"
            )
    return body


def check_process(body: object, what: str) -> str:
    """The completion text, after checking every key the judges' client required."""
    body = _check(body, {"text": str, "tokens": list, "logprob": (int, float), "request_time": (int, float)}, what)
    for i, token in enumerate(body["tokens"]):
        _check(token, {"text": str, "logprob": (int, float), "top_logprob": dict}, f"{what}: tokens[{i}]")
    return body["text"]


class Server:
    """The three endpoints, with errors that name the request and the field."""

    def __init__(self, base_url: str, timeout_s: float = DEFAULT_TIMEOUT_S, concurrency: int = DEFAULT_CONCURRENCY):
        self.base_url = base_url.rstrip("/")
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self.http = httpx.Client(timeout=timeout_s, limits=limits)

    def post(self, endpoint: str, body: dict, what: str) -> object:
        url = f"{self.base_url}{endpoint}"
        what = f"{what}: POST {url}"
        try:
            response = self.http.post(url, json=body)
        except httpx.TransportError as exc:
            raise ServerError(f"{what}: server unreachable ({type(exc).__name__}: {exc})") from exc
        if response.status_code != 200:
            raise ServerError(f"{what} answered HTTP {response.status_code}: {response.text[:300]}")
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ServerError(f"{what} answered malformed JSON ({exc}): {response.text[:200]!r}") from exc

    def count_tokens(self, text: str, what: str) -> int:
        body = self.post("/tokenize", {"text": text, "truncation": False, "max_length": CONTEXT_WINDOW}, what)
        return len(_check(body, {"tokens": list}, f"{what}: POST /tokenize")["tokens"])

    def truncate(self, text: str, max_length: int, what: str) -> str:
        body = self.post("/tokenize", {"text": text, "truncation": True, "max_length": max_length}, what)
        tokens = _check(body, {"tokens": list}, f"{what}: POST /tokenize")["tokens"]
        decoded = self.post("/decode", {"tokens": tokens}, what)
        return _check(decoded, {"text": str}, f"{what}: POST /decode")["text"]

    def fit(self, call: Call) -> str:
        """HELM's rule: drop in-context examples (last first) until prompt + completion fit, then cut."""
        budget = CONTEXT_WINDOW - call.max_new_tokens
        if call.parts is None:
            candidates = [call.prompt]
        else:
            from eval.adapters import Prompt

            prompt = Prompt(call.parts["instructions"], tuple(call.parts["train"]), call.parts["eval"],
                            call.parts["instance_prefix"])
            candidates = [prompt.with_train(k) for k in range(len(prompt.train), -1, -1)]
        for text in candidates:
            if self.count_tokens(text, call.where()) <= budget:
                return text
        return self.truncate(candidates[-1], budget, call.where())

    def generate(self, call: Call) -> str:
        prompt = self.fit(call)
        body = process_body(prompt, call.max_new_tokens, call.temperature, call.stop)
        return check_process(self.post("/process", body, call.where()), f"{call.where()}: POST {self.base_url}/process")

    def loglikelihood(self, call: Call) -> tuple[float, bool]:
        """The continuation's log-probability given the context, and whether it is the greedy one."""
        context, continuation = split_pair(call.prompt, call.continuation)
        whole = context + continuation
        length = self.count_tokens(whole, call.where())
        if length > CONTEXT_WINDOW:
            raise ServerError(f"{call.where()}: context + continuation are {length} tokens; the context holds "
                              f"{CONTEXT_WINDOW}")
        count = length - self.count_tokens(context, call.where())
        body = {**process_body(whole, 0, 0.0, ()), "echo_prompt": True}
        what = f"{call.where()}: POST {self.base_url}/process"
        answer = self.post("/process", body, call.where())
        check_process(answer, what)
        tokens = answer["tokens"][len(answer["tokens"]) - count :] if count > 0 else []
        if len(tokens) < count:
            raise ServerError(f"{what} echoed {len(answer['tokens'])} tokens; the continuation alone is {count}")
        greedy = all(not t["top_logprob"] or t["logprob"] >= max(t["top_logprob"].values()) for t in tokens)
        return sum(t["logprob"] for t in tokens), greedy


def split_pair(context: str, continuation: str) -> tuple[str, str]:
    """lm-eval's split: the context's trailing spaces belong to the continuation."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        return context[:-spaces], context[-spaces:] + continuation
    return context, continuation


def server_urls(base_url: str | list[str] | tuple[str, ...]) -> list[str]:
    """The servers named by `base_url`: one URL, or several separated by commas or "|"."""
    parts = base_url if isinstance(base_url, (list, tuple)) else re.split(r"[,|]", base_url)
    urls = [u.strip() for u in parts if u.strip()]
    if not urls:
        raise ValueError(f"base_url names no server: {base_url!r}")
    for u in urls:
        if not re.match(r"https?://[^/\s]+", u):
            raise ValueError(f"base_url: {u!r} is not an http(s) URL")
    if len(set(urls)) < len(urls):
        raise ValueError(f"base_url names a server twice: {base_url!r}")
    return urls


@register_model("challenge-api")
class ChallengeAPI(LM):
    """lm-eval model arguments: base_url (required; several servers separated by "," or "|"), concurrency
    (30 per server), timeout_s (3000)."""

    server_class = Server

    def __init__(self, base_url: str, concurrency: int = DEFAULT_CONCURRENCY, timeout_s: float = DEFAULT_TIMEOUT_S,
                 progress: bool = True, **_lm_eval_extras):
        # lm-eval hands every model its batch_size/device settings: meaningless for a server, ignored.
        super().__init__()
        if int(concurrency) < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.concurrency = int(concurrency)
        self.servers = [self.server_class(u, float(timeout_s), self.concurrency) for u in server_urls(base_url)]
        self.progress = progress
        self.seconds = 0.0  # wall time spent generating, summed over calls
        self.answered: dict[str, int] = {s.base_url: 0 for s in self.servers}  # requests each server answered

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        return self._run([self._call(i, r) for i, r in enumerate(requests)], "generate", disable_tqdm)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        calls = [replace(self._call(i, r, {}), continuation=r.args[1]) for i, r in enumerate(requests)]
        return self._run(calls, "loglikelihood", disable_tqdm)

    def _run(self, calls: list[Call], method: str, disable_tqdm: bool) -> list:
        """The servers' `method` (generate, loglikelihood) of every call, spread over the servers."""
        where = ", ".join(s.base_url for s in self.servers)
        bar = tqdm(total=len(calls), desc=f"requests to {where}", disable=disable_tqdm or not self.progress)
        start = time.perf_counter()
        try:
            results = self._spread(calls, bar, method)
        finally:
            bar.close()
            self.seconds += time.perf_counter() - start
        return results

    def _spread(self, calls: list[Call], bar, method: str) -> list:
        """Every server's threads take requests from one queue until it is empty or a request fails; the
        earliest failed request (in request order) is raised."""
        pending: queue.SimpleQueue[Call] = queue.SimpleQueue()
        for call in calls:
            pending.put(call)
        results: list[str | None] = [None] * len(calls)
        failures: dict[int, BaseException] = {}
        stop = threading.Event()
        lock = threading.Lock()

        def work(server: Server) -> None:
            while not stop.is_set():
                try:
                    call = pending.get_nowait()
                except queue.Empty:
                    return
                try:
                    results[call.index] = getattr(server, method)(call)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread below
                    with lock:
                        failures[call.index] = exc
                    stop.set()
                    return
                with lock:
                    self.answered[server.base_url] += 1
                    bar.update(1)

        threads = [threading.Thread(target=work, args=(server,), daemon=True)
                   for server in self.servers for _ in range(min(self.concurrency, len(calls)))]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                thread.join()
        finally:
            stop.set()  # Ctrl-C: no thread takes another request
        if failures:
            raise failures[min(failures)]
        return results  # type: ignore[return-value]  # every slot is filled when nothing failed

    @staticmethod
    def _call(index: int, request, gen_kwargs: dict | None = None) -> Call:
        context = request.args[0]
        gen_kwargs = request.args[1] if gen_kwargs is None else gen_kwargs
        until = gen_kwargs.get("until") or []
        doc = request.doc if isinstance(request.doc, dict) else {}
        return Call(
            index=index,
            task=str(request.task_name),
            doc_id=int(request.doc_id) if request.doc_id is not None else -1,
            prompt=context,
            # The context must still be this document's prompt for its blocks to stand for it.
            parts=json.loads(doc["prompt_parts"]) if "prompt_parts" in doc and doc.get("prompt") == context else None,
            max_new_tokens=int(gen_kwargs.get("max_gen_toks", 256)),
            temperature=float(gen_kwargs.get("temperature", 0.0)),
            stop=(until,) if isinstance(until, str) else tuple(until),
        )

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("the competition API has no rolling loglikelihood; use generate_until tasks")
