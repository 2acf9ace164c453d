"""GPU proof in one command: QLoRA training throughput, memory and MFU of the project's step against
plain Trainer + peft baselines, the memory plan against the measured peak, the rtx4090-24gb memory
cap, and serving throughput.

Phases (each printed and written to --out as it finishes; a phase that would start after --budget-s
seconds is skipped and says so, so a slow machine still returns figures):
1. build: a Llama-architecture model with random weights (--shape; 7b is Mistral-7B's shape), made
   directly on the device in bf16 and saved to local disk (/dev/shm when it has room), with the
   embedded tokenizer (padded with filler tokens up to the model's vocabulary);
2. ours: `train.model.load_model` (NF4 + double quant, prepare_model_for_kbit_training, LoRA) and
   `train.run.loop.train_step` over packed `train.data.packing` rows, gradient checkpointing, paged AdamW
   8-bit, bf16 autocast on CUDA; settings from configs/mistral-7b-qlora-4090.toml except the model,
   data (the bundled generated tasks), grad_accum (1) and the shape flags; one warm-up step, then
   --steps timed steps; beside the peak, `train.budget.plan`'s memory plan for the same shape and recipe;
3. trainer: a plain transformers Trainer + peft on the same model, settings and precision
   (bf16=True on CUDA), loaded once, run twice: padding-free (`DataCollatorWithFlattening`, as many
   examples per step as fill our packed micro-batch: the fair baseline) and padded (pad-to-longest
   batches of --micro-batch examples, or --baseline-batch: the usual script);
4. cap: our step again under the rtx4090-24gb track's memory cap (train.budget.limits.apply_gpu_limits, less
   the CUDA context and the paged optimizer state): does it fit? (CPU mode: no cap can be enforced,
   the measured peak is compared with it);
5. serve: the adapter trained in phase 2 served by submission.engine (loaded by
   submission.loading, as the server does) under the judges' request mix
   (bench/server_throughput.py's workload) at concurrency 1 and 30.

Figures: non-pad tokens/s, peak memory, MFU and HFU with the FLOPs per token stated (frozen NF4
base: model FLOPs 2N forward + 2N backward through the frozen weights + 6 per LoRA parameter +
attention; gradient checkpointing recomputes the forward, so hardware FLOPs add 2N + 2 per LoRA
parameter + one more attention forward: about 6N; N = non-embedding base parameters + lm_head).

    python bench/gpu_check.py [--cpu] [--shape 7b|3b|1b|tiny] [--steps 8] [--out FILE]

With no CUDA device (or --cpu) it runs tiny shapes, a few steps and a few requests in under a minute.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from train_throughput import (  # bench/ is on sys.path
    flat_batch_size,
    load_plain_qlora,
    time_ours,
    time_trainer,
)

from core.models import attention_implementation, compute_dtype, load_tokenizer
from core.rules import load_rules
from core.tiny import EMBEDDED_ID
from train.budget.limits import apply_gpu_limits
from train.budget.plan import memory_terms, paged_state_gib, shape_of
from train.data.packing import Example
from train.data.pipeline import build_examples, make_batches
from train.model import load_model, make_optimizer
from train.recipe import CONFIG_DIR, Recipe, load_recipe

CAP_TRACK = "rtx4090-24gb"
GPU_RECIPE = CONFIG_DIR / "mistral-7b-qlora-4090.toml"
# Dimensions of well-known base models; all multiples of 64 (the NF4 block size).
SHAPES = {
    "7b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,  # Mistral-7B
           "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000},
    "3b": {"hidden_size": 3200, "intermediate_size": 8640, "num_hidden_layers": 26,  # OpenLLaMA-3B
           "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000},
    "1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,  # TinyLlama-1.1B
           "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000},
    "tiny": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1024},
}
# Dense bf16 tensor-core peaks from the vendors' data sheets (TFLOP/s), matched on the device name.
PEAK_BF16_TFLOPS = (("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("A100", 312.0),
                    ("RTX 4090", 165.2))


# ---- device facts --------------------------------------------------------------------------------

def on_cuda() -> bool:
    return torch.cuda.is_available()


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


def measured_matmul_tflops(dtype: torch.dtype) -> float:
    """Achieved matmul rate on this device (a reference beside the data-sheet peak)."""
    size, repeats = (8192, 10) if on_cuda() else (512, 4)
    dev = "cuda" if on_cuda() else "cpu"
    a, b = torch.randn(size, size, device=dev, dtype=dtype), torch.randn(size, size, device=dev, dtype=dtype)
    a @ b
    if on_cuda():
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if on_cuda():
        torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e12


def device_facts(peak_override: float | None) -> dict:
    import transformers

    facts = {"torch": torch.__version__, "transformers": transformers.__version__,
             "attention": attention_implementation("auto")}
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


# ---- phase 1: the model --------------------------------------------------------------------------

def work_root(model_bytes: int) -> Path:
    """/dev/shm (memory-backed, fast to write and read back) when it has room, else the temp dir."""
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 2.5 * model_bytes:
        return shm
    return Path(tempfile.gettempdir())


def build_model(shape: str, folder: Path) -> dict:
    """Random-weight Llama of `shape`, created on the device in bf16, saved with the tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = load_tokenizer(EMBEDDED_ID)
    dims = SHAPES[shape]
    if dims["vocab_size"] > len(tokenizer):  # filler tokens, so every id the model emits decodes
        tokenizer.add_tokens([f"<|filler{i}|>" for i in range(len(tokenizer), dims["vocab_size"])])
    config = LlamaConfig(**dims, max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False)
    started = time.perf_counter()
    torch.manual_seed(0)
    with torch.device("cuda" if on_cuda() else "cpu"):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    if on_cuda():
        torch.cuda.synchronize()
    made = time.perf_counter()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    saved = time.perf_counter()
    params = sum(p.numel() for p in model.parameters())
    del model
    release()
    return {"shape": shape, "dims": dims, "params": params, "folder": str(folder),
            "init_s": made - started, "save_s": saved - made}


