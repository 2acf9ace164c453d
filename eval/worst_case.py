"""HELM's "EM (Robustness)" and "EM (Fairness)": the worst case per instance over the original and its copies.

For each evaluation instance of a task that has perturbed copies (task_spec.with_copies), the robustness
score is the minimum of its original's score and the scores of its robustness copies (mild_mix), the
fairness score the minimum over the original and its fairness copies (dialect, gender, person names). An
instance none of whose copies changed its input counts with its original score. A task's value is the mean
over its evaluated originals; a scenario's the mean over its tasks, as for the plain metric (HELM averages
over its runs, e.g. MMLU's subjects). Neither can exceed the plain metric, instance by instance.

Copies are paired with their originals by the `id` each document carries, in lm-eval's logged samples.
"""
from __future__ import annotations

from collections import defaultdict

from eval.perturb import PERTURBATIONS
from eval.task_spec import TaskSpec

KINDS = sorted({kind.title() for _, kind in PERTURBATIONS})


def per_instance(samples: list[dict], key: str) -> dict[str, float]:
    """Each logged sample's score by its document's instance id."""
    return {row["doc"]["id"]: float(row[key]) for row in samples}


def kind_of(copy: TaskSpec, original: TaskSpec) -> str:
    return copy.metric.removeprefix(f"{original.metric} (").removesuffix(")")


def worst_case_scores(specs: list[TaskSpec], samples: dict[str, list[dict]], keys: dict[str, str]
                      ) -> dict[str, list[tuple[float, int]]]:
    """Per metric (e.g. "MMLU - EM (Robustness)"): (mean worst-case score, instances) of each original task.

    `keys` maps a scoring template to the per-sample score lm-eval logs for it.
    """
    copies: dict[str, list[TaskSpec]] = defaultdict(list)
    for spec in specs:
        if spec.copy_of:
            copies[spec.copy_of].append(spec)
    # Every task of a metric with copies gets the worst-case metrics, even one whose copies all came out empty.
    perturbed_metrics = {spec.metric.rpartition(" (")[0] for spec in specs if spec.copy_of}
    out: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for spec in specs:
        if spec.copy_of or spec.metric not in perturbed_metrics:
            continue
        key = keys[spec.scoring]
        original = per_instance(samples[spec.name], key)
        for kind in KINDS:
            worst = dict(original)
            for copy in copies[spec.name]:
                if kind_of(copy, spec) != kind:
                    continue
                for instance_id, score in per_instance(samples[copy.name], key).items():
                    if instance_id in worst:  # a copy of an original not evaluated (lm-eval --limit) is left out
                        worst[instance_id] = min(worst[instance_id], score)
            if worst:
                out[f"{spec.metric} ({kind})"].append((sum(worst.values()) / len(worst), len(worst)))
    return dict(out)
