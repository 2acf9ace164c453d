"""bench/gpu_check.py's figures: the device, FLOPs per trained token, MFU, and the summary lines
(bench/RESULTS.md's GPU table reads the JSON keys named there)."""
from __future__ import annotations

import gc
import resource
import time

import torch

from core.models import attention_implementation, compute_dtype
from train.data.packing import Example

# Dense bf16 tensor-core peaks from the vendors' data sheets (TFLOP/s), matched on the device name.
PEAK_BF16_TFLOPS = (("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("A100", 312.0),
                    ("RTX 4090", 165.2))


def on_cuda() -> bool:
    return torch.cuda.is_available()


def sync() -> None:
    if on_cuda():
        torch.cuda.synchronize()


# ---- memory --------------------------------------------------------------------------------------

def release() -> None:
    gc.collect()
    if on_cuda():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> dict:
    """CUDA: the caching allocator's peaks since the last release(); CPU: the process's max RSS."""
    if on_cuda():
        return {"peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
                "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
    return {"peak_allocated_gib": rss, "peak_reserved_gib": rss}


def allocated_gib() -> float | None:
    return torch.cuda.memory_allocated() / 2**30 if on_cuda() else None


# ---- the device ---------------------------------------------------------------------------------

def measured_matmul_tflops(dtype: torch.dtype) -> float:
    """Achieved matmul rate on this device (a reference beside the data-sheet peak; on a CPU, the
    peak itself): the best of a few square products, each size warmed up first."""
    sizes, repeats = ((8192,), 10) if on_cuda() else ((1024, 2048), 3)
    dev = "cuda" if on_cuda() else "cpu"
    best = 0.0
    for size in sizes:
        a, b = torch.randn(size, size, device=dev, dtype=dtype), torch.randn(size, size, device=dev, dtype=dtype)
        a @ b
        sync()
        for _ in range(repeats):
            started = time.perf_counter()
            a @ b
            sync()
            best = max(best, 2 * size**3 / (time.perf_counter() - started) / 1e12)
    return best


def attention_flops(dims: dict, context: float) -> float:
    """Forward FLOPs per token of attention's two products (QK^T and AV) over `context` keys."""
    return 4 * dims["hidden_size"] * dims["num_hidden_layers"] * context


def tf32_mode() -> dict:
    """TF32 as the training loop sets it (train.run.loop.enable_tf32), read back through every API:
    a "mix of the legacy and new APIs" error would surface here rather than in torch.compile."""
    from train.run.loop import enable_tf32

    enable_tf32()
    return {"allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cuda_matmul_fp32_precision": torch.backends.cuda.matmul.fp32_precision}


def device_facts(peak_override: float | None) -> dict:
    import transformers

    facts = {"torch": torch.__version__, "transformers": transformers.__version__,
             "attention": attention_implementation("auto"), "tf32": tf32_mode()}
    if on_cuda():
        props = torch.cuda.get_device_properties(0)
        facts |= {"device": props.name, "memory_gib": props.total_memory / 2**30, "matmul_dtype": "bfloat16",
                  "matmul_tflops": measured_matmul_tflops(torch.bfloat16)}
        sheet = next((tflops for name, tflops in PEAK_BF16_TFLOPS if name in props.name), None)
        facts["peak_tflops"] = peak_override or sheet or facts["matmul_tflops"]
        facts["peak_source"] = ("--peak-tflops" if peak_override else "data sheet, dense bf16" if sheet
                                else "measured bf16 matmul (card not in the table)")
    else:
        dtype = compute_dtype("auto")  # what the training phases compute in here
        facts |= {"device": "cpu", "threads": torch.get_num_threads(), "matmul_dtype": str(dtype),
                  "matmul_tflops": measured_matmul_tflops(dtype)}
        facts["peak_tflops"] = peak_override or facts["matmul_tflops"]
        facts["peak_source"] = "--peak-tflops" if peak_override else f"measured {dtype} matmul"
    return facts


def base_params(dims: dict) -> int:
    """Parameters that take part in every token's matmuls: the layers' projections and lm_head."""
    h, layers, inter = dims["hidden_size"], dims["num_hidden_layers"], dims["intermediate_size"]
    kv = dims["num_key_value_heads"] * h // dims["num_attention_heads"]
    return layers * (2 * h * h + 2 * h * kv + 3 * h * inter) + h * dims["vocab_size"]


def flops_per_token(dims: dict, lora_params: int, examples: list[Example]) -> dict:
    """Model and hardware FLOPs per trained token (see gpu_check's docstring)."""
    base = base_params(dims)
    lengths = [len(e.input_ids) for e in examples]
    mean_context = sum(n * (n + 1) / 2 for n in lengths) / sum(lengths)  # keys a token attends to
    attention = attention_flops(dims, mean_context)
    model = 4 * base + 6 * lora_params + 3 * attention
    return {"base_params": base, "lora_params": lora_params, "mean_context": mean_context,
            "model_flops_per_token": model,
            "hardware_flops_per_token": model + 2 * base + 2 * lora_params + attention,
            "model_formula": "4*N_base + 6*N_lora + 3*attn_fwd",
            "hardware_formula": "6*N_base + 8*N_lora + 4*attn_fwd (gradient checkpointing recomputes the forward)"}


def throughput(tokens: int, seconds: float, flops: dict, peak_tflops: float) -> dict:
    rate = tokens / seconds
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": rate,
            "mfu": rate * flops["model_flops_per_token"] / (peak_tflops * 1e12),
            "hfu": rate * flops["hardware_flops_per_token"] / (peak_tflops * 1e12)}


def device_lines(figures: dict) -> list[str]:
    dev = figures["device"]
    tf32 = dev["tf32"]
    lines = [(f"device {dev['device']} (torch {dev['torch']}, transformers {dev['transformers']}, "
             f"attention {dev['attention']}); peak {dev['peak_tflops']:.4g} TFLOP/s ({dev['peak_source']}); "
             f"measured {dev['matmul_dtype']} matmul {dev['matmul_tflops']:.4g} TFLOP/s"),
             (f"TF32: allow_tf32 {tf32['allow_tf32']}, float32 matmul precision {tf32['float32_matmul_precision']}, "
             f"cuda matmul fp32_precision {tf32['cuda_matmul_fp32_precision']}")]
    if "model" in figures:
        m = figures["model"]
        lines.append(f"model: {m['shape']} shape, {m['params'] / 1e9:.2f}B params, random bf16 init "
                     f"{m['init_s']:.1f} s, save {m['save_s']:.1f} s")
    if "flops" in figures:
        f = figures["flops"]
        lines.append(f"FLOPs/token: model {f['model_flops_per_token']:.4g} = {f['model_formula']}; hardware "
                     f"{f['hardware_flops_per_token']:.4g} = {f['hardware_formula']}; N_base "
                     f"{f['base_params']:.4g}, N_lora {f['lora_params']:.4g}, mean attended keys "
                     f"{f['mean_context']:.1f}")
    return lines


def training_lines(figures: dict) -> list[str]:
    lines = []
    sides = (("ours", "ours (train_step, packed)"), ("trainer_flat", "Trainer + peft (padding-free)"),
             ("trainer", "Trainer + peft (padded)"))
    for key, label in sides:
        if key in figures:
            r = figures[key]
            lines.append(f"{label:30s} {r['tokens_per_s']:10.1f} non-pad tokens/s  MFU {r['mfu']:.3f}  "
                         f"HFU {r['hfu']:.3f}  peak {r['peak_allocated_gib']:.2f} GiB allocated / "
                         f"{r['peak_reserved_gib']:.2f} reserved  ({r['tokens'] // figures['args']['steps']} tokens/step in "
                         f"{r['micro_batch']} {'rows' if key == 'ours' else 'examples'}, load {r['load_s']:.1f} s)")
    for key, label in (("trainer_flat", "Trainer padding-free"), ("trainer", "Trainer padded")):
        if "ours" in figures and key in figures:
            lines.append(f"ratio ours / {label}: {figures['ours']['tokens_per_s'] / figures[key]['tokens_per_s']:.2f}x")
    if "ours" in figures:
        o = figures["ours"]
        measured = "peak allocated" if figures["device"]["device"] != "cpu" else "process max RSS (not comparable)"
        lines.append(f"memory plan (train.budget.plan): {o['plan_allocator_gib']:.2f} GiB in the allocator against "
                     f"{o['peak_allocated_gib']:.2f} GiB measured {measured}; {o['plan_card_gib']:.2f} GiB on the "
                     "card with the context and the paged optimizer state")
        r = o["resume"]
        delta = "n/a on the CPU" if r["allocated_delta_gib"] is None else f"{r['allocated_delta_gib']:.2f} GiB"
        lines.append(f"resume: optimizer state {r['state_gib']:.3f} GiB saved; loading it and one step add {delta} "
                     f"to the allocator (plan's paged state {r['plan_paged_gib']:.3f} GiB); still paged after "
                     f"loading: {r['paged_after_load']}")
    if "cap" in figures:
        c = figures["cap"]
        how = "enforced" if c["enforced"] else "compared, not enforced"
        lines.append(f"{c['track']} cap {c['cap_gib']:.2f} GiB ({how}): {'FITS' if c['fits'] else 'DOES NOT FIT'}"
                     f" (peak {c['peak_reserved_gib']:.2f} GiB reserved) {c.get('error', '')}".rstrip())
    return lines


def serving_lines(figures: dict) -> list[str]:
    if "serve" not in figures:
        return []
    s = figures["serve"]
    p = s["plan"]
    unreleased = ("not applicable on the CPU" if p["unreleased_free_gib"] is None else
                  f"{p['unreleased_free_gib']:.2f} GiB free -> batch {p['unreleased_batch_tokens']} tokens")
    lines = [(f"server memory plan: before releasing the allocator's cache {unreleased}; after "
             f"{p['free_gib']:.2f} GiB free -> batch {p['batch_tokens']} tokens, prefix cache "
             f"{p['prefix_cache_tokens']} tokens")]
    for level in s["levels"]:
        lines.append(f"serve ({s['quant']}) concurrency {level['concurrency']:3d}: {level['requests']} requests, "
                     f"{level['requests_per_s']:.2f} req/s, {level['generated_tokens_per_s']:.1f} generated "
                     f"tokens/s, p50 {level['p50_latency_s']:.2f} s")
    b = s["baseline"]
    lines.append(f"one-at-a-time generate (bench/server_baseline.py): {b['requests']} requests, "
                 f"{b['requests_per_s']:.2f} req/s, {b['generated_tokens_per_s']:.1f} generated tokens/s; "
                 f"ours at concurrency {s['levels'][-1]['concurrency']} / baseline: "
                 f"{s['levels'][-1]['generated_tokens_per_s'] / b['generated_tokens_per_s']:.2f}x generated tokens/s")
    lines.append(f"generations that ran to max_new_tokens: {s['full_length_share']:.0%} (random weights emit no EOS "
                 "and no stop sequence: a heavier mix than the judges', the same for both sides)")
    return lines


def summary(figures: dict) -> list[str]:
    lines = device_lines(figures) + training_lines(figures) + serving_lines(figures)
    if figures["skipped"]:
        lines.append(f"skipped (time budget): {', '.join(figures['skipped'])}")
    for name, error in figures["failed"].items():
        lines.append(f"FAILED {name}: {error}")
    return lines