def base_params(dims: dict) -> int:
    """Parameters that take part in every token's matmuls: the layers' projections and lm_head."""
    h, layers, inter = dims["hidden_size"], dims["num_hidden_layers"], dims["intermediate_size"]
    kv = dims["num_key_value_heads"] * h // dims["num_attention_heads"]
    return layers * (2 * h * h + 2 * h * kv + 3 * h * inter) + h * dims["vocab_size"]


def flops_per_token(dims: dict, lora_params: int, examples: list[Example]) -> dict:
    """Model and hardware FLOPs per trained token (see the module docstring)."""
    h, layers = dims["hidden_size"], dims["num_hidden_layers"]
    base = base_params(dims)
    lengths = [len(e.input_ids) for e in examples]
    mean_context = sum(n * (n + 1) / 2 for n in lengths) / sum(lengths)  # keys a token attends to
    attention = 4 * h * layers * mean_context  # QK^T and AV, forward
    model = 4 * base + 6 * lora_params + 3 * attention
    return {"base_params": base, "lora_params": lora_params, "mean_context": mean_context,
            "model_flops_per_token": model,
            "hardware_flops_per_token": model + 2 * base + 2 * lora_params + attention,
            "model_formula": "4*N_base + 6*N_lora + 3*attn_fwd",
            "hardware_formula": "6*N_base + 8*N_lora + 4*attn_fwd (gradient checkpointing recomputes the forward)"}


# ---- phases 2-4: training ------------------------------------------------------------------------

def check_recipe(args, folder: Path) -> Recipe:
    """The 4090 recipe on the built model and the bundled generated tasks (the tiny default's mix)."""
    real, tiny = load_recipe(GPU_RECIPE), load_recipe(None)
    data = [dataclasses.replace(s, max_examples=args.examples) for s in tiny.data]
    lora = real.lora if not args.lora_r else dataclasses.replace(real.lora, r=args.lora_r, alpha=2 * args.lora_r)
    return dataclasses.replace(
        real, name="gpu-check", data=data, lora=lora,
        model=dataclasses.replace(real.model, base=str(folder)),
        train=dataclasses.replace(real.train, max_seq_len=args.seq_len, micro_batch_size=args.micro_batch,
                                  grad_accum=1, epochs=0.0, max_steps=0))


def throughput(tokens: int, seconds: float, flops: dict, peak_tflops: float) -> dict:
    rate = tokens / seconds
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": rate,
            "mfu": rate * flops["model_flops_per_token"] / (peak_tflops * 1e12),
            "hfu": rate * flops["hardware_flops_per_token"] / (peak_tflops * 1e12)}


