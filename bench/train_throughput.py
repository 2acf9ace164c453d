"""Training throughput (non-pad tokens/s) of the project's step against plain Trainer + peft baselines.

Every side uses the same model, NF4 + LoRA settings, data (the recipe's sources), precision (fp32,
or bf16 autocast with --autocast bf16, as Trainer(bf16=True)) and number of optimizer steps:
- ours: `train.run.loop.train_step` over `train.data.packing` batches (packed rows when the recipe packs);
- trainer-flat, the fair baseline: a plain `transformers.Trainer` on a QLoRA model loaded the usual
  way with transformers' padding-free `DataCollatorWithFlattening`, as many examples per step as
  carry the same tokens as our packed micro-batch: the ratio measures the implementation;
- trainer-padded: the same Trainer, micro-batch examples per step padded to the longest by
  `DataCollatorForSeq2Seq` (no packing): the usual script, far fewer tokens per step.
Repeats rotate which side runs first, so drifting machine load hits all alike; the first step of
every run is a warm-up and is not timed; ratios are of the medians. Also prints packing efficiency
(non-pad tokens / token slots) of packed rows against pad-to-longest batches on the same data.

`--precision` instead times our step in fp32 and under bf16 autocast on the same batches from the
same starting weights, and prints the loss of every step of both (bf16 is fast where the CPU has
AMX or AVX512-BF16; elsewhere torch emulates it).

    python bench/train_throughput.py [--config configs/tiny-cpu.toml] [--steps 10] [--repeats 3] [--threads N]
                                     [--autocast off|bf16] [--precision] [--json FILE]
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

from core.embedded import resolve_model_id
from core.models import attention_implementation, compute_dtype, device, load_tokenizer
from train.data.packing import Batches, Example
from train.data.pipeline import build_examples, make_batches
from train.model import load_model, make_optimizer
from train.recipe import Recipe, load_recipe
from train.run.loop import autocast_dtype, train_step

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


def time_ours(model, optimizer, batches: Batches, recipe: Recipe, steps: int, position: int,
              losses: list[float] | None = None) -> tuple[int, float]:
    """(non-pad tokens, seconds) of `steps` optimizer steps after one untimed warm-up step, timed
    like the real loop: from fetching the micro-batches to the end of the optimizer step. Every
    step's loss is appended to `losses` when given."""
    t = recipe.train
    autocast = autocast_dtype(recipe)
    stream = batches.from_position(position)
    model.train()
    tokens, seconds = 0, 0.0
    for step in range(steps + 1):
        sync()
        started = time.perf_counter()
        micro = [next(stream) for _ in range(t.grad_accum)]
        count = sum(int(b.pop("num_tokens")) for b in micro)
        loss = train_step(model, optimizer, micro, t.lr, t.max_grad_norm, autocast)
        sync()
        if losses is not None:
            losses.append(loss)
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
    """Pad-to-longest (`flat` False) or padding-free (`flat` True) collation that records each
    batch's non-pad tokens in the order batches are made, which is the order the Trainer consumes
    them (prefetching only calls it earlier)."""

    def __init__(self, tokenizer, flat: bool, flash: bool = False):
        from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

        self.flat = flat
        self.collate = (DataCollatorWithFlattening(return_flash_attn_kwargs=flash) if flat else
                        DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100))
        self.tokens: list[int] = []

    def __call__(self, features: list[dict]) -> dict:
        batch = self.collate(features)
        self.tokens.append(batch["input_ids"].numel() if self.flat else int(batch["attention_mask"].sum()))
        return batch


def flat_batch_size(recipe: Recipe, examples: list[Example], packed_efficiency: float) -> int:
    """Examples per step for the padding-free Trainer: as many as fill our packed micro-batch."""
    t = recipe.train
    mean_length = sum(len(e.input_ids) for e in examples) / len(examples)
    return max(1, round(t.micro_batch_size * t.max_seq_len * packed_efficiency / mean_length))


