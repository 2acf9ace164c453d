"""The training loop: optimizer steps until the budget, a step limit or an epoch limit ends it.

Precision follows `Trainer(bf16=True)`: the forward pass runs under bf16 autocast, so the matmuls of
the LoRA layers, attention and lm_head (which prepare_model_for_kbit_training leaves in fp32) run in
bf16, while norms, the residual stream, weights, gradients and the optimizer stay fp32; the fp32
matmuls left may use TF32 on CUDA.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from core.models import compute_dtype
from train.data.packing import Batches, flatten
from train.recipe import Recipe, RecipeError
from train.run.ranks import StepPlan, Team, per_rank_accumulation
from train.run.schedule import lr_factor


@dataclass
class LoopState:
    step: int = 0  # optimizer steps done
    position: int = 0  # micro-batches consumed (the data position for resume)
    tokens: int = 0  # non-pad tokens trained on
    loss: float = float("nan")
    micro_batches_per_step: int = 1  # of the global order, over all ranks; fixed for the whole run


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

    if is_torch_tf32_available():
        use_tf32()


def use_tf32() -> None:
    """Through the flags torch.compile and accelerate use (`allow_tf32`), not the new
    `fp32_precision` API of transformers' enable_tf32: once the new one sets cuBLAS's mode, reading
    it the legacy way (torch.get_float32_matmul_precision, which inductor calls) raises "mix of the
    legacy and new APIs", while the legacy setting reads back through either."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def train_step(model, optimizer, micro_batches: list[dict[str, torch.Tensor]], lr: float,
               max_grad_norm: float, autocast: torch.dtype | None = None, accelerator=None) -> float:
    """One optimizer step over gradient-accumulated micro-batches; returns the mean loss.

    Under flash-attention a packed micro-batch is flattened into one row (train.data.packing.flatten),
    the only layout in which its examples stay apart. With an `accelerator` (several processes) the
    wrapper averages gradients over ranks once, on the last micro-batch, and clips the averaged ones."""
    from transformers.utils.generic import is_flash_attention_requested

    for group in optimizer.param_groups:
        group["lr"] = lr
    trained = [p for p in model.parameters() if p.requires_grad]
    device = trained[0].device
    flat = is_flash_attention_requested(getattr(model, "module", model).config)  # under DDP: the model inside
    total = 0.0
    for i, batch in enumerate(micro_batches):
        if flat and "position_ids" in batch:
            batch = flatten(batch)
        batch = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        last = i == len(micro_batches) - 1
        with accelerator.no_sync(model) if accelerator and not last else nullcontext():
            with torch.autocast(device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
                loss = model(**batch, use_cache=False).loss / len(micro_batches)
            loss.backward()
        total += loss.item()
    if max_grad_norm > 0:
        if accelerator:  # all of the model's parameters: FSDP then clips by the norm over every shard
            accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        else:
            torch.nn.utils.clip_grad_norm_(trained, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


def step_limit(recipe: Recipe, batches: Batches, micro_batches_per_step: int) -> int | None:
    """The earlier of max_steps and the steps that make `epochs` epochs (None: time alone ends it)."""
    t = recipe.train
    limits = [t.max_steps] if t.max_steps else []
    if t.epochs:
        limits.append(max(1, round(t.epochs * batches.per_epoch / micro_batches_per_step)))
    return min(limits) if limits else None


def run_loop(recipe: Recipe, model, optimizer, batches: Batches, state: LoopState, team: Team, *,
             plan_step: Callable[[], StepPlan], on_step: Callable[[LoopState, float, float, float], None]) -> str:
    """Train until stopped; returns why it stopped ("max_steps", "epochs", "budget" or "signal").

    Before each step `plan_step()` says whether to stop and how much of the time budget is used;
    the learning rate follows the schedule over progress = the larger of that share and the step
    limit's share done, so whichever limit ends the run ends at the floor. Each step takes
    `state.micro_batches_per_step` micro-batches of the global order, this rank its share.
    `on_step(state, lr, step_seconds, tokens_per_second)` runs after every step (metrics, checkpoints).
    """
    t = recipe.train
    per_step = state.micro_batches_per_step
    accumulate = per_rank_accumulation(per_step, team.size)
    limit = step_limit(recipe, batches, per_step)
    autocast = autocast_dtype(recipe)
    enable_tf32()
    model.train()
    stream = batches.from_position(state.position, team.rank, team.size)
    accelerator = team.accelerator if team.distributed else None
    while True:
        plan = plan_step()
        if plan.stop:
            return plan.stop
        if limit is not None and state.step >= limit:
            return "max_steps" if limit == t.max_steps else "epochs"
        step_progress = state.step / limit if limit else 0.0
        progress = step_progress if t.schedule_clock == "steps" else max(plan.progress, step_progress)
        lr = t.lr * lr_factor(progress, t.warmup_frac, t.min_lr_ratio, t.schedule)
        started = time.monotonic()
        micro = [next(stream) for _ in range(accumulate)]
        tokens = sum(int(b.pop("num_tokens")) for b in micro)
        loss = train_step(model, optimizer, micro, lr, t.max_grad_norm, autocast, accelerator)
        state.loss, tokens = team.step_totals(loss, tokens)
        seconds = time.monotonic() - started
        state.step += 1
        state.position += per_step
        state.tokens += tokens
        on_step(state, lr, seconds, tokens / seconds)
