"""Checkpoints and the published adapter, both written aside and then renamed into place.

`checkpoints/step-NNNNNNN/` holds the adapter, optimizer state, data position and RNG state; a
checkpoint being written lives under a `.tmp-` name, so an interrupted write never replaces the last
good one. `adapter/` at the top of the run folder is always a complete adapter (the last checkpoint's,
then the final one), swapped in by two renames under a lock the hard stop also takes.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import threading
from pathlib import Path

import numpy as np
import torch

KEEP_CHECKPOINTS = 2
publish_lock = threading.Lock()


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = run_dir / "checkpoints"
    return sorted(p for p in root.glob("step-*") if p.is_dir()) if root.is_dir() else []


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, model, optimizer, state: dict) -> Path:
    """Write a checkpoint aside, rename it into place, publish its adapter, prune old ones."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state['step']:07d}"
    tmp = root / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp / "adapter")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    publish_adapter(run_dir, final / "adapter", link=True)
    for old in checkpoint_dirs(run_dir)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(checkpoint: Path, model, optimizer) -> dict:
    """Restore adapter weights, optimizer and RNG state; return the saved loop state."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(checkpoint / "adapter" / "adapter_model.safetensors")
    set_peft_model_state_dict(model, weights)
    optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=False))
    set_rng_state(torch.load(checkpoint / "rng.pt", weights_only=False))
    return json.loads((checkpoint / "state.json").read_text())


def publish_adapter(run_dir: Path, source: Path, link: bool = False) -> None:
    """Make `run_dir/adapter` a copy of `source` (hard links when `link`: instant, no extra space)."""
    staging = run_dir / "adapter.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging, copy_function=os.link if link else shutil.copy2)
    _swap_in(run_dir, staging)


def save_final_adapter(run_dir: Path, model) -> None:
    staging = run_dir / "adapter.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    _swap_in(run_dir, staging)


def _swap_in(run_dir: Path, staging: Path) -> None:
    current, old = run_dir / "adapter", run_dir / "adapter.old"
    with publish_lock:
        shutil.rmtree(old, ignore_errors=True)
        if current.exists():
            current.rename(old)
        staging.rename(current)
    shutil.rmtree(old, ignore_errors=True)


def recover_adapter(run_dir: Path) -> None:
    """After a crash between the two renames of a swap, put the previous adapter back."""
    current, old = run_dir / "adapter", run_dir / "adapter.old"
    if not current.exists() and old.exists():
        old.rename(current)
