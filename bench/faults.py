"""Fault injection on real training runs: does the deadline hold, and is nothing lost?

    python bench/faults.py [--runs 10] [--budget 40s] [--faults kill9,damaged,signal,ledger,removed,hang]

Each run is a real `python -m train --budget B` process on the embedded tiny model (a small recipe: two
generated tasks, 400 examples, so data preparation takes about a second; checkpoints every 3 s) that
gets one fault at a random moment, drawn uniformly from the window named below:

  kill9    kill -9 between the run folder's creation and B/2, then `--resume`
  damaged  kill -9 once two checkpoints exist (up to B/2), the newest checkpoint damaged (one of its
           files cut to half its length, the file chosen in turn), then `--resume`
  signal   SIGTERM between the run folder's creation and B/2, then `--resume`
  ledger   ledger.json replaced by a folder (every later ledger write raises) between the first
           published adapter (training is about to begin) and B-3 s
  removed  the whole run folder removed (rm -rf) between the first published adapter and B-3 s
  hang     from a moment between the first published adapter and B-3 s on, every os.replace and
           os.rename of the process hangs for good (a filesystem that stopped answering; injected by
           a sitecustomize.py on the child's PYTHONPATH, tests/helpers.hanging_renames, not by the harness)

A run whose window never opened (on a starved machine, interpreter start and imports alone can take
most of the budget) gets no fault; it is counted apart ("not reached") and left out of the columns.

The resumes start by B/2 so that they have time to start (a resume with less time left than starting
took is refused, exit 3, and the run's adapter stands; a refusal counts as "resume continued" failed).

Columns (each "all" when every run passed, else how many did):
  deadline held    every process ended inside the budget, seen from outside: the wall time of all its
                   attempts together <= B, plus 1 s per kill -9 (the ledger is written once a second,
                   so a kill loses up to that much of its record)
  adapter loadable run/adapter loads with PeftModel.from_pretrained as the fault left it (before any
                   --resume, which publishes a checkpoint's adapter again) and at the end
  resume continued the resumed attempt started from the newest checkpoint that was complete (and, for
                   `damaged`, undamaged) when the fault hit, and ended the run normally
  results lost     runs where a step's metrics row is missing or repeated, the summary's step count is
                   below that checkpoint, or the adapter is not loadable ("none" is the goal)
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.rules import parse_duration
from tests.helpers import hanging_renames

KILL_SLACK_S = 1.0  # the ledger's write interval: what a kill -9 may take from the record
RECIPE = """name = "faults"
[train]
max_seq_len = 128
micro_batch_size = 4
lr = 1e-3
[[data]]
kind = "generated"
name = "mc_largest"
max_examples = 200
[[data]]
kind = "generated"
name = "arith_qa"
max_examples = 200
"""


@dataclass
class Outcome:
    deadline_held: bool = False
    adapter_loadable: bool = False
    resume_continued: bool | None = None  # None: the fault has no resume
    results_lost: bool = True
    note: str = ""
    codes: list[int] = field(default_factory=list)
    reached: bool = True


class Trial:
    """One run of one fault in its own folder."""

    def __init__(self, folder: Path, budget: str, rng: random.Random, env: dict | None = None) -> None:
        self.folder, self.budget, self.rng = folder, budget, rng
        self.budget_s = parse_duration(budget)
        self.run = folder / "run"
        self.env = {**os.environ, **(env or {})}
        self.walls: list[float] = []
        self.codes: list[int] = []

    def start(self) -> None:
        recipe = self.folder / "recipe.toml"
        recipe.write_text(RECIPE)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "train", "--config", str(recipe), "--budget", self.budget, "--output-dir",
             str(self.run), "--checkpoint-every", "3s"], cwd=REPO, env=self.env, stdout=subprocess.DEVNULL,
            stderr=open(self.folder / "first.err", "w"))  # noqa: SIM115 - the child owns it

    def since_start(self) -> float:
        return time.monotonic() - self.started

    def wait_until(self, condition, latest_s: float) -> bool:
        """Poll until `condition()`; False if the run ended or `latest_s` passed first."""
        while not condition():
            if self.proc.poll() is not None or self.since_start() > latest_s:
                return False
            time.sleep(0.05)
        return True

    def sleep_random(self, latest_s: float) -> None:
        time.sleep(max(0.0, self.rng.uniform(0.0, latest_s - self.since_start())))

    def finish_first(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        try:
            self.codes.append(self.proc.wait(timeout=self.budget_s + 30))
        except subprocess.TimeoutExpired:  # far past its deadline: end it, the deadline was not held
            self.proc.kill()
            self.codes.append(self.proc.wait())
        self.walls.append(self.since_start())

    def resume(self) -> str:
        started = time.monotonic()
        try:
            proc = subprocess.run([sys.executable, "-m", "train", "--resume", str(self.run)], cwd=REPO,
                                  capture_output=True, text=True, env=self.env, timeout=self.budget_s + 30,
                                  check=False)
            code, stderr = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired as expired:  # far past its deadline
            code, stderr = -9, str(expired.stderr or "")
        self.walls.append(time.monotonic() - started)
        self.codes.append(code)
        return stderr

    def deadline_held(self, kills: int) -> bool:
        return sum(self.walls) <= self.budget_s + kills * KILL_SLACK_S

    def summary(self) -> dict | None:
        try:
            return json.loads((self.run / "summary.json").read_text())
        except (OSError, ValueError):
            return None

    def metrics_intact(self) -> bool:
        """metrics.jsonl holds steps 1..N once each, N the summary's step count."""
        s = self.summary()
        try:
            steps = [json.loads(line)["step"] for line in (self.run / "metrics.jsonl").read_text().splitlines()]
        except (OSError, ValueError):
            return False
        return s is not None and steps == list(range(1, s["steps"] + 1))


