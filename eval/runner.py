"""`python -m eval run`: evaluate one entry (a server, or a local model) on a suite of scenarios.

For each scenario: write its lm-eval tasks (YAML + JSONL documents) under `--out/tasks/<scenario>`,
run them with lm-eval, write lm-eval's results to `--out/<scenario>.json` (the per-instance samples
beside it), and reduce the per-task scores to the HELM metrics (the mean over a scenario's tasks, e.g.
over MMLU's subjects). Each scenario's rows of the entry in the results database are replaced, in one
transaction, as soon as it finishes: a failure or Ctrl-C midway keeps what finished, and the entry's
other scenarios keep their earlier results.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import time
from collections import defaultdict
from pathlib import Path

from core.prompts import DEFAULT_PROMPT_FORMAT, PROMPT_FORMATS
from eval.scenarios import SCENARIOS, SUITES, Scenario, suite
from eval.task_files import write_task
from eval.task_spec import MissingData, TaskSpec

# The lm-eval metric each scoring template reports.
SCORE_KEYS = {"exact_match": "em", "quasi_exact_match": "em", "final_token": "em", "rouge2": "rouge2",
              "rouge2_bias": "rouge2", "math_equiv": "equiv"}
# Metrics HELM computes over a whole run, by template: lm-eval's key -> the HELM name after the group.
RUN_METRICS = {"rouge2_bias": {"stereotypes_race": "Stereotypes (race)", "stereotypes_gender": "Stereotypes (gender)",
                               "representation_race": "Representation (race)",
                               "representation_gender": "Representation (gender)"}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--server", metavar="URL[,URL...]",
                        help="a server speaking the competition API (several: servers of one entry sharing the work)")
    target.add_argument("--model", metavar="PATH", help="a local HF model folder, hub id or embedded:tiny-llama")
    parser.add_argument("--api", choices=("challenge", "openai"), default="challenge",
                        help="what --server speaks: the competition's API (default) or OpenAI's /v1/completions")
    parser.add_argument("--adapter", metavar="DIR", help="PEFT adapter merged into --model")
    parser.add_argument("--prompt-format", choices=PROMPT_FORMATS, default=DEFAULT_PROMPT_FORMAT,
                        help="raw: the judges' prompts as their client sends them (default) | chat: each wrapped "
                             "in the tokenizer's chat template (eval/prompt_format.py)")
    parser.add_argument("--tokenizer", metavar="MODEL",
                        help="with --server and --prompt-format chat: the model whose chat template is used")
    parser.add_argument("--name", required=True, metavar="ENTRY", help="the entry's name in the results database")
    parser.add_argument("--suite", choices=SUITES, default="quick", help="which scenarios (default: quick)")
    parser.add_argument("--scenarios", metavar="A,B", help="only these scenarios of the suite")
    parser.add_argument("--tasks", metavar="A,B", help="lm-eval's own tasks instead of the scenarios (loglikelihood "
                        "ones too); results under --out, not in the leaderboard (eval/lm_eval_tasks.py)")
    parser.add_argument("--include-path", metavar="DIR", help="with --tasks: lm-eval task YAML files to use "
                        "instead of lm-eval's registry")
    parser.add_argument("--limit", type=int, metavar="N", help="at most N instances per lm-eval task")
    parser.add_argument("--budget", action="append", default=[], metavar="SCENARIO=N",
                        help="evaluation instances of a scenario over all its tasks (default: the judges' "
                             "per-run budgets)")
    parser.add_argument("--concurrency", type=int, default=30, help="concurrent requests to each --server (30)")
    parser.add_argument("--batch-size", type=int, default=8, help="generation batch size for --model")
    parser.add_argument("--db", metavar="PATH", help="results database (default $HARNESS_DB or runs/leaderboard.sqlite)")
    parser.add_argument("--track", default="local", help="leaderboard track of the entry (default: local)")
    parser.add_argument("--out", metavar="DIR", help="where lm-eval's results go (default runs/eval/<ENTRY>)")
    parser.add_argument("--data", metavar="DIR", help="scenario data root (default $HARNESS_CACHE/eval-data)")


def select(args: argparse.Namespace) -> tuple[list[Scenario], dict[str, int | None]]:
    chosen = suite(args.suite)
    if args.scenarios:
        wanted = [s.strip() for s in args.scenarios.split(",") if s.strip()]
        unknown = [w for w in wanted if w not in SCENARIOS]
        if unknown:
            raise ValueError(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
        chosen = [SCENARIOS[w] for w in wanted]
    budgets: dict[str, int | None] = {s.name: None for s in chosen}  # None: the judges' per-run budgets
    for item in args.budget:
        name, _, count = item.partition("=")
        if name not in budgets or not count.isdigit() or int(count) < 1:
            raise ValueError(f"--budget {item!r}: expected SCENARIO=N with a positive N and one of {sorted(budgets)}")
        budgets[name] = int(count)
    return chosen, budgets


def make_model(args: argparse.Namespace):
    if args.server and args.api == "openai":
        from eval.openai_client import OpenAICompletionsAPI

        return OpenAICompletionsAPI(base_url=args.server, concurrency=args.concurrency)
    if args.server:
        from eval.client import ChallengeAPI

        return ChallengeAPI(base_url=args.server, concurrency=args.concurrency)
    from eval.local import load_local

    return load_local(args.model, args.adapter, batch_size=args.batch_size)


def with_prompt_format(args: argparse.Namespace, lm):
    """`lm` with its prompts in --prompt-format (raw: unchanged)."""
    if args.prompt_format == "raw":
        return lm
    source = args.model or args.tokenizer
    if not source:
        raise ValueError("--prompt-format chat with --server needs --tokenizer MODEL (whose chat template to use)")
    from core.models import load_tokenizer
    from eval.prompt_format import Formatted

    return Formatted(lm, load_tokenizer(source), args.prompt_format)


def evaluate(lm, specs: list[TaskSpec], task_dir: Path, limit: int | None) -> dict:
    """Run lm-eval on the written tasks; its results dict (with the per-instance samples)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    if task_dir.exists():
        shutil.rmtree(task_dir)  # stale tasks from an earlier run would be indexed too
    for spec in specs:
        write_task(spec, task_dir)
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    return lm_eval.simple_evaluate(
        model=lm, tasks=[s.name for s in specs], task_manager=manager, limit=limit,
        bootstrap_iters=0, log_samples=True,
    )


