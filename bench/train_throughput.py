"""Training throughput (non-pad tokens/s) of the project's step against a plain Trainer + peft baseline.

Both sides use the same model, NF4 + LoRA settings, data (the recipe's sources), micro-batch size
(rows per step) and number of optimizer steps:
- ours: `train.loop.train_step` over `train.data` batches (packed rows when the recipe packs);
- baseline: a plain `transformers.Trainer` on a QLoRA model loaded the usual way, one example per
  row, padded to the longest in the batch by `DataCollatorForSeq2Seq` (no packing).
Repeats alternate which side runs first, so drifting machine load hits both alike; the first step of
every run is a warm-up and is not timed; the ratio is of the medians. Also prints packing efficiency
(non-pad tokens / token slots) of packed rows against pad-to-longest batches on the same data.

    python bench/train_throughput.py [--config configs/tiny-cpu.toml] [--steps 10] [--repeats 3] [--threads N]
                                     [--json FILE]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from train.data import build_examples, make_batches
from train.loop import train_step
from train.model import (
    attention_implementation,
    compute_dtype,
    device,
    load_model,
    load_tokenizer,
    make_optimizer,
)
from train.packing import Batches, Example
from train.recipe import Recipe, load_recipe
from train.tiny import resolve_model_id

# The recipe's optimizer names as TrainingArguments spells them.
TRAINER_OPTIMIZERS = {"paged_adamw_8bit": "paged_adamw_8bit", "adamw_8bit": "adamw_8bit", "adamw": "adamw_torch"}


def with_train(recipe: Recipe, **changes) -> Recipe:
    return dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, **changes))


def packing_efficiency(recipe: Recipe, tokenizer) -> dict:
    """Non-pad tokens / slots over one epoch, packed rows against pad-to-longest batches."""
    figures = {}
    for name, packing in (("packed", True), ("pad_to_longest", False)):
        tokens, slots = make_batches(with_train(recipe, packing=packing), tokenizer).token_stats()
        figures[name] = {"tokens": tokens, "slots": slots, "efficiency": tokens / slots}
    figures["ratio"] = figures["packed"]["efficiency"] / figures["pad_to_longest"]["efficiency"]
    return figures


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_ours(model, optimizer, batches: Batches, recipe: Recipe, steps: int, position: int) -> tuple[int, float]:
    """(non-pad tokens, seconds) of `steps` optimizer steps after one untimed warm-up step, timed
    like the real loop: from fetching the micro-batches to the end of the optimizer step."""
    t = recipe.train
    stream = batches.from_position(position)
    model.train()
    tokens, seconds = 0, 0.0
    for step in range(steps + 1):
        sync()
        started = time.perf_counter()
        micro = [next(stream) for _ in range(t.grad_accum)]
        count = sum(int(b.pop("num_tokens")) for b in micro)
        train_step(model, optimizer, micro, t.lr, t.max_grad_norm)
        sync()
        if step > 0:
            tokens += count
            seconds += time.perf_counter() - started
    return tokens, seconds


def load_plain_qlora(recipe: Recipe):
    """The QLoRA model as a typical Trainer script builds it, with the recipe's settings."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    m, lora = recipe.model, recipe.lora
    dtype = compute_dtype(m.compute_dtype)
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model_id(m.base), dtype=dtype, attn_implementation=attention_implementation(m.attention),
        device_map={"": device()},
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=m.double_quant,
            bnb_4bit_compute_dtype=dtype))
    model.config.use_cache = False
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=recipe.train.gradient_checkpointing)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.targets,
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


class CountingCollator:
    """Pad-to-longest collation that records each batch's non-pad tokens in the order batches are
    made, which is the order the Trainer consumes them (prefetching only calls it earlier)."""

    def __init__(self, tokenizer):
        from transformers import DataCollatorForSeq2Seq

        self.pad = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
        self.tokens: list[int] = []

    def __call__(self, features: list[dict]) -> dict:
        batch = self.pad(features)
        self.tokens.append(int(batch["attention_mask"].sum()))
        return batch


