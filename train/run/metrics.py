"""Per-step metrics: metrics.jsonl in the run folder, a progress bar, and optional TensorBoard / W&B."""
from __future__ import annotations

import importlib.util
import json
import os
import resource
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from train.recipe import Recipe
from train.run.durable import write_atomic


def peak_memory_mib() -> float:
    """Peak CUDA memory allocated, or this process's peak resident memory on the CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def keep_steps_up_to(path: Path, last_step: int) -> None:
    """Drop the rows of steps after `last_step` (a resumed run trains them again and logs them anew),
    and a row torn by a kill."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row["step"] <= last_step:
            kept.append(line + "\n")
    write_atomic(path, "".join(kept))


class MetricsLog:
    def __init__(self, run_dir: Path, recipe: Recipe, window_s: float, resumed_step: int = 0) -> None:
        path = run_dir / "metrics.jsonl"
        keep_steps_up_to(path, resumed_step)
        self.file = path.open("a", encoding="utf-8")
        self.write_error: int | None = None  # the errno last reported
        self.every = recipe.log.every_steps
        self.bar = tqdm(total=round(window_s), unit="s", file=sys.stderr, dynamic_ncols=True,
                        bar_format="train {percentage:3.0f}%|{bar}| {desc}")
        self.sinks = []
        if recipe.log.tensorboard:
            self._add_tensorboard(run_dir)
        if recipe.log.wandb:
            self._add_wandb(run_dir, recipe)

    def _add_tensorboard(self, run_dir: Path) -> None:
        if importlib.util.find_spec("tensorboard") is None:
            print("log.tensorboard: tensorboard is not installed (pip install '.[logging]'); skipping",
                  file=sys.stderr)
            return
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tensorboard"))
        self.sinks.append(lambda row: [writer.add_scalar(k, v, row["step"]) for k, v in row.items()
                                       if k != "step" and isinstance(v, (int, float))])

    def _add_wandb(self, run_dir: Path, recipe: Recipe) -> None:
        if importlib.util.find_spec("wandb") is None:
            print("log.wandb: wandb is not installed (pip install '.[logging]'); skipping", file=sys.stderr)
            return
        import wandb

        os.environ.setdefault("WANDB_MODE", "online" if os.environ.get("WANDB_API_KEY") else "offline")
        run = wandb.init(project=recipe.log.wandb_project, name=run_dir.name, dir=str(run_dir))
        self.sinks.append(lambda row: run.log(row, step=row["step"]))

    def log(self, row: dict, used_s: float, left_s: float) -> None:
        self.bar.n = min(round(used_s), self.bar.total)
        self.bar.set_description_str(
            f"step {row['step']} loss {row['loss']:.4f} {row['tokens_per_s']:.0f} tok/s {left_s:.0f}s left")
        if row["step"] % self.every:
            return
        try:
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()
        except OSError as error:  # a full disk loses metrics rows, never the run
            if error.errno != self.write_error:
                self.write_error = error.errno
                print(f"\nwarning     could not write metrics.jsonl: {error}", file=sys.stderr, flush=True)
        for sink in self.sinks:
            sink(row)

    def close(self) -> None:
        self.bar.close()
        try:
            self.file.close()
        except OSError:  # the rows it could not write were reported already
            pass
