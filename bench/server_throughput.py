"""Throughput of the submission server under a judges'-like load, against a one-at-a-time baseline.

Starts both servers on 127.0.0.1 with the same model (the embedded tiny model unless --model),
then for each concurrency level sends the same requests to each: requests per second, p50 and
p99 latency, and our/baseline ratios. The mix is HELM-shaped: per scenario a fixed instruction
and five worked examples, then a varying question; mostly 1-token multiple choice, some 64-token
generations, a few 400-token ones with a "\\n\\n" stop sequence, all greedy (temperature 1e-7).

    python bench/server_throughput.py [--levels 1 8 30] [--requests 40 120 900] [--threads N]

The 30-client level sends 900 requests (30 per client); judges send thousands per run. With 300,
the run's end, when a last 400-token generation decodes alone, weighs more: our measured ratio
was 2.6x with 300 against 3.3x with 900.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from core.generated import TASKS
from core.tiny import EMBEDDED_ID

ROOT = Path(__file__).resolve().parent.parent
PROSE = ROOT / "core" / "assets" / "prose.txt"
MIX = ((0.70, 1, []), (0.25, 64, []), (0.05, 400, ["\n\n"]))  # share, max_new_tokens, stop_sequences


def workload(count: int, seed: int) -> list[dict]:
    """`count` judges'-shaped requests, drawn in a seeded order across the scenarios. Each block
    carries a short passage (as BBQ's do) so prompts reach HELM's length: about 450 tokens, of
    which the question's own block is about 70."""
    rng = random.Random(seed)
    sentences = [line for line in PROSE.read_text(encoding="utf-8").splitlines() if line.strip()]

    def block(record: dict, passage_rng: random.Random, answer: bool) -> str:
        passage = " ".join(passage_rng.sample(sentences, 2))
        return f"Passage: {passage}\n{record['prompt']}" + (record["completion"] + "\n\n" if answer else "")

    heads = {}
    for name, task in TASKS.items():
        head = f"The following are questions (with answers) about {name.replace('_', ' ')}.\n\n"
        shots = random.Random(name)
        heads[name] = head + "".join(block(r, shots, True) for r in task.make(5, 1))
    requests = []
    for i in range(count):
        name = rng.choice(sorted(heads))
        question = block(TASKS[name].make(1, seed * 100_000 + i)[0], rng, False)
        _, max_new_tokens, stop = rng.choices(MIX, weights=[m[0] for m in MIX])[0]
        requests.append(
            {
                "prompt": heads[name] + question,
                "temperature": 1e-7,
                "num_return_sequences": 1,
                "max_new_tokens": max_new_tokens,
                "top_p": 1,
                "echo_prompt": False,
                "top_k_per_token": 1,
                "stop_sequences": stop,
            }
        )
    return requests


def start(command: list[str], port: int, env: dict[str, str]) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, *command, "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{command} exited with {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.3)
    raise RuntimeError(f"{command} did not start")


def measure(url: str, requests: list[dict], concurrency: int) -> dict:
    """Send `requests` from `concurrency` client threads, each taking the next one as it finishes."""
    latencies: list[float] = []
    errors = 0
    with httpx.Client(base_url=url, timeout=3000, limits=httpx.Limits(max_connections=concurrency)) as client:

        def send(body: dict) -> None:
            nonlocal errors
            begin = time.perf_counter()
            response = client.post("/process", json=body)
            latencies.append(time.perf_counter() - begin)
            errors += response.status_code != 200

        begin = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(send, requests))
        elapsed = time.perf_counter() - begin
    latencies.sort()
    return {
        "requests_per_s": len(requests) / elapsed,
        "p50_s": statistics.median(latencies),
        "p99_s": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=EMBEDDED_ID)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 30])
    parser.add_argument("--requests", type=int, nargs="+", default=[40, 120, 900], help="per level")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads of each server (0: torch's default)"
    )
    parser.add_argument("--port", type=int, default=8590, help="ours; the baseline gets the next one")
    parser.add_argument(
        "--baseline-style",
        choices=["sample", "threaded"],
        default="sample",
        help="sample: an async handler blocking the event loop, as the official samples;"
        " threaded: a thread-pool handler behind a lock (stronger)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if len(args.requests) != len(args.levels):
        parser.error("give one --requests count per --levels entry")

    ours = start(["-m", "submission", "--model", args.model, "--threads", str(args.threads)], args.port, {})
    baseline = start(
        [
            "bench/server_baseline.py",
            "--model",
            args.model,
            "--threads",
            str(args.threads),
            "--style",
            args.baseline_style,
        ],
        args.port + 1,
        {},
    )
    servers = {"ours": f"http://127.0.0.1:{args.port}", "baseline": f"http://127.0.0.1:{args.port + 1}"}
    results = []
    try:
        for url in servers.values():  # warm-up: first calls pay one-off costs
            measure(url, workload(4, seed=999), 2)
        print(
            f"mix: {', '.join(f'{share:.0%} max_new_tokens={n}' for share, n, _ in MIX)}; model {args.model}"
        )
        print(f"{'clients':>7} {'server':>8} {'req/s':>8} {'p50 s':>8} {'p99 s':>8} {'errors':>6}")
        for level, count in zip(args.levels, args.requests):
            requests = workload(count, seed=level)
            row = {"clients": level, "requests": count}
            for name in ("baseline", "ours"):  # the same requests, one server after the other
                row[name] = measure(servers[name], requests, level)
                r = row[name]
                print(
                    f"{level:>7} {name:>8} {r['requests_per_s']:>8.2f} {r['p50_s']:>8.3f} {r['p99_s']:>8.3f}"
                    f" {r['errors']:>6}"
                )
            row["speedup"] = row["ours"]["requests_per_s"] / row["baseline"]["requests_per_s"]
            row["p50_ratio"] = row["baseline"]["p50_s"] / row["ours"]["p50_s"]
            print(f"{level:>7} {'ratio':>8} {row['speedup']:>7.2f}x  p50 {row['p50_ratio']:.2f}x faster")
            results.append(row)
        print(json.dumps(httpx.get(servers["ours"] + "/health").json()))
    finally:
        for process in (ours, baseline):
            process.terminate()
            process.wait(timeout=30)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
