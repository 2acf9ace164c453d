"""Writing a task as lm-eval files: `write_task` turns a TaskSpec into `<task>.jsonl` (one document per
evaluation instance, each holding the full prompt and its blocks, the gold and the options) and
`<task>.yaml` (the lm-eval task: a scoring template of eval/tasks and the request settings).
"""
from __future__ import annotations

import json
from pathlib import Path

from eval.adapters import Instance, build_prompt
from eval.task_spec import TaskSpec

TEMPLATES = Path(__file__).parent / "tasks"


def document(spec: TaskSpec, inst: Instance) -> dict:
    prompt = build_prompt(spec.fmt, list(spec.train), inst)
    gold = inst.target()
    return {
        "prompt": prompt.text,
        "gold": gold,
        "golds": [gold, *inst.golds],
        "choices": list(inst.choices),  # HELM scores a letter by the text of the option it names
        "id": inst.id,  # pairs a perturbed copy with its original (worst-case robustness/fairness)
        # The prompt's blocks, so the HTTP client can drop in-context examples to fit the context window.
        "prompt_parts": json.dumps(
            {"instructions": prompt.instructions, "train": list(prompt.train), "eval": prompt.eval,
             "instance_prefix": prompt.instance_prefix}
        ),
    }


def write_task(spec: TaskSpec, folder: Path) -> Path:
    """Write `<folder>/<task>.jsonl` (the documents) and `<folder>/<task>.yaml` (the lm-eval task)."""
    folder.mkdir(parents=True, exist_ok=True)
    docs = folder / f"{spec.name}.jsonl"
    docs.write_text("".join(json.dumps(document(spec, i)) + "\n" for i in spec.test), encoding="utf-8")
    config = {
        "include": str(TEMPLATES / f"{spec.scoring}.yaml"),
        "task": spec.name,
        "dataset_kwargs": {"path": str(docs.resolve())},
        "generation_kwargs": {
            "until": list(spec.generation.stop),
            "max_gen_toks": spec.generation.max_new_tokens,
            "temperature": spec.generation.temperature,
            "do_sample": spec.generation.temperature > 0,
        },
    }
    path = folder / f"{spec.name}.yaml"
    # JSON is YAML: no emitter quirks around the newlines in stop sequences.
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path
