"""Soak test of the submission server: many requests from 30 clients against a small prefix cache.

Starts `python -m submission` on 127.0.0.1 (the embedded tiny model unless --model) with a prefix
cache a third the size of the prompts' distinct prefixes (8192 of about 25000 tokens on the tiny
model), so entries are evicted all the time. The
requests are few-shot prompts over at least 60 distinct prefixes (8 tasks x 1-8 worked examples,
each example with a short passage: about 60 to 1000 tokens) and a mix of 1-token answers with
top-5 log-probabilities, 64-token answers cut at a "\\n" stop sequence, 256-token generations and
echoed prompts (log-probabilities of the prompt, no generation), all greedy. The run is bounded
by a request count and a time limit, whichever comes first.

    python bench/soak.py [--requests 2000] [--clients 30] [--max-seconds 1500] [--prefix-cache-tokens 8192]

It prints the errors (non-200 answers, by status), p50/p99 latency, the server's resident memory
after the warm-up passes, after each quarter of the soak and at the end, and the check: every answer of the soak equal (token texts)
to the same request sent alone afterwards, one at a time.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from core.generated import TASKS
from core.tiny import EMBEDDED_ID

ROOT = Path(__file__).resolve().parent.parent
PROSE = ROOT / "core" / "assets" / "prose.txt"
KINDS = (  # share, name, request fields
    (0.50, "1-token", {"max_new_tokens": 1, "top_k_per_token": 5}),
    (0.20, "stop", {"max_new_tokens": 64, "stop_sequences": ["\n"]}),
    (0.10, "long", {"max_new_tokens": 256}),
    (0.20, "echo", {"max_new_tokens": 0, "echo_prompt": True}),
)
SHOTS = range(1, 9)


def prefixes() -> list[str]:
    """One few-shot prefix per task and shot count: 8 x 8 = 64, of varied length."""
    sentences = [line for line in PROSE.read_text(encoding="utf-8").splitlines() if line.strip()]
    heads = []
    for name, task in TASKS.items():
        for shots in SHOTS:
            rng = random.Random(f"{name}:{shots}")
            head = f"The following are {shots} solved questions about {name.replace('_', ' ')}.\n\n"
            for record in task.make(shots, seed=shots):
                passage = " ".join(rng.sample(sentences, 2))
                head += f"Passage: {passage}\n{record['prompt']}{record['completion']}\n\n"
            heads.append(head)
    return heads


def distinct_requests(per_prefix: int, seed: int) -> list[dict]:
    """`per_prefix` questions on each prefix, each of one kind (drawn with the kinds' shares)."""
    rng = random.Random(seed)
    requests = []
    for i, head in enumerate(prefixes()):
        task = TASKS[sorted(TASKS)[i // len(SHOTS)]]
        for record in task.make(per_prefix, seed=1000 + i):
            _, kind, fields = rng.choices(KINDS, weights=[k[0] for k in KINDS])[0]
            body = {"prompt": head + record["prompt"], "temperature": 1e-7, "top_p": 1, "top_k_per_token": 1}
            requests.append({"kind": kind, "body": {**body, **fields}})
    return requests


def rss_mib(pid: int) -> tuple[float, float]:
    """The process's resident memory now and at its peak, in MiB."""
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def start(args: argparse.Namespace) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "submission", "--model", args.model, "--port", str(args.port),
        "--threads", str(args.threads), "--prefix-cache-tokens", str(args.prefix_cache_tokens),
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 900  # a loaded machine takes minutes
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{args.port}/health", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError("the server did not start in 900 s")


def run(
    url: str, order: list[int], requests: list[dict], clients: int, seconds: float, pid: int
) -> tuple[list[dict], list[float]]:
    """Send requests[order[0]], requests[order[1]], ... from `clients` threads, each taking the
    next one as it finishes, until all are sent or `seconds` have passed. Returns one record per
    answer and the server's RSS (MiB) after each quarter of the requests."""
    records: list[dict] = []
    quarters = {len(order) * k // 4 for k in range(1, 5)}
    rss: list[float] = []
    lock = threading.Lock()
    position = iter(order)
    stop_at = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(base_url=url, timeout=600) as http:
            while time.monotonic() < stop_at:
                with lock:
                    index = next(position, None)
                if index is None:
                    return
                begin = time.perf_counter()
                try:
                    response = http.post("/process", json=requests[index]["body"])
                    status, body = response.status_code, response.json()
                except httpx.HTTPError as error:
                    status, body = type(error).__name__, None
                latency = time.perf_counter() - begin
                with lock:
                    records.append({"index": index, "status": status, "body": body, "latency": latency})
                    if len(records) in quarters:
                        rss.append(rss_mib(pid)[0])

    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    return records, rss


def tokens(body: dict) -> list[str]:
    return [token["text"] for token in body["tokens"]]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=EMBEDDED_ID)
    parser.add_argument("--requests", type=int, default=2000, help="requests of the soak (after the warm-up)")
    parser.add_argument("--per-prefix", type=int, default=3, help="distinct questions per prefix")
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--max-seconds", type=float, default=1500, help="the soak stops sending after this")
    parser.add_argument("--prefix-cache-tokens", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    parser.add_argument("--port", type=int, default=8610)
    parser.add_argument(
        "--warmup-passes", type=int, default=2, help="passes over the distinct requests first"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    requests = distinct_requests(args.per_prefix, args.seed)
    rng = random.Random(args.seed)
    soak_order = [rng.randrange(len(requests)) for _ in range(args.requests)]
    url = f"http://127.0.0.1:{args.port}"
    server = start(args)
    try:
        began = time.monotonic()
        for _ in range(args.warmup_passes):  # every distinct request, in a shuffled order
            warm_order = rng.sample(range(len(requests)), len(requests))
            run(url, warm_order, requests, args.clients, args.max_seconds, server.pid)
        rss_start, _ = rss_mib(server.pid)
        soak_began = time.monotonic()
        records, rss_quarters = run(url, soak_order, requests, args.clients, args.max_seconds, server.pid)
        soak_s = time.monotonic() - soak_began
        rss_end, rss_peak = rss_mib(server.pid)
        health = httpx.get(url + "/health").json()
        # The check: each distinct request of the soak, sent alone.
        alone = {}
        for index in sorted({r["index"] for r in records}):
            response = httpx.post(url + "/process", json=requests[index]["body"], timeout=600)
            alone[index] = tokens(response.json()) if response.status_code == 200 else None
        total_s = time.monotonic() - began
    finally:
        server.terminate()
        server.wait(timeout=30)

    errors = Counter(str(r["status"]) for r in records if r["status"] != 200)
    served = [r for r in records if r["status"] == 200]
    differ = [r for r in served if tokens(r["body"]) != alone[r["index"]]]
    kinds = Counter(requests[r["index"]]["kind"] for r in records)
    latencies = [r["latency"] for r in served]
    figures = {
        "requests": len(records),
        "distinct_requests": len(alone),
        "distinct_prefixes": len(prefixes()),
        "kinds": dict(kinds),
        "clients": args.clients,
        "prefix_cache_tokens": args.prefix_cache_tokens,
        "soak_s": round(soak_s, 1),
        "requests_per_s": round(len(records) / soak_s, 2),
        "errors": sum(errors.values()),
        "errors_by_status": dict(errors),
        "differ_from_alone": len(differ),
        "p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "p99_s": round(percentile(latencies, 0.99), 3) if latencies else None,
        "rss_after_warmup_mib": round(rss_start, 1),
        "rss_end_mib": round(rss_end, 1),
        "rss_quarters_mib": [round(value, 1) for value in rss_quarters],
        "rss_peak_mib": round(rss_peak, 1),
        "prefix_cache": health["prefix_cache"],
        "total_s": round(total_s, 1),
    }
    lengths = sorted(len(p) for p in prefixes())
    print(f"prefixes: {len(lengths)} distinct, {lengths[0]}-{lengths[-1]} characters; kinds {dict(kinds)}")
    print(
        f"soak: {len(records)} requests ({len(alone)} distinct) from {args.clients} clients in {soak_s:.1f} s"
        f" ({figures['requests_per_s']} req/s), prefix cache {args.prefix_cache_tokens} tokens"
    )
    print(f"errors: {figures['errors']} {dict(errors) if errors else ''}")
    print(f"answers differing from the same request sent alone: {len(differ)} of {len(served)}")
    print(f"latency p50 {figures['p50_s']} s, p99 {figures['p99_s']} s")
    print(
        f"server RSS: {rss_start:.1f} MiB after warm-up, {rss_end:.1f} MiB at the end (peak {rss_peak:.1f})"
    )
    print(f"server RSS after each quarter of the soak: {', '.join(f'{v:.1f}' for v in rss_quarters)} MiB")
    print(f"prefix cache at the end: {json.dumps(health['prefix_cache'])}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
