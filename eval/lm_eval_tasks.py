"""`python -m eval run --tasks A,B`: lm-eval's own tasks (its registry, or YAML files under
--include-path) against the entry, instead of the judges' scenarios.

Loglikelihood tasks (multiple choice the lm-eval way: ARC, HellaSwag, MMLU as lm-eval defines it) run
against a server too: challenge-api scores them by echoing the prompt through /process, openai-api
through /v1/completions. lm-eval's results (and the per-document samples) are written under --out;
nothing is recorded in the leaderboard, whose metrics are the judges'.
"""
from __future__ import annotations


def run_tasks(lm, tasks: str, include_path: str | None, limit: int | None) -> dict:
    """lm-eval's output for `tasks` (comma-separated); ValueError names unknown tasks."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    manager = TaskManager(include_path=include_path, include_defaults=include_path is None)
    unknown = [name for name in names if name not in manager.all_tasks]
    if not names or unknown:
        where = f" (looked in {include_path})" if include_path else ""
        raise ValueError(f"--tasks: unknown lm-eval task(s) {', '.join(unknown) or repr(tasks)}{where}")
    return lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=manager, limit=limit,
                                   bootstrap_iters=0, log_samples=True)


def describe(output: dict) -> list[str]:
    """One line per task: its metrics (standard errors aside)."""
    lines = []
    for task, metrics in sorted(output["results"].items()):
        shown = ", ".join(f"{key.split(',')[0]} {value:.4f}" for key, value in metrics.items()
                          if isinstance(value, float) and "stderr" not in key)
        lines.append(f"  {task}: {shown}")
    return lines
