"""The one prepared device script: what a single CUDA card (an H100 or H200) can settle for this
project, in one process, in under 8 minutes, written to one JSON (--out) that bench/RESULTS.md's GPU
table reads. It imports only what it uses: no datasketch (the device image has none; the check's
recipe deduplicates nothing), no web server stack.

Phases (each printed and written to --out as it finishes; a phase that would start after --budget-s
seconds is skipped and says so; a phase that fails is recorded and the rest still run, exit 1):
1. model: a Llama-architecture model with random weights (--shape; 7b is Mistral-7B's shape), made
   directly on the device in bf16 and saved to local disk (/dev/shm when it has room), with the
   embedded tokenizer (padded with filler tokens up to the model's vocabulary);
2. cap: our step under the rtx4090-24gb track's memory cap (train.budget.limits.apply_gpu_limits:
   the track's card less the CUDA context and the paged optimizer state): does the 4090 recipe fit?
   It runs first, while the card holds nothing but the context, so no earlier phase's paged buffers
   or cached blocks are counted as context. (CPU: nothing to enforce, the peak is compared.)
3. ours: `train.model.load_model` (NF4 + double quant, prepare_model_for_kbit_training, LoRA) and
   `train.run.loop.train_step` over packed `train.data.packing` rows, gradient checkpointing, paged
   AdamW 8-bit, bf16 autocast and TF32 on CUDA as the training loop sets them; the settings of
   configs/mistral-7b-qlora-4090.toml except the model, data (the bundled generated tasks),
   grad_accum (1) and the shape flags; one warm-up step, then --steps timed steps; beside the peak,
   `train.budget.plan`'s memory plan for the same shape and recipe; then a resume: the optimizer
   state saved and loaded as checkpoints do, one more step, what that adds to the allocator and
   whether the state is still paged;
4. serve: the adapter trained in phase 3 served by submission.engine (loaded by submission.loading,
   as the server does): the server's memory plan from the free memory before and after releasing
   the allocator's cache, then the judges' request mix (bench/server_throughput.py's workload) at
   concurrency 1 and 30, against one-at-a-time `generate` (bench/server_baseline.py's handler) on
   the same model and requests. Random weights emit neither EOS nor a stop sequence, so every
   generation runs to its max_new_tokens on both sides (the share is reported);
5. trainers: a plain transformers Trainer + peft on the same model, settings and precision
   (bf16=True on CUDA), loaded once, run twice: padding-free (`DataCollatorWithFlattening`, as many
   examples per step as fill our packed micro-batch: the fair baseline) and padded (pad-to-longest
   batches of --micro-batch examples, or --baseline-batch: the usual script).

Figures: non-pad tokens/s, peak memory, MFU and HFU with the FLOPs per token stated (frozen NF4
base: model FLOPs 2N forward + 2N backward through the frozen weights + 6 per LoRA parameter +
attention; gradient checkpointing recomputes the forward, so hardware FLOPs add 2N + 2 per LoRA
parameter + one more attention forward: about 6N; N = non-embedding base parameters + lm_head).

    python bench/gpu_check.py [--cpu] [--shape 7b|3b|1b|tiny] [--steps 8] [--budget-s 300] [--out FILE]

With no CUDA device (or --cpu) it runs tiny shapes, a few steps and a few requests in about two minutes.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
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
from gpu_figures import (
    allocated_gib,
    base_params,
    device_facts,
    flops_per_token,
    on_cuda,
    peak_memory,
    release,
    summary,
    sync,
    throughput,
)
from train_throughput import (  # bench/ is on sys.path
    flat_batch_size,
    load_plain_qlora,
    time_ours,
    time_trainer,
)

from core.models import load_tokenizer
from core.rules import load_rules
from core.tiny import EMBEDDED_ID
from train.budget.limits import apply_gpu_limits
from train.budget.plan import memory_terms, paged_state_gib, shape_of
from train.data.packing import Batches, Example
from train.data.pipeline import build_examples, make_batches
from train.model import load_model, make_optimizer
from train.recipe import CONFIG_DIR, Recipe, load_recipe
from train.run.loop import autocast_dtype, train_step

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


# ---- phases 2-4: training ------------------------------------------------------------------------

def check_recipe(args, folder: Path) -> Recipe:
    """The 4090 recipe on the built model and the bundled generated tasks (the tiny default's mix)."""
    real, tiny = load_recipe(GPU_RECIPE), load_recipe(CONFIG_DIR / "tiny-cpu.toml")
    data = [dataclasses.replace(s, max_examples=args.examples) for s in tiny.data]
    lora = real.lora if not args.lora_r else dataclasses.replace(real.lora, r=args.lora_r, alpha=2 * args.lora_r)
    return dataclasses.replace(
        real, name="gpu-check", data=data, lora=lora,
        model=dataclasses.replace(real.model, base=str(folder)),
        train=dataclasses.replace(real.train, max_seq_len=args.seq_len, micro_batch_size=args.micro_batch,
                                  grad_accum=1, epochs=0.0, max_steps=0))


def train_ours(recipe: Recipe, tokenizer, steps: int, adapter_dir: Path | None, resume: bool = True) -> dict:
    release()
    started = time.perf_counter()
    model = load_model(recipe)
    optimizer = make_optimizer(recipe, model)
    load_s = time.perf_counter() - started
    lora_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    batches = make_batches(recipe, tokenizer)
    tokens, seconds = time_ours(model, optimizer, batches, recipe, steps, 0)
    result = {"load_s": load_s, "micro_batch": recipe.train.micro_batch_size, "lora_params": lora_params,
              "tokens": tokens, "seconds": seconds, **peak_memory(), **planned_memory(recipe)}
    if resume:
        result["resume"] = resumed_optimizer(recipe, model, optimizer, batches, steps + 1)
    if adapter_dir is not None:
        model.save_pretrained(adapter_dir)
    del model, optimizer
    release()
    return result


def resumed_optimizer(recipe: Recipe, model, optimizer, batches: Batches, position: int) -> dict:
    """The optimizer state saved and loaded as checkpoints do (train.run.checkpoint: torch.save,
    torch.load, load_state_dict), then one step: what it adds to the caching allocator (bitsandbytes
    moves loaded state to the device as ordinary tensors, not paged ones) and whether it is still
    paged. The plan subtracts the paged state from the cap, so a resumed run, which holds it in the
    allocator instead, needs the same card."""
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    optimizer.zero_grad(set_to_none=True)
    del optimizer
    release()
    before = allocated_gib()
    fresh = make_optimizer(recipe, model)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=False))
    batch = next(batches.from_position(position))
    batch.pop("num_tokens")
    train_step(model, fresh, [batch], recipe.train.lr, recipe.train.max_grad_norm, autocast_dtype(recipe))
    sync()
    after = allocated_gib()
    tensors = [v for state in fresh.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    return {"state_gib": buffer.getbuffer().nbytes / 2**30, "plan_paged_gib": paged_state_gib(recipe),
            "allocated_delta_gib": None if before is None else after - before,
            "paged_after_load": any(getattr(t, "is_paged", False) for t in tensors)}


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
        result = train_ours(recipe, tokenizer, steps, None, resume=False)
        return {"track": CAP_TRACK, "cap_gib": track.gpu_memory_gib, "enforced": False,
                "fits": result["peak_reserved_gib"] <= track.gpu_memory_gib, **result,
                "note": "no CUDA device: the process's peak RSS is compared with the cap"}
    release()
    notes = apply_gpu_limits(track, paged_state_gib(recipe))
    try:
        result = train_ours(recipe, tokenizer, steps, None, resume=False)
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
    return {"concurrency": concurrency, "requests": len(requests), "seconds": elapsed, "generated_tokens": generated,
            "requests_per_s": len(requests) / elapsed, "generated_tokens_per_s": generated / elapsed,
            "p50_latency_s": statistics.median(latencies)}


def serve(folder: Path, adapter_dir: Path, levels: list[int], counts: list[int], baseline_count: int) -> dict:
    """The server's memory plan and bursts of judges'-style requests through the submission engine,
    in process; then the last level's first `baseline_count` requests one at a time through
    `generate`, as the official samples served them."""
    import server_baseline  # bench/server_baseline.py: the samples' handler
    from server_throughput import workload  # bench/server_throughput.py: the HELM-shaped request mix

    from submission.api import ProcessRequest
    from submission.engine import Engine
    from submission.loading import load
    from submission.settings import Settings

    release()
    settings = Settings(model=str(folder), adapter=str(adapter_dir))
    started = time.perf_counter()
    model, tokenizer, quant = load(settings)
    unreleased = torch.cuda.mem_get_info()[0] if on_cuda() else None  # what the plan read before issue 25
    engine = Engine(model, tokenizer, settings)
    result: dict = {"quant": quant, "load_s": time.perf_counter() - started, "levels": [],
                    "plan": server_plan(engine, settings, unreleased)}
    try:
        engine.submit(ProcessRequest(**workload(1, seed=999)[0])).result()  # warm-up
        asked = done = 0
        for level, count in zip(levels, counts):
            requests = [ProcessRequest(**body) for body in workload(count, seed=level)]
            result["levels"].append(burst(engine, requests, level))
            asked += sum(r.max_new_tokens for r in requests)
            done += result["levels"][-1]["generated_tokens"]
        result["full_length_share"] = done / asked
        result |= peak_memory()
    finally:
        engine.close()
        del engine
        release()
    server_baseline.state |= {"model": model, "tokenizer": tokenizer}
    try:
        result["baseline"] = one_at_a_time(server_baseline.process, requests[:baseline_count])
    finally:
        server_baseline.state.clear()
        del model
        release()
    return result


def server_plan(engine, settings, unreleased: int | None) -> dict:
    """The engine's plan (from memory released first) beside the plan the same free-memory reading
    would give without releasing the allocator's cache (CUDA only; None on the CPU)."""
    from submission.memory import plan

    figures = {"free_gib": engine.memory.free_bytes / 2**30, "batch_tokens": engine.memory.batch_tokens,
               "prefix_cache_tokens": engine.memory.prefix_cache_tokens,
               "unreleased_free_gib": None, "unreleased_batch_tokens": None}
    if unreleased is not None:
        figures["unreleased_free_gib"] = unreleased / 2**30
        try:
            figures["unreleased_batch_tokens"] = plan(unreleased, engine.model.config, engine.dtype, settings,
                                                      engine.context).batch_tokens
        except ValueError as err:
            figures["unreleased_batch_tokens"] = str(err)
    return figures


def one_at_a_time(process: Callable, requests: list) -> dict:
    begin = time.perf_counter()
    generated = sum(len(process(request)["tokens"]) for request in requests)
    elapsed = time.perf_counter() - begin
    return {"requests": len(requests), "seconds": elapsed, "requests_per_s": len(requests) / elapsed,
            "generated_tokens_per_s": generated / elapsed}


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
    parser.add_argument("--baseline-requests", type=int,
                        help="of the last level's requests, how many one-at-a-time generate serves (default 16 / 4)")
    parser.add_argument("--peak-tflops", type=float, help="peak for MFU (default: data sheet / measured)")
    parser.add_argument("--budget-s", type=float, default=300,
                        help="start no phase after this many seconds (default 300: the last phase ends well "
                        "inside 8 minutes on an H100/H200)")
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
                "requests": [2, 30] if cpu else [8, 60], "baseline_requests": 4 if cpu else 16,
                "threads": 1 if cpu else 0}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if len(args.requests) != len(args.levels):
        parser.error("give one --requests count per --levels entry")
    if args.threads < 0:
        parser.error("--threads must not be negative")
    if args.baseline_batch is not None and args.baseline_batch < 1:
        parser.error("--baseline-batch must be positive")
    if min(args.steps, args.cap_steps, args.seq_len, args.micro_batch, args.examples, args.baseline_requests,
           *args.levels, *args.requests) < 1:
        parser.error("--steps, --cap-steps, --seq-len, --micro-batch, --examples, --baseline-requests, --levels and"
                     " --requests must be positive")
    return args


