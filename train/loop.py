"""The training loop: optimizer steps until the budget, a step limit or an epoch limit ends it."""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from train.packing import Batches
from train.recipe import Recipe
from train.schedule import lr_factor


@dataclass
class LoopState:
    step: int = 0  # optimizer steps done
    position: int = 0  # micro-batches consumed (the data position for resume)
    tokens: int = 0  # non-pad tokens trained on
    loss: float = float("nan")


def train_step(model, optimizer, micro_batches: list[dict[str, torch.Tensor]], lr: float,
               max_grad_norm: float) -> float:
    """One optimizer step over gradient-accumulated micro-batches; returns the mean loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    device = next(p.device for p in model.parameters() if p.requires_grad)
    total = 0.0
    for batch in micro_batches:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
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
    hang_at = int(os.environ.get("HARNESS_TEST_HANG_AT_STEP", "0"))  # test hook: a step that never ends
    model.train()
    stream = batches.from_position(state.position)
    while True:
        if should_stop():
            return "stop_requested"
        if limit is not None and state.step >= limit:
            return "max_steps" if limit == t.max_steps else "epochs"
        step_progress = state.step / limit if limit and (t.schedule_clock == "steps" or t.epochs) else 0.0
        progress = step_progress if t.schedule_clock == "steps" else max(time_progress(), step_progress)
        lr = t.lr * lr_factor(progress, t.warmup_frac, t.min_lr_ratio, t.schedule)
        started = time.monotonic()
        micro = [next(stream) for _ in range(t.grad_accum)]
        tokens = sum(int(b.pop("num_tokens")) for b in micro)
        if hang_at and state.step + 1 == hang_at:
            time.sleep(10**6)
        state.loss = train_step(model, optimizer, micro, lr, t.max_grad_norm)
        seconds = time.monotonic() - started
        state.step += 1
        state.position += t.grad_accum
        state.tokens += tokens
        on_step(state, lr, seconds, tokens / seconds)
