"""`--dry-run`: validate a recipe and print the plan (model, data, memory, speed) without downloading.

Shapes of hub models come from a small table of the base models people enter with, or from a local
folder's config; the estimates are rough and say so.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from train.recipe import Recipe
from train.tiny import EMBEDDED_ID, tiny_model_path


@dataclass(frozen=True)
class Shape:
    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int

    def proj_dims(self) -> dict[str, tuple[int, int]]:
        head = self.hidden // self.heads
        kv = head * self.kv_heads
        h, i = self.hidden, self.intermediate
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.proj_dims().values())

    def embedding_params(self) -> int:
        return 2 * self.vocab * self.hidden  # input embeddings and the untied output head


KNOWN_SHAPES = {
    "mistralai/Mistral-7B-v0.1": Shape("mistral", 4096, 14336, 32, 32, 8, 32000),
    "meta-llama/Llama-2-7b-hf": Shape("llama", 4096, 11008, 32, 32, 32, 32000),
    "meta-llama/Llama-2-13b-hf": Shape("llama", 5120, 13824, 40, 40, 40, 32000),
    "Qwen/Qwen2.5-7B": Shape("qwen2", 3584, 18944, 28, 28, 4, 152064),
    "Qwen/Qwen2.5-14B": Shape("qwen2", 5120, 13824, 48, 40, 8, 152064),
}
# Dense bf16 tensor throughput (TFLOP/s) of each track's card, for the speed estimate.
PEAK_TFLOPS = {"a100-40gb": 312.0, "rtx4090-24gb": 165.0}
ASSUMED_MFU = 0.35


def shape_of(model_id: str) -> Shape | None:
    """The architecture without downloading: the table above, or a local folder's config.json."""
    if model_id in KNOWN_SHAPES:
        return KNOWN_SHAPES[model_id]
    folder = tiny_model_path() if model_id == EMBEDDED_ID else Path(model_id)
    config_file = folder / "config.json"
    if not config_file.is_file():
        return None
    c = json.loads(config_file.read_text())
    return Shape(c["model_type"], c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"],
                 c["num_attention_heads"], c.get("num_key_value_heads") or c["num_attention_heads"],
                 c["vocab_size"])


def lora_params(shape: Shape, recipe: Recipe) -> int:
    dims = shape.proj_dims()
    return shape.layers * sum(recipe.lora.r * (a + b) for name, (a, b) in dims.items() if name in recipe.lora.targets)


def memory_estimate_gib(shape: Shape, recipe: Recipe) -> dict[str, float]:
    """Rough GPU memory: NF4 weights (~4.13 bits with double quantization), bf16 embeddings,
    fp32 LoRA weights + grads + 8-bit Adam moments, checkpointed activations, fp32 logits."""
    t = recipe.train
    bits = 4.127 if recipe.model.quantization == "nf4" else 16
    tokens = t.micro_batch_size * t.max_seq_len
    parts = {
        "base weights": shape.linear_params() * bits / 8 + shape.embedding_params() * 2,
        "LoRA + grads + optimizer": lora_params(shape, recipe) * (4 + 4 + 2),
        "activations": tokens * shape.hidden * 2 * shape.layers
        + tokens * (10 * shape.hidden + 3 * shape.intermediate) * 2,
        "logits": tokens * shape.vocab * 4 * 2,
    }
    return {k: v / 2**30 for k, v in parts.items()}


def describe(recipe: Recipe, track_name: str, budget_s: float) -> str:
    """The plan as text."""
    m, t = recipe.model, recipe.train
    lines = [
        f"recipe      {recipe.name} ({recipe.source_file})",
        (f"model       {m.base} (quantization {m.quantization}, double quant {m.double_quant}, "
         f"compute {m.compute_dtype}, attention {m.attention})"),
        (f"lora        r={recipe.lora.r} alpha={recipe.lora.alpha} dropout={recipe.lora.dropout} "
         f"on {', '.join(recipe.lora.targets)}"),
        (f"training    seq {t.max_seq_len}, micro-batch {t.micro_batch_size} x accum {t.grad_accum}, lr {t.lr} "
         f"{t.schedule} (floor {t.min_lr_ratio}, warmup {t.warmup_frac:.0%}), {t.optimizer}, "
         f"packing {t.packing}, NEFTune {t.neftune_alpha or 'off'}"),
        (f"limits      budget {budget_s:.0f}s on track {track_name}"
         + (f", max_steps {t.max_steps}" if t.max_steps else "") + (f", epochs {t.epochs}" if t.epochs else "")),
    ]
    for i, s in enumerate(recipe.data):
        lines.append(f"data[{i}]     {s.kind} {s.name or s.path} (template {s.template}, weight {s.weight}"
                     + (f", first {s.max_examples}" if s.max_examples else "") + ")")
    shape = shape_of(m.base)
    if shape is None:
        lines.append("memory      unknown: the model's shape is not in the table and it is not a local folder")
        return "\n".join(lines)
    total = shape.linear_params() + shape.embedding_params()
    size = f"{total / 1e9:.2f}B" if total >= 1e9 else f"{total / 1e6:.1f}M"
    lines.append(f"shape       {shape.model_type}: {size} parameters, "
                 f"{lora_params(shape, recipe) / 1e6:.1f}M trainable (LoRA)")
    mem = memory_estimate_gib(shape, recipe)
    lines.append(f"memory      ~{sum(mem.values()):.1f} GiB (rough): "
                 + ", ".join(f"{k} {v:.1f}" for k, v in mem.items()))
    if track_name in PEAK_TFLOPS:
        flops_per_token = 6 * total  # forward, recomputed forward, backward to the inputs (base weights are frozen)
        tokens_per_s = PEAK_TFLOPS[track_name] * 1e12 * ASSUMED_MFU / flops_per_token
        tokens_per_step = t.micro_batch_size * t.grad_accum * t.max_seq_len
        lines.append(f"speed       ~{tokens_per_s:,.0f} tokens/s, ~{3600 * tokens_per_s / tokens_per_step:,.0f} steps/hour "
                     f"(estimate at {ASSUMED_MFU:.0%} MFU of {PEAK_TFLOPS[track_name]:.0f} TFLOP/s; "
                     "measure with bench/gpu_check.py)")
    else:
        lines.append("speed       not estimated on the cpu track (measured throughput shows in the progress bar)")
    return "\n".join(lines)