def time_trainer(model, tokenizer, examples: list[Example], recipe: Recipe, steps: int, seed: int) -> tuple[int, float]:
    """(non-pad tokens, seconds) of a Trainer's optimizer steps 2..steps+1 (step 1 is the warm-up)."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    t = recipe.train
    marks: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            sync()
            marks.append(time.perf_counter())

    collator = CountingCollator(tokenizer)
    dataset = [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]
    with tempfile.TemporaryDirectory(prefix="trainer-baseline-") as out:
        args = TrainingArguments(
            output_dir=out, max_steps=steps + 1, per_device_train_batch_size=t.micro_batch_size,
            gradient_accumulation_steps=t.grad_accum, learning_rate=t.lr, lr_scheduler_type="constant",
            weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm, optim=TRAINER_OPTIMIZERS[t.optimizer],
            neftune_noise_alpha=t.neftune_alpha or None,
            gradient_checkpointing=t.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False}, logging_steps=10**6, save_strategy="no",
            report_to="none", disable_tqdm=True, dataloader_num_workers=0, seed=seed, data_seed=seed,
            use_cpu=not torch.cuda.is_available(), remove_unused_columns=False)
        Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                callbacks=[StepClock()]).train()
    if len(marks) != steps + 1:
        raise RuntimeError(f"the Trainer ran {len(marks)} optimizer steps, expected {steps + 1}")
    tokens = sum(collator.tokens[t.grad_accum:(steps + 1) * t.grad_accum])
    return tokens, marks[-1] - marks[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="recipe file (default: configs/tiny-cpu.toml)")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per run (after one warm-up)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side, alternating which goes first")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default; on a loaded machine 1 avoids thread thrash)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.steps < 1 or args.repeats < 1 or args.threads < 0:
        parser.error("--steps and --repeats must be at least 1, --threads not negative")
    if args.threads:
        torch.set_num_threads(args.threads)

    recipe = load_recipe(args.config)
    tokenizer = load_tokenizer(recipe.model.base)
    packing = packing_efficiency(recipe, tokenizer)
    print(f"packing efficiency (non-pad tokens / slots) on {recipe.name}'s data:")
    for name in ("packed", "pad_to_longest"):
        p = packing[name]
        print(f"  {name:15s} {p['efficiency']:.3f}  ({p['tokens']} tokens in {p['slots']} slots)")
    print(f"  ratio           {packing['ratio']:.2f}x")

    batches = make_batches(recipe, tokenizer)
    examples = build_examples(recipe, tokenizer)
    ours = load_model(recipe)
    optimizer = make_optimizer(recipe, ours)
    baseline = load_plain_qlora(recipe)
    runs: dict[str, list[float]] = {"ours": [], "trainer": []}
    position = 0
    for repeat in range(args.repeats):
        order = ("ours", "trainer") if repeat % 2 == 0 else ("trainer", "ours")
        for side in order:
            if side == "ours":
                tokens, seconds = time_ours(ours, optimizer, batches, recipe, args.steps, position)
                position += (args.steps + 1) * recipe.train.grad_accum
            else:
                tokens, seconds = time_trainer(baseline, tokenizer, examples, recipe, args.steps, seed=repeat)
            runs[side].append(tokens / seconds)
            print(f"repeat {repeat + 1} {side:8s} {tokens / seconds:10.1f} tokens/s  ({tokens} tokens, {seconds:.2f} s)")
    median = {side: statistics.median(values) for side, values in runs.items()}
    ratio = median["ours"] / median["trainer"]
    print(f"median non-pad tokens/s over {args.repeats} repeats of {args.steps} steps "
          f"(micro-batch {recipe.train.micro_batch_size}, grad_accum {recipe.train.grad_accum}, "
          f"{torch.get_num_threads()} threads, {device()}):")
    labels = {"ours": f"ours (train_step, packing {'on' if recipe.train.packing else 'off'})",
              "trainer": "Trainer + peft (pad to longest)"}
    for side, label in labels.items():
        print(f"  {label:35s} {median[side]:10.1f}")
    print(f"  {'ratio ours / Trainer':35s} {ratio:10.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"recipe": recipe.name, "steps": args.steps, "repeats": args.repeats,
                                         "threads": torch.get_num_threads(), "device": str(device()),
                                         "packing": packing, "tokens_per_s": runs, "median": median,
                                         "ratio": ratio}, indent=2) + "\n")


if __name__ == "__main__":
    main()
