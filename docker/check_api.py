"""Talk to a running submission server the way the judges do and check every answer.

    python docker/check_api.py http://127.0.0.1:PORT [--wait SECONDS]

First the organizers' health check, `POST /process {"prompt": "The capital of France is "}`,
retried until it answers or --wait runs out (the judges try 10 times, 120 s apart); the seconds
until it answered are printed as `healthy_after_s=...`. Then a request shaped like their HELM
client's (all eight keys), alone and from 30 threads at once (greedy answers must agree), a
/tokenize -> /decode round trip, and GET /health naming the adapter that was asked for. Standard library only, so it runs
with any host Python. Exits non-zero naming the first broken promise.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

HEALTH_CHECK = {"prompt": "The capital of France is "}
JUDGES_REQUEST = {  # what the organizers' HELM client sends for a 1-token multiple-choice question
    "prompt": "Question: Which planet is known as the red planet?\nA. Venus\nB. Mars\nAnswer:",
    "temperature": 1e-7,
    "num_return_sequences": 1,
    "max_new_tokens": 1,
    "top_p": 1,
    "top_k_per_token": 1,
    "stop_sequences": [],
    "echo_prompt": False,
}
JUDGES_THREADS = 30
RESPONSE_KEYS = ("text", "tokens", "logprob", "request_time")
TOKEN_KEYS = ("text", "logprob", "top_logprob")


class Broken(Exception):
    """The server answered, but not as the competition's client needs."""


def post(base: str, path: str, body: dict, timeout: float = 120) -> dict:
    request = urllib.request.Request(
        base + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if response.status != 200:
            raise Broken(f"{path} answered {response.status}")
        return json.load(response)


def get(base: str, path: str) -> dict:
    with urllib.request.urlopen(base + path, timeout=30) as response:
        return json.load(response)


def wait_healthy(base: str, wait_s: float) -> tuple[float, dict]:
    """Retry the health check every half second until a 200; (seconds it took, the answer)."""
    start = time.monotonic()
    last_error = "no attempt"
    for _ in range(int(wait_s / 0.5) + 1):
        try:
            return time.monotonic() - start, post(base, "/process", HEALTH_CHECK)
        except urllib.error.HTTPError as err:  # a real answer, just a wrong one: no point retrying
            raise Broken(f"health check answered {err.code}: {err.read()[:300]!r}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
            last_error = str(err)
        time.sleep(0.5)
    raise Broken(f"no answer to the health check within {wait_s:.0f} s (last: {last_error})")


def check_completion(answer: dict, max_tokens: int, top_k: int | None) -> None:
    missing = [key for key in RESPONSE_KEYS if key not in answer]
    if missing:
        raise Broken(f"/process answer lacks {missing}: {answer}")
    tokens = answer["tokens"]
    if not 1 <= len(tokens) <= max_tokens and not (tokens == [] and answer["text"] == ""):
        raise Broken(f"{len(tokens)} tokens returned for max_new_tokens={max_tokens}")
    for token in tokens:
        if any(key not in token for key in TOKEN_KEYS):
            raise Broken(f"a token lacks one of {TOKEN_KEYS}: {token}")
        if top_k is not None and len(token["top_logprob"]) != top_k:
            raise Broken(f"top_logprob has {len(token['top_logprob'])} entries, top_k_per_token={top_k}")
    if "".join(token["text"] for token in tokens) != answer["text"]:
        raise Broken(f"token texts do not join to text: {answer}")
    if not math.isclose(sum(token["logprob"] for token in tokens), answer["logprob"], abs_tol=1e-3):
        raise Broken(f"logprob {answer['logprob']} is not the sum of the tokens' log-probabilities")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base_url")
    parser.add_argument("--wait", type=float, default=300, help="seconds to wait for the first answer")
    parser.add_argument("--adapter", default=None, help="the adapter GET /health must report (default: none)")
    args = parser.parse_args()
    base = args.base_url.rstrip("/")
    try:
        took, health = wait_healthy(base, args.wait)
        check_completion(health, max_tokens=50, top_k=None)  # the challenge's default max_new_tokens
        print(f"healthy_after_s={took:.1f}")
        answer = post(base, "/process", JUDGES_REQUEST)
        check_completion(answer, max_tokens=1, top_k=1)
        with ThreadPoolExecutor(JUDGES_THREADS) as pool:  # their client's threads, all at once
            answers = list(pool.map(lambda _: post(base, "/process", JUDGES_REQUEST), range(JUDGES_THREADS)))
        for other in answers:
            check_completion(other, max_tokens=1, top_k=1)
        texts = {other["text"] for other in answers}
        if texts != {answer["text"]}:
            raise Broken(f"greedy answers from {JUDGES_THREADS} threads {texts} differ from the lone {answer['text']!r}")
        tokens = post(base, "/tokenize", {"text": JUDGES_REQUEST["prompt"]})["tokens"]
        if post(base, "/decode", {"tokens": tokens})["text"] != JUDGES_REQUEST["prompt"]:
            raise Broken("/decode of /tokenize is not the original text")
        served = get(base, "/health").get("adapter")
        if served != args.adapter:
            raise Broken(f"GET /health reports adapter {served!r}, expected {args.adapter!r}")
    except (Broken, urllib.error.HTTPError) as err:
        print(f"check_api: FAIL: {err}", file=sys.stderr)
        return 1
    print(f"check_api: ok: health check, judges' request ({answer['text']!r}) alone and from {JUDGES_THREADS}"
          f" threads, tokenize/decode round trip, adapter {served}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
