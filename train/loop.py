"""The training loop: optimizer steps until the budget, a step limit or an epoch limit ends it.

Precision follows `Trainer(bf16=True)`: the forward pass runs under bf16 autocast, so the matmuls of
the LoRA layers, attention and lm_head (which prepare_model_for_kbit_training leaves in fp32) run in
bf16, while norms, the residual stream, weights, gradients and the optimizer stay fp32; the fp32
matmuls left may use TF32 on CUDA.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from train.model import compute_dtype
from train.packing import Batches, flatten
from train.recipe import Recipe, RecipeError
from train.schedule import lr_factor


@dataclass
class LoopState:
    step: int = 0  # optimizer steps done
    position: int = 0  # micro-batches consumed (the data position for resume)
    tokens: int = 0  # non-pad tokens trained on
    loss: float = float("nan")


def autocast_dtype(recipe: Recipe) -> torch.dtype | None:
    """The autocast dtype of the forward pass, None for none: `auto` is bf16 on a CUDA device when
    the model computes in bf16; `bf16` asks for it on the CPU too (fast where the CPU has AMX)."""
    setting = recipe.train.autocast
    if setting == "off":
        return None
    if setting == "bf16":
        if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            raise RecipeError("train.autocast = 'bf16': this CUDA device does not compute in bf16")
        return torch.bfloat16
    on_bf16_cuda = torch.cuda.is_available() and compute_dtype(recipe.model.compute_dtype) == torch.bfloat16
    return torch.bfloat16 if on_bf16_cuda else None


def enable_tf32() -> None:
    """TF32 for the fp32 matmuls left outside autocast, where the GPU has it (Ampere and later)."""
    from transformers.utils import is_torch_tf32_available
    from transformers.utils.import_utils import enable_tf32 as enable

    if is_torch_tf32_available():
        enable(True)


def train_step(model, optimizer, micro_batches: list[dict[str, torch.Tensor]], lr: float,
               max_grad_norm: float, autocast: torch.dtype | None = None) -> float:
    """One optimizer step over gradient-accumulated micro-batches; returns the mean loss.

    Under flash-attention a packed micro-batch is flattened into one row (train.packing.flatten),
    the only layout in which its examples stay apart."""
    from transformers.utils.generic import is_flash_attention_requested

    for group in optimizer.param_groups:
        group["lr"] = lr
    device = next(p.device for p in model.parameters() if p.requires_grad)
    flat = is_flash_attention_requested(model.config)
    total = 0.0
    for batch in micro_batches:
        if flat and "position_ids" in batch:
            batch = flatten(batch)
        batch = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        with torch.autocast(device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            loss = model(**batch, use_cache=False).loss / len(micro_batches)
        loss.backward()
        total += loss.item()
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


def step_limit(recipe: Recipe, batches: Batches) -> int | None:
    """The earlier of max_steps and the steps that make `epochs` epochs (None: time alone ends it)."""
    t = recipe.train
    limits = [t.max_steps] if t.max_steps else []
    if t.epochs:
        limits.append(max(1, round(t.epochs * batches.per_epoch / t.grad_accum)))
    return min(limits) if limits else None


def run_loop(recipe: Recipe, model, optimizer, batches: Batches, state: LoopState, *,
             should_stop: Callable[[], bool], time_progress: Callable[[], float],
             on_step: Callable[[LoopState, float, float, float], None]) -> str:
    """Train until stopped; returns why it stopped ("max_steps", "epochs" or "stop_requested").

    The learning rate follows the schedule over progress = the larger of the time budget's share
    used and the step limit's share done, so whichever limit ends the run ends at the floor.
    `on_step(state, lr, step_seconds, tokens_per_second)` runs after every step (metrics, checkpoints).
    """
    t = recipe.train
    limit = step_limit(recipe, batches)
    autocast = autocast_dtype(recipe)
    enable_tf32()
    hang_at = int(os.environ.get("HARNESS_TEST_HANG_AT_STEP", "0"))  # test hook: a step that never ends
    model.train()
    stream = batches.from_position(state.position)
    while True:
        if should_stop():
            return "stop_requested"
        if limit is not None and state.step >= limit:
            return "max_steps" if limit == t.max_steps else "epochs"
        step_progress = state.step / limit if limit else 0.0
        progress = step_progress if t.schedule_clock == "steps" else max(time_progress(), step_progress)
        lr = t.lr * lr_factor(progress, t.warmup_frac, t.min_lr_ratio, t.schedule)
        started = time.monotonic()
        micro = [next(stream) for _ in range(t.grad_accum)]
        tokens = sum(int(b.pop("num_tokens")) for b in micro)
        if hang_at and state.step + 1 == hang_at:
            time.sleep(10**6)
        state.loss = train_step(model, optimizer, micro, lr, t.max_grad_norm, autocast)
        seconds = time.monotonic() - started
        state.step += 1
        state.position += t.grad_accum
        state.tokens += tokens
        on_step(state, lr, seconds, tokens / seconds)
