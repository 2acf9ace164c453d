"""Training throughput on one process against two (`accelerate launch`, DDP over gloo on the CPU).

Every side runs the real CLI (`python -m train` / `accelerate launch ... -m train`) on the same
recipe for the same optimizer steps, each step taking the same micro-batches (two per step: one
process accumulates two, two processes take one each), and reads the run's own metrics.jsonl
(non-pad tokens of the whole step / step time, all ranks together); the first steps (warm-up) are
not counted and the medians are compared:
- one process, one thread: the per-process baseline (same cores per process as each of the two);
- one process, all threads: the strongest single-process alternative on this machine;
- two processes, one thread each (torchrun's default OMP_NUM_THREADS=1).
Scaling efficiency = two processes' tokens/s / (2 x one process on one thread). Sides alternate over
the repeats, so drifting machine load hits all alike.

    python bench/multi_process.py [--config configs/tiny-cpu.toml] [--steps 12] [--warmup 2] [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.helpers import launch_cmd, train_cmd  # the commands the README gives, as the tests run them


def command(processes: int, args: list[str]) -> list[str]:
    return train_cmd("--track", "cpu", *args) if processes == 1 else launch_cmd(processes, *args)


def run(processes: int, threads: int, recipe: str, steps: int, warmup: int, out: Path) -> float:
    """One real run (`recipe` with `{grad_accum}` to fill); its median tokens/s after the warm-up."""
    side_recipe = out.with_suffix(".toml")
    side_recipe.write_text(recipe.format(grad_accum=2 // processes))  # two micro-batches per step on every side
    args = ["--config", str(side_recipe), "--max-steps", str(steps), "--output-dir", str(out),
            "--checkpoint-every", "24h"]
    proc = subprocess.run(command(processes, args), cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({processes} process(es)):\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][warmup:]
    return statistics.median(r["tokens_per_s"] for r in rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "tiny-cpu.toml"))
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    cores = os.cpu_count() or 1
    sides = {"1 process x 1 thread": (1, 1), f"1 process x {cores} threads": (1, cores),
             "2 processes x 1 thread": (2, 1)}
    results: dict[str, list[float]] = {name: [] for name in sides}
    lines = Path(args.config).read_text().splitlines()
    if "[train]" not in lines:
        raise SystemExit(f"{args.config}: the benchmark sets train.grad_accum, so the recipe needs a [train] table")
    recipe = "\n".join(line.replace("{", "{{").replace("}", "}}") for line in lines
                       if not line.strip().startswith("grad_accum"))
    recipe = recipe.replace("[train]", "[train]\ngrad_accum = {grad_accum}", 1)
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            order = list(sides) if repeat % 2 == 0 else list(reversed(sides))
            for name in order:
                processes, threads = sides[name]
                out = Path(tmp) / f"{name.replace(' ', '_')}-{repeat}"
                results[name].append(run(processes, threads, recipe, args.steps, args.warmup, out))
                print(f"  repeat {repeat + 1}: {name:24s} {results[name][-1]:8.1f} tokens/s", flush=True)
    median = {name: statistics.median(runs) for name, runs in results.items()}
    one, alone_all, two = (median[name] for name in sides)
    print(f"\nmedian non-pad tokens/s over {args.repeats} repeat(s) of {args.steps} steps "
          f"(first {args.warmup} not counted), 2 micro-batches per optimizer step on every side:")
    for name, value in median.items():
        print(f"  {name:24s} {value:8.1f} tokens/s ({value / sides[name][0]:.1f} per process)")
    print(f"scaling efficiency (2 processes / (2 x 1 process x 1 thread)): {two / (2 * one):.2f}")
    print(f"2 processes / 1 process on all {cores} threads: {two / alone_all:.2f}x")


if __name__ == "__main__":
    main()