def train_ours(recipe: Recipe, tokenizer, steps: int, adapter_dir: Path | None) -> dict:
    release()
    started = time.perf_counter()
    model = load_model(recipe)
    optimizer = make_optimizer(recipe, model)
    load_s = time.perf_counter() - started
    lora_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tokens, seconds = time_ours(model, optimizer, make_batches(recipe, tokenizer), recipe, steps, 0)
    result = {"load_s": load_s, "micro_batch": recipe.train.micro_batch_size, "lora_params": lora_params,
              "tokens": tokens, "seconds": seconds, **peak_memory(), **planned_memory(recipe)}
    if adapter_dir is not None:
        model.save_pretrained(adapter_dir)
    del model, optimizer
    release()
    return result


def planned_memory(recipe: Recipe) -> dict:
    """train.budget.plan's estimate for this recipe: the terms the caching allocator holds (to set beside
    its measured peak), and the whole card including the context and the paged optimizer state."""
    terms = memory_terms(shape_of(recipe.model.base), recipe, on_gpu=on_cuda())
    outside = {"CUDA context"} | ({"optimizer state"} if recipe.train.optimizer.startswith("paged") else set())
    return {"plan_allocator_gib": sum(t.gib for t in terms if t.name not in outside),
            "plan_card_gib": sum(t.gib for t in terms), "plan_terms_gib": {t.name: t.gib for t in terms}}


def train_trainers(recipe: Recipe, tokenizer, examples: list[Example], steps: int, padded_batch: int) -> dict:
    """The Trainer baseline, loaded once: padding-free with the same tokens per step as ours, then
    padded with `padded_batch` examples per step."""
    release()
    started = time.perf_counter()
    model = load_plain_qlora(recipe)
    load_s = time.perf_counter() - started
    tokens, slots = make_batches(recipe, tokenizer).token_stats()
    sides = {"flat": (flat_batch_size(recipe, examples, tokens / slots), True), "padded": (padded_batch, False)}
    results = {}
    for name, (batch, flat) in sides.items():
        release()
        side = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, micro_batch_size=batch))
        tokens, seconds = time_trainer(model, tokenizer, examples, side, steps, seed=0, flat=flat)
        results[name] = {"load_s": load_s, "micro_batch": batch, "tokens": tokens, "seconds": seconds,
                         **peak_memory()}
    del model
    release()
    return results


def train_capped(recipe: Recipe, tokenizer, steps: int) -> dict:
    """Our step under the track's memory cap. CUDA: enforced by the caching allocator, an
    out-of-memory error means it does not fit (the paged optimizer's managed memory and the CUDA
    context are outside the cap). CPU: nothing to enforce, the peak is compared."""
    track = load_rules().tracks[CAP_TRACK]
    if not on_cuda():
        result = train_ours(recipe, tokenizer, steps, None)
        return {"track": CAP_TRACK, "cap_gib": track.gpu_memory_gib, "enforced": False,
                "fits": result["peak_reserved_gib"] <= track.gpu_memory_gib, **result,
                "note": "no CUDA device: the process's peak RSS is compared with the cap"}
    release()
    notes = apply_gpu_limits(track, paged_state_gib(recipe))
    try:
        result = train_ours(recipe, tokenizer, steps, None)
        fits, error = True, ""
    except RuntimeError as err:  # torch.cuda.OutOfMemoryError, or a library's own CUDA OOM
        if "out of memory" not in str(err).lower():
            raise
        result, fits, error = peak_memory(), False, str(err).splitlines()[0]
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        release()
    return {"track": CAP_TRACK, "cap_gib": track.gpu_memory_gib, "enforced": True, "fits": fits,
            "error": error, "note": "; ".join(notes), **result}


# ---- phase 5: serving ----------------------------------------------------------------------------

def burst(engine, requests: list, concurrency: int) -> dict:
    """Send `requests` from `concurrency` client threads, each taking the next as its last returns."""
    latencies: list[float] = []

    def send(request) -> int:
        begin = time.perf_counter()
        tokens = len(engine.submit(request).result()["tokens"])
        latencies.append(time.perf_counter() - begin)
        return tokens

    begin = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        generated = sum(pool.map(send, requests))
    elapsed = time.perf_counter() - begin
    return {"concurrency": concurrency, "requests": len(requests), "seconds": elapsed,
            "requests_per_s": len(requests) / elapsed, "generated_tokens_per_s": generated / elapsed,
            "p50_latency_s": statistics.median(latencies)}


