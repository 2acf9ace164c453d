"""Deadline overshoot and training share of budgeted runs of the embedded default.

    python bench/budget_runs.py [--budgets 60s,120s] [--runs 5]

Each run is a real `python -m train --budget B` process. Overshoot is measured twice: from the run's
own ledger (clock from process start) and from outside (this script's wall clock around the
process, which also counts interpreter start before the ledger's first reading). The training share
is the time inside optimizer steps over the budget; the rest are fixed costs (interpreter start and
imports, model load + quantization, data preparation, the untrained adapter's first save, the final
save) and the stop lead (margin + slowest recent step + 1.5 x the measured save cost).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.rules import parse_duration


def one_run(budget: str, folder: Path) -> dict:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "train", "--config", "configs/tiny-cpu.toml", "--budget", budget, "--output-dir", str(folder)],
                          cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    summary = json.loads((folder / "summary.json").read_text())
    return {"exit": proc.returncode, "wall_s": wall, **summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="60s,120s")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"{'budget':>7} {'run':>3} {'exit':>4} {'stop':>10} {'ledger used':>11} {'outside wall':>12} "
          f"{'overshoot':>9} {'train share':>11}  phases")
    for budget in args.budgets.split(","):
        limit = parse_duration(budget)
        shares, overshoots = [], []
        for i in range(args.runs):
            with tempfile.TemporaryDirectory() as tmp:
                r = one_run(budget, Path(tmp) / "run")
            overshoot = max(0.0, r["used_s"] - limit, r["wall_s"] - limit)
            shares.append(r["train_share"])
            overshoots.append(overshoot)
            phases = ", ".join(f"{k} {v:.1f}" for k, v in r["phases_s"].items())
            print(f"{budget:>7} {i + 1:>3} {r['exit']:>4} {r['stop_reason']:>10} {r['used_s']:>10.1f}s "
                  f"{r['wall_s']:>11.1f}s {overshoot:>8.2f}s {r['train_share']:>10.1%}  {phases}", flush=True)
        print(f"{budget:>7} max overshoot {max(overshoots):.2f}s; train share mean {statistics.mean(shares):.1%}, "
              f"min {min(shares):.1%}", flush=True)


if __name__ == "__main__":
    main()