def newest_steps(run: Path) -> list[int]:
    root = run / "checkpoints"
    return sorted(int(p.name.removeprefix("step-")) for p in root.glob("step-*")) if root.is_dir() else []


def adapter_loadable(adapter: Path, base_dir: Path) -> bool:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    try:
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter)
    except Exception:  # noqa: BLE001 - any failure to load is the answer
        return False
    return any("lora_" in name for name, _ in model.named_parameters())


def published_loadable(t: Trial, base: Path) -> bool:
    """The result as the fault left it, before any --resume (which publishes a checkpoint's adapter
    again): run/adapter loads, or there is none yet (the fault struck before the first checkpoint and
    before the untrained adapter was published)."""
    adapter = t.run / "adapter"
    if not adapter.exists() and not newest_steps(t.run):
        return True
    return adapter_loadable(adapter, base)


def resumed_from(stderr: str) -> int | None:
    for line in stderr.splitlines():
        if line.startswith("resumed     from step-"):
            return int(line.split("step-")[1].split()[0])
        if line.startswith("resumed     from step 0"):
            return 0
    return None


def kill_and_resume(t: Trial, base: Path, damage: int | None = None) -> Outcome:
    """kill -9 at a random moment, optionally damage the newest checkpoint, then --resume."""
    latest = t.budget_s / 2
    ready = (lambda: len(newest_steps(t.run)) >= 2) if damage is not None else (lambda: (t.run / "recipe.toml").exists())
    if not t.wait_until(ready, latest):
        t.finish_first(kill=True)
        return Outcome(note="the fault's window never opened", codes=t.codes, reached=False)
    t.sleep_random(latest)
    t.finish_first(kill=True)
    steps = newest_steps(t.run)
    note = ""
    if damage is not None:
        newest = t.run / "checkpoints" / f"step-{steps[-1]:07d}"
        victim = newest / ["adapter/adapter_model.safetensors", "optimizer.pt", "rng.pt", "state.json"][damage % 4]
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
        note = f"cut {victim.relative_to(newest)}"
        steps = steps[:-1]
    expected = steps[-1] if steps else 0
    published = published_loadable(t, base)
    stderr = t.resume()
    s = t.summary()
    continued = resumed_from(stderr) == expected and t.codes[-1] == 0
    return Outcome(deadline_held=t.deadline_held(kills=1),
                   adapter_loadable=published and adapter_loadable(t.run / "adapter", base),
                   resume_continued=continued, codes=t.codes, note=note or f"killed at step {expected}+",
                   results_lost=not (t.metrics_intact() and s is not None and s["steps"] >= expected))


def signal_and_resume(t: Trial, base: Path) -> Outcome:
    latest = t.budget_s / 2
    if not t.wait_until(lambda: (t.run / "recipe.toml").exists(), latest):
        t.finish_first(kill=True)
        return Outcome(note="the fault's window never opened", codes=t.codes, reached=False)
    t.sleep_random(latest)
    t.proc.send_signal(signal.SIGTERM)
    t.finish_first()
    first = t.summary()
    expected = first["steps"] if first and t.codes[0] == 4 else 0  # 6: signalled before training
    published = published_loadable(t, base)
    stderr = t.resume()
    s = t.summary()
    return Outcome(deadline_held=t.deadline_held(kills=0),
                   adapter_loadable=published and adapter_loadable(t.run / "adapter", base),
                   resume_continued=resumed_from(stderr) == expected and t.codes[-1] == 0, codes=t.codes,
                   results_lost=not (t.metrics_intact() and s is not None and s["steps"] >= expected),
                   note=f"signalled at step {expected}")