def serve(folder: Path, adapter_dir: Path, levels: list[int], counts: list[int]) -> dict:
    """Bursts of judges'-style requests through the submission engine, in process."""
    from server_throughput import workload  # bench/server_throughput.py: the HELM-shaped request mix

    from submission.api import ProcessRequest
    from submission.engine import Engine
    from submission.loading import load
    from submission.settings import Settings

    release()
    settings = Settings(model=str(folder), adapter=str(adapter_dir))
    started = time.perf_counter()
    model, tokenizer, quant = load(settings)
    engine = Engine(model, tokenizer, settings)
    result: dict = {"quant": quant, "load_s": time.perf_counter() - started, "levels": []}
    try:
        engine.submit(ProcessRequest(**workload(1, seed=999)[0])).result()  # warm-up
        for level, count in zip(levels, counts):
            requests = [ProcessRequest(**body) for body in workload(count, seed=level)]
            result["levels"].append(burst(engine, requests, level))
        result |= peak_memory()
    finally:
        engine.close()
        del engine, model
        release()
    return result


# ---- the run -------------------------------------------------------------------------------------

class Report:
    """Figures so far, rewritten to --out after every phase (a timed-out run keeps what it measured).
    A phase that fails is recorded with its error and the run goes on to the phases that do not
    need it: one device run should bring back every figure it can."""

    def __init__(self, out: Path | None, budget_s: float):
        self.out, self.budget_s, self.started = out, budget_s, time.perf_counter()
        self.figures: dict = {"skipped": [], "failed": {}}

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def add(self, key: str, value) -> None:
        self.figures[key] = value
        self.figures["elapsed_s"] = self.elapsed()
        if self.out:
            self.out.write_text(json.dumps(self.figures, indent=2, default=str) + "\n")

    def phase(self, name: str, run: Callable[[], dict]) -> dict | None:
        """run() recorded under `name`; None when skipped (past --budget-s) or failed."""
        if self.elapsed() >= self.budget_s:
            self.figures["skipped"].append(name)
            print(f"[{self.elapsed():6.1f} s] {name}: skipped, past --budget-s {self.budget_s:.0f}", flush=True)
            return None
        print(f"[{self.elapsed():6.1f} s] {name} ...", flush=True)
        try:
            value = run()
        except Exception as err:  # noqa: BLE001 - recorded, and the exit status says so
            traceback.print_exc()
            self.figures["failed"][name] = f"{type(err).__name__}: {err}".splitlines()[0]
            self.add("failed", self.figures["failed"])
            release()
            return None
        self.add(name, value)
        return value