def helm_metrics(scenario: str, specs: list[TaskSpec], output: dict, seconds: float):
    """A scenario's HELM metrics: each the mean of its tasks' scores (HELM averages over subjects/runs).
    Perturbed copies count only in the worst-case robustness/fairness metrics (eval/worst_case.py)."""
    from eval.store import Result
    from eval.worst_case import worst_case_scores

    scores: dict[str, list[float]] = defaultdict(list)
    counts: dict[str, int] = defaultdict(int)
    for spec in specs:
        if spec.copy_of:
            continue
        task = output["results"][spec.name]
        scores[spec.metric].append(float(task[f"{SCORE_KEYS[spec.scoring]},none"]))
        counts[spec.metric] += int(output["n-samples"][spec.name]["effective"])
        for key, label in RUN_METRICS.get(spec.scoring, {}).items():
            value = float(task[f"{key},none"])
            if not math.isnan(value):  # NaN: no value, as HELM records none (no group word occurred)
                name = f"{spec.metric.rsplit(' - ', 1)[0]} - {label}"
                scores[name].append(value)
                counts[name] += int(output["n-samples"][spec.name]["effective"])
    for metric, tasks in worst_case_scores(specs, output["samples"], SCORE_KEYS).items():
        scores[metric] = [value for value, _ in tasks]
        counts[metric] = sum(n for _, n in tasks)
    return [Result(scenario, m, sum(v) / len(v), counts[m], seconds) for m, v in scores.items()]


def write_output(output: dict, out: Path, scenario: str) -> Path:
    from lm_eval.utils import handle_non_serializable

    out.mkdir(parents=True, exist_ok=True)
    samples = output.pop("samples", {})
    with open(out / f"{scenario}_samples.jsonl", "w", encoding="utf-8") as f:
        for task, rows in samples.items():
            f.writelines(json.dumps({"task": task, **row}, default=handle_non_serializable) + "\n" for row in rows)
    path = out / f"{scenario}.json"
    path.write_text(json.dumps(output, indent=2, default=handle_non_serializable), encoding="utf-8")
    return path


def build_all(scenarios: list[Scenario], budgets: dict[str, int | None], data: Path) -> dict[str, list[TaskSpec] | str]:
    """Every scenario's tasks (or why it has no data), all read before anything runs: a data file in the
    wrong format stops the run here (sources.DataError), before any request and with nothing recorded."""
    built: dict[str, list[TaskSpec] | str] = {}
    for scenario in scenarios:
        try:
            specs = [s for s in scenario.build(data, budgets[scenario.name]) if s.test]
            built[scenario.name] = specs or f"{scenario.name}: no evaluation instances"
        except MissingData as exc:
            built[scenario.name] = str(exc)
    return built


