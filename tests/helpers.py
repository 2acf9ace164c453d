"""Helpers shared by the training tests: run `python -m train` as a real process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def train_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "train", *args]


def run_train(*args: str, env: dict | None = None, timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    """Run the training CLI to the end; returns the process and its wall time seen from outside."""
    started = time.monotonic()
    proc = subprocess.run(train_cmd(*args), cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, **(env or {})})
    return proc, time.monotonic() - started


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def write_recipe(path: Path, extra_train: str = "", extra: str = "") -> Path:
    """A small recipe on the embedded model: short rows, a constant rate, two generated tasks."""
    path.write_text(f"""
name = "test"
{extra}
[train]
max_seq_len = 128
micro_batch_size = 4
lr = 1e-3
warmup_frac = 0.0
schedule = "constant"
{extra_train}

[[data]]
kind = "generated"
name = "mc_largest"
max_examples = 200

[[data]]
kind = "generated"
name = "arith_qa"
max_examples = 200
""")
    return path


def free_port() -> int:
    """A free local port for a launcher's store (the default 29500 may be taken by another launch)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_cmd(processes: int, *args: str, config: str = "cpu-gloo.yaml", track: str = "cpu") -> list[str]:
    """`accelerate launch` of the training CLI on `processes` processes (by default CPU ones talking
    over gloo), as the README says."""
    return [str(Path(sys.executable).parent / "accelerate"), "launch",
            "--config_file", str(REPO / "configs" / "accelerate" / config),
            "--num_processes", str(processes), "--main_process_port", str(free_port()),
            "-m", "train", "--track", track, *args]