def time_trainer(model, tokenizer, examples: list[Example], recipe: Recipe, steps: int, seed: int,
                 flat: bool = False) -> tuple[int, float]:
    """(non-pad tokens, seconds) of a Trainer's optimizer steps 2..steps+1 (step 1 is the warm-up),
    micro_batch_size examples per step, padded (`flat` False) or flattened into one row; in bf16
    (Trainer(bf16=True)) when our step would autocast to bf16."""
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.utils.generic import is_flash_attention_requested

    t = recipe.train
    marks: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            sync()
            marks.append(time.perf_counter())

    collator = CountingCollator(tokenizer, flat, is_flash_attention_requested(model.config))
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
            use_cpu=not torch.cuda.is_available(), remove_unused_columns=False,
            bf16=autocast_dtype(recipe) is not None)
        Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                callbacks=[StepClock()]).train()
    if len(marks) != steps + 1:
        raise RuntimeError(f"the Trainer ran {len(marks)} optimizer steps, expected {steps + 1}")
    tokens = sum(collator.tokens[t.grad_accum:(steps + 1) * t.grad_accum])
    return tokens, marks[-1] - marks[0]


def compare_ours(recipe: Recipe, batches: Batches, steps: int, repeats: int) -> dict:
    """Our step with autocast off and bf16, the same batches from the same starting weights each
    repeat (the model reloads with the same seed): tokens/s and every step's loss."""
    figures: dict = {"tokens_per_s": {"fp32": [], "bf16": []}, "losses": {"fp32": [], "bf16": []}}
    for repeat in range(repeats):
        order = ("fp32", "bf16") if repeat % 2 == 0 else ("bf16", "fp32")
        for name in order:
            side = with_train(recipe, autocast="off" if name == "fp32" else "bf16")
            torch.manual_seed(repeat)
            model = load_model(side)
            losses: list[float] = []
            tokens, seconds = time_ours(model, make_optimizer(side, model), batches, side, steps, 0, losses)
            figures["tokens_per_s"][name].append(tokens / seconds)
            if repeat == 0:
                figures["losses"][name] = losses
            print(f"repeat {repeat + 1} {name:5s} {tokens / seconds:10.1f} tokens/s  ({tokens} tokens, {seconds:.2f} s)",
                  flush=True)
            del model
    median = {name: statistics.median(values) for name, values in figures["tokens_per_s"].items()}
    full, half = figures["losses"]["fp32"], figures["losses"]["bf16"]
    figures |= {"median": median, "ratio": median["bf16"] / median["fp32"],
                "max_rel_loss_diff": max(abs(b - f) / f for f, b in zip(full, half))}
    print(f"median tokens/s over {repeats} repeats of {steps} steps ({torch.get_num_threads()} threads, {device()}):")
    print(f"  ours, fp32                {median['fp32']:10.1f}")
    print(f"  ours, bf16 autocast       {median['bf16']:10.1f}")
    print(f"  ratio bf16 / fp32         {figures['ratio']:10.2f}x")
    print("loss per step (warm-up first), fp32 / bf16: "
          + ", ".join(f"{f:.4f}/{b:.4f}" for f, b in zip(full, half)))
    print(f"largest relative loss difference: {figures['max_rel_loss_diff']:.2%}")
    return figures