def measure(args, report: Report, work: Path) -> None:
    """Phases 2-5 on the built model."""
    dims, peak = SHAPES[args.shape], report.figures["device"]["peak_tflops"]
    recipe = check_recipe(args, work / "model")
    tokenizer = load_tokenizer(recipe.model.base)
    examples = build_examples(recipe, tokenizer)
    adapter_dir = work / "adapter"
    # First, while the card holds only the CUDA context: apply_gpu_limits counts whatever else is
    # outside the allocator (a later phase's paged buffers) as context.
    report.phase("cap", lambda: train_capped(recipe, tokenizer, args.cap_steps))
    ours = report.phase("ours", lambda: train_ours(recipe, tokenizer, args.steps, adapter_dir))
    if ours:
        flops = flops_per_token(dims, ours["lora_params"], examples)
        report.add("flops", flops)
        report.add("ours", ours | throughput(ours["tokens"], ours["seconds"], flops, peak))
        report.phase("serve", lambda: serve(work / "model", adapter_dir, args.levels, args.requests,
                                            args.baseline_requests))
        trainers = report.phase("trainers", lambda: train_trainers(
            recipe, tokenizer, examples, args.steps, args.baseline_batch or args.micro_batch))
        for name, key in (("flat", "trainer_flat"), ("padded", "trainer")) if trainers else ():
            run = trainers[name]
            report.add(key, run | throughput(run["tokens"], run["seconds"], flops, peak))


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
