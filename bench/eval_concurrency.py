"""Wall time of the quick suite through the HTTP client at concurrency 1 vs 30, in the same run.

    python bench/eval_concurrency.py [--server URL | --model ID] [--scenarios A,B] [--limit N] [--low 1] [--high 30]

Without --server it starts the real server (python -m submission, --model or the embedded tiny model)
on a free 127.0.0.1 port. Each setting runs the same lm-eval tasks through eval.client.ChallengeAPI, nothing is
recorded in a results database, and the completions of both runs are compared (a server that batches
greedy requests must answer the same). Prints both wall times and the speed-up ratio.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: tests.helpers
from eval.client import ChallengeAPI
from eval.runner import evaluate, quiet_lm_eval
from eval.scenarios import SCENARIOS
from tests.helpers import free_port

DEFAULT_SCENARIOS = [s.name for s in SCENARIOS.values() if s.suite == "quick"]


def start_server(model: str | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "submission", "--host", "127.0.0.1", "--port", str(port),
                             "--log-level", "warning", *(["--model", model] if model else [])], env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):  # up to 120 s for the model to load
        try:
            if httpx.post(f"{url}/process", json={"prompt": "The capital of France is "}, timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not answer within 120 s")


def run_suite(url: str, concurrency: int, scenarios: list[str], limit: int | None, work: Path) -> tuple[float, list]:
    lm = ChallengeAPI(url, concurrency=concurrency, progress=False)
    completions = []
    start = time.perf_counter()
    for name in scenarios:
        scenario = SCENARIOS[name]
        specs = [s for s in scenario.build(work, scenario.budget) if s.test]
        output = evaluate(lm, specs, work / f"c{concurrency}" / name, limit)
        completions += [row["resps"] for rows in output["samples"].values() for row in rows]
    return time.perf_counter() - start, completions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", help="a running server (default: start one)")
    parser.add_argument("--model", help="the model of the server started (default: the server's, the tiny one)")
    parser.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS))
    parser.add_argument("--limit", type=int, help="at most N instances per task")
    parser.add_argument("--low", type=int, default=1)
    parser.add_argument("--high", type=int, default=30)
    args = parser.parse_args()
    quiet_lm_eval()
    scenarios = [s for s in args.scenarios.split(",") if s]
    if args.server and args.model:
        parser.error("--model names the server this script starts: leave it out with --server")
    proc, url = (None, args.server) if args.server else start_server(args.model)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run_suite(url, args.high, scenarios[:1], 1, Path(tmp))  # warm-up: first requests, caches
            low, low_out = run_suite(url, args.low, scenarios, args.limit, Path(tmp))
            high, high_out = run_suite(url, args.high, scenarios, args.limit, Path(tmp))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    same = sum(a == b for a, b in zip(low_out, high_out))
    print(f"quick suite ({', '.join(scenarios)}; limit {args.limit}; {len(low_out)} requests) via {url}")
    print(f"concurrency {args.low:>2}: {low:7.1f} s")
    print(f"concurrency {args.high:>2}: {high:7.1f} s")
    print(f"speed-up {args.high} vs {args.low}: {low / high:.2f}x; identical completions: {same}/{len(low_out)}")
    for a, b in [(a, b) for a, b in zip(low_out, high_out) if a != b][:10]:
        print(f"  differs: {args.low}: {a!r}\n           {args.high}: {b!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