def during_run(t: Trial, base: Path, inject) -> Outcome:
    """A fault injected once, at a random moment; the run must still end inside its budget."""
    latest = t.budget_s - 3.0
    if not t.wait_until(lambda: (t.run / "adapter").exists(), latest):
        t.finish_first(kill=True)
        return Outcome(note="the fault's window never opened", codes=t.codes, reached=False)
    t.sleep_random(latest)
    at = t.since_start()
    if t.proc.poll() is not None:  # the run ended first: the fault would strike nothing
        t.finish_first()
        return Outcome(note="the run ended before the fault's moment", codes=t.codes, reached=False)
    inject()
    t.finish_first()
    loadable = adapter_loadable(t.run / "adapter", base)
    return Outcome(deadline_held=t.deadline_held(kills=0), adapter_loadable=loadable, codes=t.codes,
                   results_lost=not loadable, note=f"at {at:.1f}s")


def ledger_to_folder(run: Path) -> None:
    ledger = run / "ledger.json"
    while not ledger.is_dir():
        ledger.unlink(missing_ok=True)
        try:
            ledger.mkdir()
        except FileExistsError:
            continue
        except FileNotFoundError:
            return  # the run folder is not there: nothing to break


def one(fault: str, i: int, folder: Path, budget: str, rng: random.Random, base: Path) -> Outcome:
    if fault == "hang":
        trigger = folder / "hang-now"
        t = Trial(folder, budget, rng, env=hanging_renames(folder / "hook", trigger))
        t.start()
        return during_run(t, base, trigger.touch)
    t = Trial(folder, budget, rng)
    t.start()
    if fault == "kill9":
        return kill_and_resume(t, base)
    if fault == "damaged":
        return kill_and_resume(t, base, damage=i)
    if fault == "signal":
        return signal_and_resume(t, base)
    if fault == "ledger":
        return during_run(t, base, lambda: ledger_to_folder(t.run))
    if fault == "removed":
        return during_run(t, base, lambda: shutil.rmtree(t.run, ignore_errors=True))
    raise ValueError(f"unknown fault {fault!r}")


def cell(values: list[bool | None]) -> str:
    counted = [v for v in values if v is not None]
    if not counted:
        return "n/a" if values else "-"
    passed = sum(counted)
    return "all" if passed == len(counted) else f"{passed}/{len(counted)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--budget", default="40s")
    parser.add_argument("--faults", default="kill9,damaged,signal,ledger,removed,hang")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", help="keep every run folder under this folder (default: removed)")
    args = parser.parse_args()
    from core.tiny import tiny_model_path

    base = tiny_model_path()
    rng = random.Random(args.seed)
    rows = []
    started = time.monotonic()
    for fault in args.faults.split(","):
        outcomes = []
        for i in range(args.runs):
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp)
                outcome = one(fault, i, folder, args.budget, rng, base)
                if args.keep:
                    shutil.copytree(folder, Path(args.keep) / f"{fault}-{i + 1}", symlinks=True)
            outcomes.append(outcome)
            print(f"{fault:>8} {i + 1:>2}: exits {outcome.codes}, deadline {outcome.deadline_held}, adapter "
                  f"{outcome.adapter_loadable}, resume {outcome.resume_continued}, lost {outcome.results_lost}; "
                  f"{outcome.note}", flush=True)
        faulted = [o for o in outcomes if o.reached]
        lost = sum(o.results_lost for o in faulted)
        rows.append((fault, len(faulted), cell([o.deadline_held for o in faulted]),
                     cell([o.adapter_loadable for o in faulted]), cell([o.resume_continued for o in faulted]),
                     "none" if lost == 0 else f"{lost}/{len(faulted)}", len(outcomes) - len(faulted)))
        print("row: | " + " | ".join(str(v) for v in rows[-1]) + " |", flush=True)
    print(f"\nbudget {args.budget}, {args.runs} runs per fault, seed {args.seed}, "
          f"{(time.monotonic() - started) / 60:.0f} min\n")
    print("| fault | runs | deadline held | adapter loadable | resume continued | results lost | not reached |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(v) for v in row) + " |")


if __name__ == "__main__":
    main()
