"""Which PEFT technique under this budget? Every method of the recipe's [peft] table on the same
data, the same budget and the same evaluation.

Each method is a real budgeted run of `python -m train` (the same recipe: the tiny CPU recipe's
training tasks, no packing and no gradient checkpointing for every method, since prompt, P- and
prefix tuning need the one and prefix tuning the other, so every method sees the same batches;
only [peft] and the learning rate change: --lora-lr for the LoRA family (3e-3 as in configs/tiny-cpu.toml;
the SmolLM2 recipe's is 1e-3), 3e-2 for IA3 and the virtual-token methods, whose few parameters move slowly; not tuned further).
Its adapter is then loaded the way the submission server loads it (merged, or virtual tokens as a
KV prefix) and served in-process by the server's engine, every evaluation request at once (so
batched): exact match of the greedy answer on fresh records of the training tasks (seed 1000, the
training data's is 0) and on the held-out tasks no recipe trains on, base model first. Prints
trainable parameters, training tokens/s (median over steps, the first left out), peak memory
(resident on the CPU, allocated on CUDA), final loss (mean of the last 5 steps), scores base ->
tuned and the server's generated tokens/s with that adapter (32 prose prompts, 16 new tokens each)
against the base's on the same work, measured again just before it (so the ratio is of one moment's load). Training runs one after another on
a machine that may be shared: compare tokens/s within one run of this script only.

    python bench/peft_methods.py [--base embedded:tiny-llama] [--budget 60s] [--methods lora,ia3,...]
                                 [--eval 30] [--lora-lr 3e-3] [--threads N] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.generated import TASKS
from train.recipe import LORA_FAMILY, PEFT_METHODS, VIRTUAL_TOKENS

TRAIN_TASKS = {"mc_largest": 1.0, "mc_arith": 1.0, "mc_next_letter": 1.0, "arith_qa": 1.0,
               "count_letter_qa": 1.0, "reverse_word_qa": 0.5}  # configs/tiny-cpu.toml's mix
HELD_OUT = [name for name, task in TASKS.items() if task.held_out]
EVAL_SEED = 1000
OTHERS_LR = 3e-2  # IA3 and the virtual-token methods


def recipe_text(base: str, method: str, lora_lr: float) -> str:
    sources = "".join(f'\n[[data]]\nkind = "generated"\nname = "{name}"\nweight = {weight}\nmax_examples = 400\n'
                      for name, weight in TRAIN_TASKS.items())
    return (f'name = "peft-{method}"\n\n[model]\nbase = "{base}"\nquantization = "nf4"\n'
            # SmolLM2 is instruction-tuned, which the competition refuses; the comparison is of methods
            'allow_unapproved = true\n\n'
            f'[peft]\nmethod = "{method}"\n\n[train]\nmax_seq_len = 256\nmicro_batch_size = 8\n'
            f'lr = {lora_lr if method in LORA_FAMILY else OTHERS_LR}\nschedule = "cosine"\npacking = false\ngradient_checkpointing = false\n'
            + sources)


def train(base: str, method: str, budget: str, folder: Path, lora_lr: float) -> dict:
    """One budgeted run; its figures from summary.json and metrics.jsonl."""
    recipe = folder / f"{method}.toml"
    recipe.write_text(recipe_text(base, method, lora_lr))
    run = folder / method
    proc = subprocess.run([sys.executable, "-m", "train", "--config", str(recipe), "--budget", budget,
                           "--output-dir", str(run)], cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode not in (0, 3):  # 3: a hard stop at the deadline; the last checkpoint's adapter is the result
        raise RuntimeError(f"{method}: training exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    summary = json.loads((run / "summary.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"adapter": str(run / "adapter"), "stop": summary["stop_reason"], "steps": summary["steps"],
            "tokens": summary["tokens"],
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows[1:] or rows),
            "peak_mem_mib": max(r["peak_mem_mib"] for r in rows),
            "final_loss": statistics.fmean(r["loss"] for r in rows[-5:])}


def eval_records(count: int) -> dict[str, list[dict]]:
    """Fresh records of the training tasks ("seen") and of the held-out tasks."""
    return {"seen": [r for name in TRAIN_TASKS for r in TASKS[name].make(count, EVAL_SEED)],
            "held_out": [r for name in HELD_OUT for r in TASKS[name].make(count, EVAL_SEED)]}


THROUGHPUT_ROWS, THROUGHPUT_TOKENS = 32, 16  # the serving-speed pass: the same work for every adapter
PROSE = REPO / "core" / "assets" / "prose.txt"


def prose_prompts(count: int) -> list[str]:
    """Sentences of the bundled prose: text every model continues (an answer prompt is often ended
    at once by a base model's end-of-sequence token, which would leave nothing to time)."""
    lines = [line.strip() for line in PROSE.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [f"{lines[i % len(lines)]} {lines[(7 * i + 3) % len(lines)]}" for i in range(count)]


def serve_and_score(base: str, adapter: str | None, records: dict[str, list[dict]], threads: int,
                    score: bool = True) -> dict:
    """Exact match of the served model's greedy answers (all requests at once, so batched; with
    `score`), and its generated tokens/s on the same work for every adapter: THROUGHPUT_ROWS prose
    prompts, THROUGHPUT_TOKENS new tokens each, no stop sequence and end-of-sequence ignored (a tuned
    model's one-token answers would make the figure one of prompt processing)."""
    from submission.api import ProcessRequest
    from submission.engine import Engine
    from submission.loading import load
    from submission.settings import Settings

    settings = Settings(model=base, adapter=adapter, threads=threads)
    model, tokenizer, _ = load(settings)
    engine = Engine(model, tokenizer, settings)
    everything = [r for group in records.values() for r in group]
    try:
        answers = [f.result(timeout=600) for f in [
            engine.submit(ProcessRequest(prompt=r["prompt"], max_new_tokens=8, temperature=0.0, stop_sequences=["\n"]))
            for r in everything]] if score else []
        started = time.perf_counter()
        timed = [f.result(timeout=600) for f in [
            # past end-of-sequence: every adapter does the same work (a tuned model stops early)
            engine.submit(ProcessRequest(prompt=prompt, max_new_tokens=THROUGHPUT_TOKENS, temperature=0.0),
                          ignore_eos=True)
            for prompt in prose_prompts(THROUGHPUT_ROWS)]]
        seconds = time.perf_counter() - started
    finally:
        engine.close()
    right = [a["text"].strip() == r["completion"].strip() for a, r in zip(answers, everything)]
    scores, at = {}, 0
    for name, group in records.items() if score else ():
        scores[name] = sum(right[at:at + len(group)]) / len(group)
        at += len(group)
    return {**scores, "serve_tokens_per_s": sum(len(a["tokens"]) for a in timed) / seconds}


def trainable_count(base: str, method: str, folder: Path) -> int:
    from train.budget.plan import shape_of, trainable_params
    from train.recipe import load_recipe

    return trainable_params(shape_of(base), load_recipe(folder / f"{method}.toml"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="embedded:tiny-llama")
    parser.add_argument("--budget", default="60s", help="each method's training budget")
    parser.add_argument("--methods", default=",".join(PEFT_METHODS))
    parser.add_argument("--eval", type=int, default=30, help="evaluation records per task")
    parser.add_argument("--lora-lr", type=float, default=3e-3,
                        help="learning rate of the LoRA family (configs/tiny-cpu.toml's; smollm2-cpu.toml's is 1e-3)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads while serving (0: torch's default)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(PEFT_METHODS))
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)} (known: {', '.join(PEFT_METHODS)})")
    records = eval_records(args.eval)
    results = {"base": serve_and_score(args.base, None, records, args.threads), "methods": {}}
    print(f"base: {results['base']}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            try:
                figures = train(args.base, method, args.budget, Path(tmp), args.lora_lr)
                figures["trainable"] = trainable_count(args.base, method, Path(tmp))
                # The base served again beside each adapter: the throughput ratio is of one moment's load.
                figures["base_serve_tokens_per_s"] = serve_and_score(args.base, None, records, args.threads,
                                                                     score=False)["serve_tokens_per_s"]
                figures.update(serve_and_score(args.base, figures.pop("adapter"), records, args.threads))
            except Exception as err:  # noqa: BLE001 - one method's failure is a row of the table, not the end of the run
                figures = {"error": str(err)[-2000:]}
            results["methods"][method] = figures
            print(f"{method} done: {figures}", file=sys.stderr, flush=True)
            if args.json:  # as it goes: a later method's failure keeps the earlier ones
                args.json.write_text(json.dumps(results, indent=1))
    print(table(results, args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def table(results: dict, args) -> str:
    base = results["base"]
    lines = [(f"base {args.base}, {args.budget} of training per method, {args.eval} evaluation records per task "
              f"(seen: {len(TRAIN_TASKS)} training tasks, fresh records; held out: {', '.join(HELD_OUT)})"), "",
             ("| method | trainable | steps | train tok/s | peak MiB | final loss | seen: base -> tuned "
              "| held out: base -> tuned | serve tok/s (vs base) |"), "|---|---:|---:|---:|---:|---:|---|---|---|"]
    for method, f in results["methods"].items():
        if "error" in f:
            lines.append(f"| {method} | failed: {f['error'].splitlines()[-1][:200]} |||||||")
            continue
        lines.append(
            f"| {method}{' (virtual tokens)' if method in VIRTUAL_TOKENS else ''} | {f['trainable']:,} "
            f"| {f['steps']}{'' if f['stop'] == 'budget' else ' (' + f['stop'] + ')'} "
            f"| {f['tokens_per_s']:,.0f} | {f['peak_mem_mib']:,.0f} | {f['final_loss']:.3f} "
            f"| {base['seen']:.1%} -> {f['seen']:.1%} | {base['held_out']:.1%} -> {f['held_out']:.1%} "
            f"| {f['serve_tokens_per_s']:,.0f} ({f['serve_tokens_per_s'] / f['base_serve_tokens_per_s']:.2f}x) |")
    ran = {m: f for m, f in results["methods"].items() if "error" not in f}
    if not ran:
        return "\n".join(lines)
    best = max(ran.items(), key=lambda item: item[1]["seen"])
    lines += ["", f"best on the seen tasks: {best[0]} ({best[1]['seen']:.1%})"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
