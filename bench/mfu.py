"""Model FLOPs utilisation on this machine: the FLOP/s a training step and a serving step reach,
against the FLOP/s this machine's matrix multiply reaches, all measured in one run.

- peak: bench/gpu_figures.measured_matmul_tflops, the best fp32 square product at the same thread
  count, measured before and after the model phases (the higher is used: a machine whose load moved
  shows it as two different figures); the physical limit a model step could approach.
- training: the recipe's own step (`train.run.loop.train_step` on the recipe's batches, its model
  loaded by `train.model.load_model`: NF4 base + LoRA) over --steps steps after a warm-up step.
- serving prefill: one forward pass over --batch prompts of --context tokens, the base model as the
  server loads it by default (`core.models.load_trained`, quantization auto: fp32 weights here).
- serving decode: one new token for each of the --batch rows, each with --context tokens of KV cache.

Model FLOPs are bench/gpu_figures' (the rule gpu_check uses): per trained token 4*N_base + 6*N_lora
+ 3*attention (forward, and the backward's activation gradients through the frozen 4-bit base; no
recompute counted), per served token 2*N_base + attention; N_base the weights of every matmul (the
tied LM head included), attention over the keys each token attends to. NF4 dequantization is not
counted: it is work the hardware does that the model does not need.

    python bench/mfu.py [--config configs/smollm2-cpu.toml] [--steps 4] [--batch 8] [--context 256]
                        [--threads N] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gpu_figures import (  # bench/ is on sys.path
    attention_flops,
    base_params,
    flops_per_token,
    measured_matmul_tflops,
)

from core.models import compute_dtype, load_base_config, load_tokenizer, load_trained
from train.data.pipeline import make_batches
from train.model import load_model, make_optimizer
from train.recipe import load_recipe
from train.run.loop import autocast_dtype, train_step


def time_training(recipe, dims: dict, steps: int) -> dict:
    tokenizer = load_tokenizer(recipe.model.base)
    model = load_model(recipe)
    optimizer = make_optimizer(recipe, model)
    lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    t = recipe.train
    batches = make_batches(recipe, tokenizer)
    # FLOPs per token from the examples as the rows hold them (a packed row's examples attend within themselves).
    flops = flops_per_token(dims, lora, [e for row in batches.rows for e in row])
    stream = batches.from_position(0)
    autocast = autocast_dtype(recipe)
    model.train()
    tokens, seconds = 0, 0.0
    for step in range(steps + 1):
        micro = [next(stream) for _ in range(t.grad_accum)]
        count = sum(int(b.pop("num_tokens")) for b in micro)
        started = time.perf_counter()
        train_step(model, optimizer, micro, t.lr, t.max_grad_norm, autocast)
        if step:  # the first step warms up
            tokens += count
            seconds += time.perf_counter() - started
    return {**flops, "steps": steps, "tokens": tokens, "seconds": seconds,
            "flops_per_s": tokens * flops["model_flops_per_token"] / seconds}


@torch.inference_mode()
def time_serving(model_id: str, dims: dict, batch: int, context: int, repeats: int = 3) -> dict:
    model, _, quant = load_trained(model_id, None, "auto", "sdpa")
    ids = torch.randint(100, dims["vocab_size"] - 100, (batch, context))
    prefill, decode = [], []
    for _ in range(repeats + 1):  # the first round warms up
        started = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        prefill.append(time.perf_counter() - started)
        started = time.perf_counter()
        model(input_ids=out.logits[:, -1:].argmax(-1), past_key_values=out.past_key_values, use_cache=True)
        decode.append(time.perf_counter() - started)
    base = base_params(dims)
    prefill_flops = batch * context * (2 * base + attention_flops(dims, (context + 1) / 2))
    decode_flops = batch * (2 * base + attention_flops(dims, context + 1))
    return {"quantization": quant, "batch": batch, "context": context,
            "prefill_seconds": min(prefill[1:]), "prefill_flops_per_s": prefill_flops / min(prefill[1:]),
            "decode_seconds": min(decode[1:]), "decode_flops_per_s": decode_flops / min(decode[1:])}


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
    dims = load_base_config(recipe.model.base).to_dict()
    dtype = compute_dtype("auto")
    peak_before = measured_matmul_tflops(dtype) * 1e12
    training = time_training(recipe, dims, args.steps)
    serving = time_serving(recipe.model.base, dims, args.batch, args.context)
    peak_after = measured_matmul_tflops(dtype) * 1e12
    peak = max(peak_before, peak_after)
    figures = {"model": recipe.model.base, "threads": torch.get_num_threads(), "matmul_dtype": str(dtype),
               "peak_before": peak_before, "peak_after": peak_after, "training": training, "serving": serving}
    print(f"{recipe.model.base}, {torch.get_num_threads()} thread(s); model FLOPs as bench/gpu_figures counts them")
    print(f"  matmul peak ({dtype})  {peak_before / 1e9:8.1f} GFLOP/s before, {peak_after / 1e9:.1f} after")
    for name, rate in ((f"training step ({recipe.name}: NF4 + LoRA, {training['tokens']} tokens)", training["flops_per_s"]),
                       (f"serving prefill {args.batch} x {args.context} tokens", serving["prefill_flops_per_s"]),
                       (f"serving decode {args.batch} rows at {args.context}", serving["decode_flops_per_s"])):
        print(f"  {name:54s} {rate / 1e9:8.1f} GFLOP/s   MFU {rate / peak:6.1%}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