def compare_sides(recipe: Recipe, tokenizer, batches: Batches, packing: dict, steps: int, repeats: int) -> dict:
    """Ours against the padding-free Trainer (the same tokens per step) and the padded Trainer."""
    examples = build_examples(recipe, tokenizer)
    ours = load_model(recipe)
    optimizer = make_optimizer(recipe, ours)
    baseline = load_plain_qlora(recipe)
    flat = with_train(recipe, micro_batch_size=flat_batch_size(recipe, examples, packing["packed"]["efficiency"]))
    sides = ("ours", "trainer_flat", "trainer_padded")
    runs: dict[str, list[float]] = {side: [] for side in sides}
    tokens_per_step: dict[str, int] = {}
    position = 0
    for repeat in range(repeats):
        for side in sides[repeat % 3:] + sides[:repeat % 3]:
            if side == "ours":
                tokens, seconds = time_ours(ours, optimizer, batches, recipe, steps, position)
                position += (steps + 1) * recipe.train.grad_accum
            else:
                tokens, seconds = time_trainer(baseline, tokenizer, examples, flat if side == "trainer_flat" else recipe,
                                               steps, seed=repeat, flat=side == "trainer_flat")
            runs[side].append(tokens / seconds)
            tokens_per_step[side] = tokens // steps
            print(f"repeat {repeat + 1} {side:14s} {tokens / seconds:10.1f} tokens/s  ({tokens} tokens, {seconds:.2f} s)",
                  flush=True)
    median = {side: statistics.median(values) for side, values in runs.items()}
    t = recipe.train
    print(f"median non-pad tokens/s over {repeats} repeats of {steps} steps (grad_accum {t.grad_accum}, "
          f"autocast {autocast_dtype(recipe) or 'off'}, {torch.get_num_threads()} threads, {device()}):")
    labels = {"ours": f"ours (train_step, packing {'on' if t.packing else 'off'}, micro-batch {t.micro_batch_size})",
              "trainer_flat": f"Trainer + peft, padding-free ({flat.train.micro_batch_size} examples/step)",
              "trainer_padded": f"Trainer + peft, padded ({t.micro_batch_size} examples/step)"}
    for side, label in labels.items():
        print(f"  {label:58s} {median[side]:10.1f}  ({tokens_per_step[side]} tokens/step)")
    ratios = {"ours/trainer_flat": median["ours"] / median["trainer_flat"],
              "ours/trainer_padded": median["ours"] / median["trainer_padded"]}
    for name, ratio in ratios.items():
        print(f"  ratio {name:52s} {ratio:10.2f}x")
    return {"tokens_per_s": runs, "median": median, "tokens_per_step": tokens_per_step,
            "flat_examples_per_step": flat.train.micro_batch_size, "ratios": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny-cpu.toml", help="recipe file (default: configs/tiny-cpu.toml)")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per run (after one warm-up)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side, rotating which goes first")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default; on a loaded machine 1 avoids thread thrash)")
    parser.add_argument("--autocast", choices=("auto", "off", "bf16"),
                        help="every side's precision (default: the recipe's train.autocast)")
    parser.add_argument("--precision", action="store_true", help="time our step in fp32 against bf16 autocast")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.steps < 1 or args.repeats < 1 or args.threads < 0:
        parser.error("--steps and --repeats must be at least 1, --threads not negative")
    if args.threads:
        torch.set_num_threads(args.threads)

    recipe = load_recipe(args.config)
    if args.autocast:
        recipe = with_train(recipe, autocast=args.autocast)
    tokenizer = load_tokenizer(recipe.model.base)
    batches = make_batches(recipe, tokenizer)
    figures: dict = {"recipe": recipe.name, "steps": args.steps, "repeats": args.repeats,
                     "threads": torch.get_num_threads(), "device": str(device())}
    if args.precision:
        figures["precision"] = compare_ours(recipe, batches, args.steps, args.repeats)
    else:
        packing = packing_efficiency(recipe, tokenizer)
        print(f"packing efficiency (non-pad tokens / slots) on {recipe.name}'s data:")
        for name in ("packed", "pad_to_longest"):
            p = packing[name]
            print(f"  {name:15s} {p['efficiency']:.3f}  ({p['tokens']} tokens in {p['slots']} slots)")
        print(f"  ratio           {packing['ratio']:.2f}x")
        figures |= {"packing": packing, "autocast": recipe.train.autocast,
                    **compare_sides(recipe, tokenizer, batches, packing, args.steps, args.repeats)}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
