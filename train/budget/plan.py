"""`--dry-run`: validate a recipe and print the plan (model, data, memory, speed) without downloading.

Shapes of hub models come from a small table of the base models people enter with, or from a local
folder's config; the estimates are rough and say so.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from core.embedded import resolve_model_id
from train.recipe import LORA_FAMILY, VIRTUAL_TOKENS, Recipe


@dataclass(frozen=True)
class Shape:
    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = False  # the output head shares the input embeddings (SmolLM2)

    def proj_dims(self) -> dict[str, tuple[int, int]]:
        head = self.hidden // self.heads
        kv = head * self.kv_heads
        h, i = self.hidden, self.intermediate
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.proj_dims().values())

    def embedding_params(self) -> int:
        return (1 if self.tied else 2) * self.vocab * self.hidden  # input embeddings and an untied output head


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
    folder = Path(resolve_model_id(model_id))
    config_file = folder / "config.json"
    if not config_file.is_file():
        return None
    c = json.loads(config_file.read_text())
    try:
        return Shape(c["model_type"], c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"],
                     c["num_attention_heads"], c.get("num_key_value_heads") or c["num_attention_heads"],
                     c["vocab_size"], bool(c.get("tie_word_embeddings", False)))
    except KeyError:  # an architecture that names its sizes otherwise (GPT-J: n_embd, ...): shape unknown
        return None


def lora_params(shape: Shape, recipe: Recipe) -> int:
    dims = shape.proj_dims()
    return shape.layers * sum(recipe.lora.r * (a + b) for name, (a, b) in dims.items() if name in recipe.lora.targets)


def trainable_params(shape: Shape, recipe: Recipe) -> int:
    """The recipe's PEFT method's trainable parameters, as peft builds them (checked against
    peft's own count on the tiny model by tests/test_peft_methods.py)."""
    p, dims = recipe.peft, shape.proj_dims()
    kv_columns = 2 * shape.layers * (shape.hidden // shape.heads * shape.kv_heads)  # keys and values of every layer
    if p.method in ("lora", "rslora"):
        return lora_params(shape, recipe)
    if p.method == "dora":  # plus a magnitude per output feature of every adapted projection
        return lora_params(shape, recipe) + shape.layers * sum(b for name, (_, b) in dims.items() if name in recipe.lora.targets)
    if p.method == "ia3":  # one scale per output feature, per input feature for feed-forward targets
        return shape.layers * sum(a if name in p.feedforward else b for name, (a, b) in dims.items() if name in p.targets)
    n, h, e = p.num_virtual_tokens, shape.hidden, p.encoder_hidden_size
    if p.method == "prompt_tuning":
        return n * h
    if p.method == "p_tuning":  # the embeddings and a three-layer MLP encoder
        return n * h + (h * e + e) + (e * e + e) + (e * h + h)
    if p.prefix_projection:  # embeddings through a two-layer MLP to every layer's keys and values
        return n * h + (h * e + e) + (e * kv_columns + kv_columns)
    return n * kv_columns


@dataclass(frozen=True)
class MemoryTerm:
    name: str
    gib: float
    note: str = ""


def activation_bytes(recipe: Recipe, on_gpu: bool) -> int:
    """Bytes per activation element: bf16 under autocast (train.run.loop.autocast_dtype), else fp32."""
    autocast = recipe.train.autocast
    return 2 if autocast == "bf16" or (autocast == "auto" and on_gpu and recipe.model.compute_dtype in ("auto", "bf16")) else 4


def optimizer_state_bytes(shape: Shape, recipe: Recipe) -> int:
    """AdamW's two moments per trainable parameter: one byte each in 8-bit (plus an fp32 absmax per 256-value
    block), four each in fp32."""
    per_param = 2 + 2 * 4 / 256 if recipe.train.optimizer.endswith("8bit") else 8
    return round(trainable_params(shape, recipe) * per_param)


def paged_state_gib(recipe: Recipe) -> float | None:
    """The paged optimizer's state on the card (0 for an unpaged optimizer; None: shape unknown)."""
    shape = shape_of(recipe.model.base)
    if shape is None:
        return None
    return optimizer_state_bytes(shape, recipe) / 2**30 if recipe.train.optimizer.startswith("paged") else 0.0


def memory_terms(shape: Shape, recipe: Recipe, on_gpu: bool) -> list[MemoryTerm]:
    """Peak memory of one training step, term by term (estimates, from the libraries' behaviour):

    - prepare_model_for_kbit_training upcasts every parameter that is not 4-bit to fp32, so the
      embeddings and lm_head take 4 bytes each;
    - the residual stream stays fp32 (fp32 embeddings, fp32 norms; autocast only lowers matmuls), so
      gradient checkpointing keeps one fp32 hidden state per token per layer;
    - in the backward pass one layer at a time is recomputed with all its intermediates: two norms
      (fp32 input and output), q/k/v before and after the rotary embedding, the attention output, the
      MLP's gate, up, activation and product, and for every LoRA target its dropout output (the
      4-bit base matmuls keep no input);
    - the logits in the activation dtype, their fp32 copy for the loss, the log-softmax and its grad;
    - the paged 8-bit optimizer state lives in CUDA managed memory and the CUDA context in the driver:
      both on the card, both outside the caching allocator (train.budget.limits.allocator_cap_gib).
    """
    from train.budget.limits import CUDA_CONTEXT_GIB

    m, t = recipe.model, recipe.train
    a = activation_bytes(recipe, on_gpu)
    virtual = recipe.peft.num_virtual_tokens if recipe.peft.method in VIRTUAL_TOKENS else 0
    tokens = t.micro_batch_size * (t.max_seq_len + virtual)  # the virtual tokens run through every layer too
    h, i, layers = shape.hidden, shape.intermediate, shape.layers
    kv = h // shape.heads * shape.kv_heads
    if m.quantization == "nf4":
        bits = 4 + 8 / 64 + 32 / (64 * 256) if m.double_quant else 4 + 32 / 64
        base = ("base weights", shape.linear_params() * bits / 8,
                          f"NF4, {bits:.3f} bits/weight with {'double' if m.double_quant else 'single'} quantization")
        embed = ("embeddings + lm_head", shape.embedding_params() * 4.0, "fp32: upcast by peft's k-bit prep")
    else:
        base = ("base weights", shape.linear_params() * 2.0, "bf16")
        embed = ("embeddings + lm_head", shape.embedding_params() * 2.0, "bf16")
    lora = recipe.peft.method in LORA_FAMILY
    in_dims = [a_in for name, (a_in, _) in shape.proj_dims().items() if lora and name in recipe.lora.targets]
    lora_inputs = sum(in_dims) if recipe.lora.dropout > 0 else 0
    per_layer = (2 * 2 * h * 4  # two RMSNorms: fp32 input and output
                 + (2 * (h + 2 * kv) + 2 * h + 4 * i + lora_inputs + len(in_dims) * recipe.lora.r) * a)
    if t.gradient_checkpointing:
        kept = ("checkpointed layer inputs", tokens * h * 4.0 * layers, "fp32 residual stream, every layer")
        recomputed = ("recomputed layer", tokens * per_layer, "one layer's intermediates in backward")
    else:
        kept = ("layer activations", tokens * per_layer * layers, "every layer's intermediates")
        recomputed = ("recomputed layer", 0.0, "no gradient checkpointing")
    paged = t.optimizer.startswith("paged")
    terms = [
        base, embed,
        (f"{'LoRA' if lora else recipe.peft.method} weights + grads", trainable_params(shape, recipe) * 8.0, "fp32"),
        ("optimizer state", optimizer_state_bytes(shape, recipe),
                   ("8-bit" if t.optimizer.endswith("8bit") else "fp32") + (", paged: outside the allocator" if paged else "")),
        kept, recomputed,
        ("logits + loss", tokens * shape.vocab * (a + 3 * 4.0), "logits, fp32 copy, log-softmax, its grad"),
    ]
    if on_gpu:
        terms.append(("CUDA context", CUDA_CONTEXT_GIB * 2**30, "driver and kernels: outside the allocator"))
    return [MemoryTerm(name, size / 2**30, note) for name, size, note in terms]


def describe(recipe: Recipe, track_name: str, budget_s: float) -> str:
    """The plan as text."""
    m, t = recipe.model, recipe.train
    lines = [
        f"recipe      {recipe.name} ({recipe.source_file})",
        (f"model       {m.base} (quantization {m.quantization}, double quant {m.double_quant}, "
         f"compute {m.compute_dtype}, attention {m.attention})"),
        method_line(recipe),
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
                 f"{trainable_params(shape, recipe):,} trainable ({recipe.peft.method})")
    lines += memory_lines(shape, recipe, track_name)
    if track_name in PEAK_TFLOPS:
        flops_per_token = 6 * total  # forward, recomputed forward, backward to the inputs (base weights are frozen)
        tokens_per_s = PEAK_TFLOPS[track_name] * 1e12 * ASSUMED_MFU / flops_per_token
        tokens_per_step = t.micro_batch_size * t.grad_accum * t.max_seq_len
        lines.append(f"speed       ~{tokens_per_s:,.0f} tokens/s, ~{3600 * tokens_per_s / tokens_per_step:,.0f} steps/hour "
                     f"(estimate at {ASSUMED_MFU:.0%} MFU of {PEAK_TFLOPS[track_name]:.0f} TFLOP/s; "
                     "measure with bench/gpu_check.py)")
    else:
        lines.append(f"speed       not estimated on the {track_name} track (measured throughput shows in the progress bar)")
    return "\n".join(lines)


def method_line(recipe: Recipe) -> str:
    """The PEFT method and the settings it reads."""
    p, lora = recipe.peft, recipe.lora
    if p.method in LORA_FAMILY:
        name = "lora" if p.method == "lora" else f"lora        {p.method}:"
        return f"{name:11s} r={lora.r} alpha={lora.alpha} dropout={lora.dropout} on {', '.join(lora.targets)}"
    if p.method == "ia3":
        return f"peft        ia3 on {', '.join(p.targets)} (feed-forward: {', '.join(p.feedforward) or 'none'})"
    extra = {"prompt_tuning": f"init {'text ' + repr(p.init_text) if p.init_text else 'random'}",
             "p_tuning": f"MLP encoder {p.encoder_hidden_size}",
             "prefix_tuning": f"projection {p.encoder_hidden_size if p.prefix_projection else 'off'}"}[p.method]
    return f"peft        {p.method}: {p.num_virtual_tokens} virtual tokens, {extra}"


def memory_lines(shape: Shape, recipe: Recipe, track_name: str) -> list[str]:
    """The memory plan, one term a line, and whether it fits the track's card."""
    from core.rules import load_rules

    track = load_rules().tracks.get(track_name)
    on_gpu = track is not None and track.gpus > 0
    card = track.gpu_memory_gib if on_gpu else None  # None on a GPU track: no cap, the card's own memory
    terms = memory_terms(shape, recipe, on_gpu=on_gpu)
    total = sum(term.gib for term in terms)
    where = ("in RAM (the CPU track)" if not on_gpu else "on the GPU" if track.gpus == 1
             else "on each GPU (one process each)")
    lines = [f"memory      ~{total:.2f} GiB {where} (estimate), term by term:"]
    width = max(len(term.name) for term in terms)
    lines += [f"              {term.name:{width}s} {term.gib:7.2f} GiB  {term.note}" for term in terms]
    if card is not None:
        spare = card - total
        verdict = f"fits with {spare:.2f} GiB to spare" if spare >= 0 else f"DOES NOT FIT: {-spare:.2f} GiB over"
        lines.append(f"              {track_name} card: {card:.2f} GiB: {verdict}")
    return lines