def instance_count(specs: list[TaskSpec], limit: int | None = None) -> int:
    """Evaluation instances of a scenario's tasks (perturbed copies aside), at most `limit` per task."""
    return sum(min(len(s.test), limit or len(s.test)) for s in specs if not s.copy_of)


def full_count(scenario: Scenario, specs: list[TaskSpec], budget: int | None, data: Path) -> int:
    """The scenario's instances at its full (the judges') budget: what a run must reach to be ranked."""
    if budget is None:
        return instance_count(specs)
    return instance_count([s for s in scenario.build(data, None) if s.test])


def run_scenario(lm, name: str, specs: list[TaskSpec], out: Path, limit: int | None):
    for source in sorted({s.source for s in specs if s.source}):
        print(f"  data: {source}", flush=True)
    start = time.perf_counter()
    output = evaluate(lm, specs, out / "tasks" / name, limit)
    seconds = time.perf_counter() - start
    results = helm_metrics(name, specs, output, seconds)
    path = write_output(output, out, name)
    return results, path


def quiet_lm_eval() -> None:
    """lm-eval logs every task at INFO and warns about our (intended) callable dataset loader."""
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    logging.getLogger("lm_eval.api.task").addFilter(lambda record: "Custom kwargs" not in record.getMessage())


def run_lm_eval_tasks(args: argparse.Namespace, out: Path) -> int:
    """--tasks: lm-eval's own tasks; results under `out`, nothing in the database."""
    from eval.lm_eval_tasks import describe, run_tasks

    try:
        lm = with_prompt_format(args, make_model(args))
    except (OSError, ValueError, RuntimeError) as exc:  # RuntimeError: client.ServerError (no /v1/models)
        print(f"error: cannot load the target: {exc}")
        return 2
    try:
        output = run_tasks(lm, args.tasks, args.include_path, args.limit)
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    print("\n".join(describe(output)), flush=True)
    print(f"  lm-eval results: {write_output(output, out, 'lm-eval')}", flush=True)
    return 0


def main(args: argparse.Namespace) -> int:
    from core.cache import cache_root
    from eval.store import Store, check_track

    try:
        track = check_track(args.track)
        scenarios, budgets = select(args)
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    quiet_lm_eval()
    data = Path(args.data) if args.data else cache_root() / "eval-data"
    out = Path(args.out) if args.out else Path("runs") / "eval" / args.name
    if args.tasks:
        return run_lm_eval_tasks(args, out)
    try:
        built = build_all(scenarios, budgets, data)
    except ValueError as exc:  # sources.DataError: the file, line and field
        print(f"error: {exc}")
        return 2
    try:
        lm = with_prompt_format(args, make_model(args))
    except (OSError, ValueError, RuntimeError) as exc:  # RuntimeError: client.ServerError (no /v1/models)
        print(f"error: cannot load the target: {exc}")
        return 2
    store = Store(args.db)
    finished, skipped, failed = [], [], None
    try:
        for i, scenario in enumerate(scenarios, 1):
            budget = budgets[scenario.name] or scenario.budget
            print(f"[{i}/{len(scenarios)}] {scenario.name} (budget {budget} instances)", flush=True)
            specs = built[scenario.name]
            if isinstance(specs, str):
                skipped.append(scenario.name)
                print(f"  skipped: {specs}", flush=True)
                continue
            results, path = run_scenario(lm, scenario.name, specs, out, args.limit)
            count, full = instance_count(specs, args.limit), full_count(scenario, specs, budgets[scenario.name], data)
            store.replace_scenario(args.name, track, scenario.name, results, source=args.server or args.model,
                                   instances=count, budget=full)
            finished.extend(results)
            for r in results:
                print(f"  {r.metric}: {r.value:.4f} ({r.instances} instances, {r.seconds:.1f} s)", flush=True)
            if count < full:
                print(f"  partial run ({count} of {full} instances): recorded apart, not ranked", flush=True)
            print(f"  lm-eval results: {path}", flush=True)
    except Exception as exc:  # noqa: BLE001 -- any failure: keep the finished scenarios, name the failing one
        failed = f"{scenario.name}: {type(exc).__name__}: {exc}"
    if finished:
        print(f"recorded {len(finished)} metrics of {args.name!r} (track {track}) in {store.path}")
    if skipped:
        print(f"skipped for lack of data: {', '.join(skipped)} (BIG-bench and BBQ: `python -m eval data`; "
              "others: the judges' files, or `python -m eval data --hub`; see docs/eval.md)")
    if failed:
        print(f"error: scenario {failed}")
        return 1
    return 0 if finished else 1