def summary(figures: dict) -> list[str]:
    lines = []
    dev = figures["device"]
    lines.append(f"device {dev['device']} (torch {dev['torch']}, transformers {dev['transformers']}, "
                 f"attention {dev['attention']}); peak {dev['peak_tflops']:.4g} TFLOP/s ({dev['peak_source']}); "
                 f"measured {dev['matmul_dtype']} matmul {dev['matmul_tflops']:.4g} TFLOP/s")
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
    if "cap" in figures:
        c = figures["cap"]
        how = "enforced" if c["enforced"] else "compared, not enforced"
        lines.append(f"{c['track']} cap {c['cap_gib']:.2f} GiB ({how}): {'FITS' if c['fits'] else 'DOES NOT FIT'}"
                     f" (peak {c['peak_reserved_gib']:.2f} GiB reserved) {c.get('error', '')}".rstrip())
    if "serve" in figures:
        s = figures["serve"]
        for level in s["levels"]:
            lines.append(f"serve ({s['quant']}) concurrency {level['concurrency']:3d}: {level['requests']} requests, "
                         f"{level['requests_per_s']:.2f} req/s, {level['generated_tokens_per_s']:.1f} generated "
                         f"tokens/s, p50 {level['p50_latency_s']:.2f} s")
    if figures["skipped"]:
        lines.append(f"skipped (time budget): {', '.join(figures['skipped'])}")
    for name, error in figures["failed"].items():
        lines.append(f"FAILED {name}: {error}")
    return lines


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="tiny CPU mode (the default with no CUDA device)")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="model shape (default: 7b on CUDA, tiny on CPU)")
    parser.add_argument("--steps", type=int, help="timed optimizer steps per training phase (default 8 / 2)")
    parser.add_argument("--cap-steps", type=int, default=2, help="timed steps under the memory cap")
    parser.add_argument("--seq-len", type=int, help="max_seq_len of packed rows (default 2048 / 128)")
    parser.add_argument("--micro-batch", type=int, default=2, help="rows per step, both sides (4090 recipe: 2)")
    parser.add_argument("--baseline-batch", type=int,
                        help="the Trainer's examples per step (default: --micro-batch, as many rows as ours)")
    parser.add_argument("--lora-r", type=int, help="LoRA rank, alpha = 2r (default: the 4090 recipe's 128 / 8)")
    parser.add_argument("--examples", type=int, help="examples per generated task (default 2000 / 100)")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 30], help="serving concurrency levels")
    parser.add_argument("--requests", type=int, nargs="+", help="requests per level (default 8 60 / 2 30)")
    parser.add_argument("--peak-tflops", type=float, help="peak for MFU (default: data sheet / measured)")
    parser.add_argument("--budget-s", type=float, default=420, help="start no phase after this many seconds")
    parser.add_argument("--threads", type=int, help="torch CPU threads (CPU mode default 1: tiny shapes gain "
                        "nothing from more, and a shared machine thrashes; CUDA: torch's default)")
    parser.add_argument("--work-dir", type=Path, help="where the model is saved (default /dev/shm or temp)")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    cpu = args.cpu or not on_cuda()
    if args.cpu and on_cuda():
        parser.error("--cpu on a CUDA machine: hide the GPU with CUDA_VISIBLE_DEVICES= instead")
    defaults = {"shape": "tiny" if cpu else "7b", "steps": 2 if cpu else 8, "seq_len": 128 if cpu else 2048,
                "lora_r": 8 if cpu else 0, "examples": 100 if cpu else 2000,
                "requests": [2, 30] if cpu else [8, 60], "threads": 1 if cpu else 0}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if len(args.requests) != len(args.levels):
        parser.error("give one --requests count per --levels entry")
    if args.threads < 0:
        parser.error("--threads must not be negative")
    if args.baseline_batch is not None and args.baseline_batch < 1:
        parser.error("--baseline-batch must be positive")
    if min(args.steps, args.cap_steps, args.seq_len, args.micro_batch, args.examples, *args.levels, *args.requests) < 1:
        parser.error("--steps, --cap-steps, --seq-len, --micro-batch, --examples, --levels and --requests must be positive")
    return args


def measure(args, report: Report, work: Path) -> None:
    """Phases 2-5 on the built model."""
    dims, peak = SHAPES[args.shape], report.figures["device"]["peak_tflops"]
    recipe = check_recipe(args, work / "model")
    tokenizer = load_tokenizer(recipe.model.base)
    examples = build_examples(recipe, tokenizer)
    adapter_dir = work / "adapter"
    ours = report.phase("ours", lambda: train_ours(recipe, tokenizer, args.steps, adapter_dir))
    if ours:
        flops = flops_per_token(dims, ours["lora_params"], examples)
        report.add("flops", flops)
        report.add("ours", ours | throughput(ours["tokens"], ours["seconds"], flops, peak))
        trainers = report.phase("trainers", lambda: train_trainers(
            recipe, tokenizer, examples, args.steps, args.baseline_batch or args.micro_batch))
        for name, key in (("flat", "trainer_flat"), ("padded", "trainer")) if trainers else ():
            run = trainers[name]
            report.add(key, run | throughput(run["tokens"], run["seconds"], flops, peak))
    report.phase("cap", lambda: train_capped(recipe, tokenizer, args.cap_steps))
    if ours:
        report.phase("serve", lambda: serve(work / "model", adapter_dir, args.levels, args.requests))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = Report(args.out, args.budget_s)
    report.add("args", {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()})
    report.add("device", device_facts(args.peak_tflops))
    dims = SHAPES[args.shape]
    root = args.work_dir or work_root(2 * (base_params(dims) + dims["hidden_size"] * dims["vocab_size"]))
    work = Path(tempfile.mkdtemp(prefix="gpu-check-", dir=root))
    try:
        if report.phase("model", lambda: build_model(args.shape, work / "model")):
            measure(args, report, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.add("summary", summary(report.figures))
    print("\n".join(report.figures["summary"]))
    print(f"total {report.elapsed():.1f} s")
    return 1 if report.figures["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
