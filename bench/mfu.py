"""Model FLOPs utilisation on this machine: the FLOP/s a training step and a serving step reach,
against the FLOP/s this machine's matrix multiply reaches, all measured in one run.

- peak: the best of `torch.mm` on square fp32 matrices (1024, 2048, 3072) at the same thread count;
  the physical limit a model step could approach, measured, not a datasheet figure.
- training: the recipe's own step (`train.run.loop.train_step` on the recipe's batches, its model
  loaded by `train.model.load_model`: NF4 base + LoRA) timed over --steps steps after a warm-up.
- serving prefill: a forward pass over --batch prompts of --context tokens, the base model as the
  server loads it (`core.models.load_trained`, no adapter, fp32 weights).
- serving decode: one new token for each of --batch rows, each row with a KV cache of --context tokens.

Model FLOPs are the work the maths needs, not what the hardware executes: 2 FLOPs per weight of every
matrix multiply (the tied LM head included, the embedding lookup not) per token forward; training adds
the backward's activation gradients, 2 per weight per token (the 4-bit base is frozen: its weight
gradients are never computed; LoRA's are counted, a small term); attention's score and value
products counted for the causal half; NF4 dequantization and any recompute (gradient checkpointing)
not counted. So training MFU = model FLOPs / (step time x peak).

    python bench/mfu.py [--config configs/smollm2-cpu.toml] [--steps 4] [--batch 8] [--context 256]
                        [--threads N] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core.models import load_tokenizer, load_trained
from train.data.pipeline import make_batches
from train.model import load_model, make_optimizer
from train.recipe import load_recipe
from train.run.loop import autocast_dtype, train_step


def matmul_peak(repeats: int = 5) -> dict:
    """Best fp32 FLOP/s of torch.mm over a few square sizes."""
    best = {}
    for n in (1024, 2048, 3072):
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)  # warm-up: thread pool, caches
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - started)
        best[n] = 2 * n**3 / min(times)
    return {"flops_by_size": best, "peak": max(best.values())}


def shape(model) -> dict:
    """Weights of every matrix multiply (LoRA's apart), layers and hidden size."""
    frozen = lora = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):  # bitsandbytes' Linear4bit is one; peft's wrappers hold one
            count = module.in_features * module.out_features
            if "lora_" in name:
                lora += count
            elif not any(child for child in module.children() if isinstance(child, torch.nn.Linear)):
                frozen += count
    config = model.config
    return {"matmul_weights": frozen, "lora_weights": lora, "layers": config.num_hidden_layers,
            "hidden": config.hidden_size}


def attention_flops(s: dict, query_tokens: int, attended: float) -> float:
    """Scores and values: 2 products of 2 FLOPs per query token, attended position and hidden unit."""
    return 4 * s["layers"] * s["hidden"] * query_tokens * attended


def time_training(recipe, steps: int) -> dict:
    model = load_model(recipe)
    optimizer = make_optimizer(recipe, model)
    s = shape(model)
    t = recipe.train
    stream = make_batches(recipe, load_tokenizer(recipe.model.base)).from_position(0)
    autocast = autocast_dtype(recipe)
    model.train()
    flops, seconds = [], []
    for step in range(steps + 1):
        micro = [next(stream) for _ in range(t.grad_accum)]
        tokens = sum(int(b.pop("num_tokens")) for b in micro)
        # A packed row's examples attend within themselves; its row length bounds what any token attends.
        attended = statistics.fmean(b["input_ids"].shape[1] for b in micro) / 2
        started = time.perf_counter()
        train_step(model, optimizer, micro, t.lr, t.max_grad_norm, autocast)
        if step:  # the first step warms up
            seconds.append(time.perf_counter() - started)
            forward = 2 * (s["matmul_weights"] + s["lora_weights"]) * tokens + attention_flops(s, tokens, attended)
            backward = 2 * s["matmul_weights"] * tokens + 4 * s["lora_weights"] * tokens + 2 * attention_flops(s, tokens, attended)
            flops.append(forward + backward)
    return {"shape": s, "steps": steps, "seconds": sum(seconds), "flops": sum(flops),
            "flops_per_s": sum(flops) / sum(seconds)}


@torch.inference_mode()
def time_serving(model_id: str, batch: int, context: int, repeats: int = 3) -> dict:
    model, _, _ = load_trained(model_id, None, "auto", "sdpa")  # the server's default: the compute dtype
    s = shape(model)
    ids = torch.randint(100, model.config.vocab_size - 100, (batch, context))
    prefill, decode = [], []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        prefill.append(time.perf_counter() - started)
        nxt = out.logits[:, -1:].argmax(-1)
        started = time.perf_counter()
        model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
        decode.append(time.perf_counter() - started)
    prefill_flops = 2 * s["matmul_weights"] * batch * context + attention_flops(s, batch * context, context / 2)
    decode_flops = 2 * s["matmul_weights"] * batch + attention_flops(s, batch, context)
    best_prefill, best_decode = min(prefill[1:]), min(decode[1:])  # the first call warms up
    return {"shape": s, "batch": batch, "context": context,
            "prefill_seconds": best_prefill, "prefill_flops_per_s": prefill_flops / best_prefill,
            "decode_seconds": best_decode, "decode_flops_per_s": decode_flops / best_decode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/smollm2-cpu.toml", help="the training recipe (its model is served too)")
    parser.add_argument("--steps", type=int, default=4, help="timed training steps after one warm-up")
    parser.add_argument("--batch", type=int, default=8, help="serving: rows per forward pass")
    parser.add_argument("--context", type=int, default=256, help="serving: prompt tokens per row")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if min(args.steps, args.batch, args.context) < 1 or args.threads < 0:
        parser.error("--steps, --batch and --context must be at least 1, --threads not negative")
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = load_recipe(args.config)
    peak = matmul_peak()
    training = time_training(recipe, args.steps)
    serving = time_serving(recipe.model.base, args.batch, args.context)
    peak_after = matmul_peak()  # again at the end: a machine whose load moved shows it here
    figures = {"threads": torch.get_num_threads(), "model": recipe.model.base, "peak_before": peak,
               "peak_after": peak_after, "training": training, "serving": serving}
    top = max(peak["peak"], peak_after["peak"])
    print(f"{recipe.model.base} on {torch.get_num_threads()} thread(s); model FLOPs as the docstring counts them")
    print(f"  matmul peak (fp32 torch.mm)  {peak['peak'] / 1e9:8.1f} GFLOP/s before, {peak_after['peak'] / 1e9:.1f} after")
    for name, flops in (("training step (NF4 + LoRA)", training["flops_per_s"]),
                        (f"serving prefill {args.batch}x{args.context}", serving["prefill_flops_per_s"]),
                        (f"serving decode {args.batch} rows", serving["decode_flops_per_s"])):
        print(f"  {name:28s} {flops / 1e9:8.1f} GFLOP/s  MFU {flops / top:6.1%}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
