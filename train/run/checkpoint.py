"""Checkpoints and the published adapter, both written aside and then renamed into place.

`checkpoints/step-NNNNNNN/` holds the adapter, optimizer state, data position and RNG state; a
checkpoint being written lives under a `.tmp-` name and is fsynced before it is renamed into place,
so neither an interrupted write nor a power loss leaves a "complete" checkpoint that is not. Resume
takes the newest checkpoint that loads and falls back to the older one kept. `adapter/` at the top of
the run folder is always a complete adapter (a copy of the last checkpoint's, then the final one),
swapped in by two renames under a lock the hard stop also takes.
"""
from __future__ import annotations

import json
import random
import shutil
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.models import save_adapter
from train.run.durable import fsync_dir, fsync_tree

KEEP_CHECKPOINTS = 2
PROMPT_ENCODER = "prompt_encoder.safetensors"  # in a checkpoint of a virtual-token method
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


def save_checkpoint(run_dir: Path, model, optimizer_state: dict, state: dict, weights: dict | None = None) -> Path:
    """Write a checkpoint aside, rename it into place, publish its adapter, prune old ones.
    `weights`: the full model state dict where `model` holds a shard (train.run.ranks.Team.gather_state)."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state['step']:07d}"
    tmp = root / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_adapter(model, tmp / "adapter", weights)
    save_prompt_encoder(model, tmp)
    torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    fsync_tree(tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    fsync_dir(root)
    publish_adapter(run_dir, final / "adapter")
    for old in checkpoint_dirs(run_dir)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


@dataclass
class Saved:
    """A checkpoint's files, all read: restoring starts only once nothing can fail to read."""
    path: Path
    weights: dict  # the adapter's, as peft saves them
    optimizer: dict
    rng: dict
    state: dict  # the training loop's (step, data position, tokens, loss, micro-batches per step)
    encoder: dict | None = None  # a virtual-token method's trainable state (PROMPT_ENCODER)


def read_checkpoint(checkpoint: Path) -> Saved:
    from safetensors.torch import load_file

    weights = load_file(checkpoint / "adapter" / "adapter_model.safetensors", device="cpu")
    # To the CPU first: as saved, tensors would go back to the device they came from (on CUDA, every
    # rank to GPU 0); place_optimizer_state puts them where this attempt keeps them.
    optimizer_state = torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=False)
    rng = torch.load(checkpoint / "rng.pt", map_location="cpu", weights_only=False)
    state = json.loads((checkpoint / "state.json").read_text())
    if state["step"] != int(checkpoint.name.removeprefix("step-")):
        raise ValueError(f"state.json says step {state['step']}")
    encoder_file = checkpoint / PROMPT_ENCODER
    encoder = load_file(encoder_file, device="cpu") if encoder_file.is_file() else None
    return Saved(checkpoint, weights, optimizer_state, rng, state, encoder)


def read_newest_checkpoint(run_dir: Path) -> Saved | None:
    """The newest checkpoint whose files all read, saying why a newer one was skipped; None if none does."""
    for checkpoint in reversed(checkpoint_dirs(run_dir)):
        try:
            return read_checkpoint(checkpoint)
        except Exception as error:  # noqa: BLE001 - truncated, missing or garbled files all mean "damaged"
            print(f"warning     checkpoint {checkpoint.name} is damaged ({type(error).__name__}: {error}); "
                  "trying the one before", file=sys.stderr, flush=True)
    return None


def resume_point(run_dir: Path) -> tuple[Path | None, int | None]:
    """(the checkpoint a resume continues: the newest whose files all read, the micro-batches per
    optimizer step it was trained with); Nones where there is none, or it does not say (checkpoints
    from before several processes were possible). Rank 0 decides it for every rank."""
    saved = read_newest_checkpoint(run_dir)
    return (saved.path, saved.state.get("micro_batches_per_step")) if saved else (None, None)


def restore_weights(model, saved: Saved) -> None:
    """The adapter's weights into the PEFT model (before any wrapper shards it); a virtual-token
    method's, its prompt encoder's."""
    from peft import set_peft_model_state_dict

    if saved.encoder is None:
        set_peft_model_state_dict(model, saved.weights)
        return
    unexpected = model.load_state_dict(saved.encoder, strict=False).unexpected_keys
    if unexpected:
        raise ValueError(f"{saved.path / PROMPT_ENCODER}: weights this model does not have: {unexpected[:3]}")


def save_prompt_encoder(model, folder: Path) -> None:
    """peft saves a virtual-token adapter as its prompt encoder's output, the form serving needs
    (P-tuning's MLP and prefix tuning's projection folded away): a checkpoint also keeps the
    trainable encoder itself, which training resumes from."""
    from safetensors.torch import save_file

    if getattr(model, "peft_config", None) and model.active_peft_config.is_prompt_learning:
        save_file({name: param.detach().cpu().contiguous() for name, param in model.named_parameters()
                   if param.requires_grad}, folder / PROMPT_ENCODER)


def place_optimizer_state(optimizer) -> None:
    """After loading saved state: each tensor where the first attempt kept it. torch's optimizers
    move state to their parameters' devices themselves; bitsandbytes' leave its moments (state1,
    state2) on the CPU they were read to, and would lose their paging: they go into the buffers
    bitsandbytes makes for them (paged, for a paged optimizer on CUDA), the rest to the device."""
    buffer = getattr(optimizer, "get_state_buffer", None)
    if buffer is None:
        return
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                continue
            if key in ("state1", "state2"):
                state[key] = buffer(param, dtype=value.dtype).copy_(value)
            else:
                state[key] = value.to(param.device)


def publish_adapter(run_dir: Path, source: Path) -> None:
    """Make `run_dir/adapter` a copy of `source`: files of its own, never links to a checkpoint's, so
    damage to either (a torn write, an edit in place) leaves the other whole."""
    staging = run_dir / "adapter.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    fsync_tree(staging)
    _swap_in(run_dir, staging)


def save_final_adapter(run_dir: Path, model, weights: dict | None = None) -> None:
    staging = run_dir / "adapter.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    save_adapter(model, staging, weights)
    fsync_tree(staging)
    _swap_in(run_dir, staging)


def _swap_in(run_dir: Path, staging: Path) -> None:
    current, old = run_dir / "adapter", run_dir / "adapter.old"
    with publish_lock:
        shutil.rmtree(old, ignore_errors=True)
        if current.exists():
            current.rename(old)
        staging.rename(current)
        fsync_dir(run_dir)
    shutil.rmtree(old, ignore_errors=True)


def recover_adapter(run_dir: Path) -> None:
    """After a crash between the two renames of a swap, put the previous adapter back."""
    current, old = run_dir / "adapter", run_dir / "adapter.old"
    if not current.exists() and old.exists():
        old.rename(current)
