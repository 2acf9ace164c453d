"""Golden prompts: run the judges' HELM fork (scenario classes + adapters, configured by its run_specs.py) on
our small data sets and write every request it builds to tests/fixtures/helm/prompts/<case>.json.

Run with the side venv (scripts/helm/setup-venv), from the repository root:

    /path/to/helm-venv/bin/python scripts/helm/prompts_golden.py [--fork DIR] [--data DIR] [--out DIR]

The data sets (tests/fixtures/helm/data/<scenario>/, the fork's file names and formats) are copied to where
each fork scenario expects its downloaded files, so nothing is fetched. What the script changes in the fork,
and why, is limited to:
- the adapter's context-window check always passes (the fork asks a tokenizer service for the model; fitting
  a prompt to a model's window is our HTTP client's job, tested separately);
- Python's global `random` is seeded with 0 before each scenario loads: the fork's commonsense, deontology
  and virtue scenarios shuffle without seeding it (see docs/eval.md);
- BBQ's test size (1000 in the fork) is set to BBQ_TEST_SIZE so a small file still has a train split;
- MATH reads the hub dataset `competition_math` through `datasets.load_dataset`: it is given our two
  JSONL files instead.
Data augmentation (robustness/fairness copies) is left out: the perturbations golden covers it.

Importable: `CASES` lists every case, `run_case(case, data, work)` returns its requests (the perturbations
golden reuses both).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BBQ_TEST_SIZE = 4


@dataclass(frozen=True)
class Case:
    """One run of the fork: a run-spec function with its arguments, the conf's overrides, and where our data
    set goes under the scenario's output folder (our path relative to the data root -> fork's path)."""

    name: str
    spec: str  # run_specs function name
    args: dict[str, Any]
    files: dict[str, str]
    max_eval_instances: int
    max_train_instances: int | None = None  # the conf's override, if any
    patches: tuple[str, ...] = field(default=())


ETHICS = {
    "justice": "justice_hard.csv", "commonsense": "commonsense_hard.csv", "deontology": "deontology.csv",
    "virtue": "virtue.csv", "utilitarianism": "util.csv",
}
BIGBENCH_FIXTURES = REPO / "eval" / "fixtures" / "bigbench"

CASES: list[Case] = [
    *(Case(f"ethics_{s}", f"get_ethics_{s}_spec", {}, {f"ethics_{s}/{f}": f"data/{f}"}, 3)
      for s, f in ETHICS.items()),
    Case("corr2cause", "get_corr2cause_spec", {}, {"corr2cause/corr2cause.csv": "data/corr2cause.csv"}, 3,
         max_train_instances=1),
    Case("sam_sum", "get_sam_sum_spec", {}, {"sam_sum/samsum.tsv": "data/samsum.tsv"}, 5),
    Case("summarization_cnndm", "get_cnndm_summarization_spec", {}, {"summarization_cnndm/cnndm.pk": "data/cnndm.pk"}, 4),
    Case("mmlu_anatomy", "get_mmlu_spec", {"subject": "anatomy"},
         {f"mmlu/{s}/anatomy_{s}.csv": f"data/{s}/anatomy_{s}.csv" for s in ("dev", "val", "test")}, 5),
    Case("truthful_qa", "get_truthful_qa_spec", {"task": "mc_single"},
         {"truthful_qa/TruthfulQA.csv": "data/TruthfulQA.csv"}, 6),
    # Rows whose best answer is also among the incorrect ones: the correct reference is the best answer's own.
    Case("truthful_qa_duplicate", "get_truthful_qa_spec", {"task": "mc_single"},
         {"truthful_qa_duplicate/TruthfulQA.csv": "data/TruthfulQA.csv"}, 6),
    Case("gsm8k", "get_gsm_spec", {}, {f"gsm8k/gsm_data_{s}": f"gsm_data_{s}" for s in ("train", "test")}, 4),
    Case("bbq", "get_bbq_spec", {"subject": "all"}, {"bbq/Age.jsonl": "data/Age", "bbq/SES.jsonl": "data/SES"}, 3,
         patches=("bbq_test_size",)),
    *(Case(f"math_{subject}_{level}", "get_math_spec",
           {"subject": subject, "level": level, "use_chain_of_thought": "True"}, {}, 2, patches=("math_data",))
      for subject, level in (("algebra", "1"), ("number_theory", "5"))),
    *(Case(f"bigbench_{task}_{k}shot", "get_big_bench_spec", {"task": task, "subtask": ""}, {}, 12,
           max_train_instances=k, patches=("bigbench_data",))
      for task in ("fixture_mc", "fixture_gen") for k in (0, 1, 2, 3)),
    # A generative task whose examples carry target_scores (the fork takes its references from them).
    Case("bigbench_fixture_gen_scores_2shot", "get_big_bench_spec", {"task": "fixture_gen_scores", "subtask": ""}, {},
         12, max_train_instances=2, patches=("bigbench_data",)),
]


class FitsAlways:
    """Stands in for the fork's window service: every prompt fits (see the module docstring)."""

    def fits_within_context_window(self, text: str, expected_completion_token_length: int = 0) -> bool:
        return True

    def truncate_from_right(self, text: str, expected_completion_token_length: int = 0) -> str:
        return text


def make_adapter(adapter_spec):
    from helm.benchmark.adaptation.adapters.adapter import Adapter
    from helm.benchmark.adaptation.adapters.adapter_factory import AdapterFactory

    def init(self, spec, _tokenizer_service):
        self.adapter_spec = spec
        self.window_service = FitsAlways()

    original = Adapter.__init__
    Adapter.__init__ = init
    try:
        return AdapterFactory.get_adapter(adapter_spec, None)
    finally:
        Adapter.__init__ = original


def apply_patches(case: Case, data: Path) -> Callable[[], None]:
    """Apply the case's patches; returns the function that undoes them."""
    undo: list[Callable[[], None]] = []
    if "bbq_test_size" in case.patches:
        import helm.benchmark.scenarios.bbq_scenario as bbq

        old = bbq.DEFAULT_TEST_SIZE
        bbq.DEFAULT_TEST_SIZE = BBQ_TEST_SIZE
        undo.append(lambda: setattr(bbq, "DEFAULT_TEST_SIZE", old))
    if "math_data" in case.patches:
        from helm.benchmark.scenarios import math_scenario

        def load_dataset(name, **_kwargs):
            assert name == "competition_math", name
            return {split: [json.loads(line) for line in (data / "math" / f"{split}.jsonl").read_text().splitlines()]
                    for split in ("train", "test")}

        old_load = math_scenario.load_dataset
        math_scenario.load_dataset = load_dataset
        undo.append(lambda: setattr(math_scenario, "load_dataset", old_load))
    return lambda: [u() for u in reversed(undo)]


def bigbench_task(task: str, data: Path) -> Path:
    """A BIG-bench fixture's task.json: the project's own (eval/fixtures), else a golden-only one under the data."""
    ours = BIGBENCH_FIXTURES / task / "task.json"
    return ours if ours.exists() else data / "bigbench" / task / "task.json"


def run_case(case: Case, data: Path, work: Path) -> list[dict]:
    """The requests the fork builds for `case` from our data under `data` (HELM's order)."""
    from helm.benchmark import run_specs
    from helm.benchmark.scenarios.scenario import create_scenario, with_instance_ids

    work.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(work)  # the BIG-bench run spec reads its task file from ./benchmark_output/scenarios/big_bench
    undo = apply_patches(case, data)
    try:
        if "bigbench_data" in case.patches:
            task = case.args["task"]
            target = work / "benchmark_output" / "scenarios" / "big_bench" / task / "task.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bigbench_task(task, data), target)
        run_spec = getattr(run_specs, case.spec)(**case.args)
        adapter_spec = replace(run_spec.adapter_spec, max_eval_instances=case.max_eval_instances)
        if case.max_train_instances is not None:
            adapter_spec = replace(adapter_spec, max_train_instances=case.max_train_instances)
        scenario = create_scenario(run_spec.scenario_spec)
        out = work / "benchmark_output" / "scenarios" / scenario.name
        for ours, theirs in case.files.items():
            (out / theirs).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(data / ours, out / theirs)
        random.seed(0)
        instances = with_instance_ids(scenario.get_instances(str(out)))
        adapter = make_adapter(adapter_spec)
        state = adapter.adapt(adapter.get_run_instances(instances), parallelism=1)
    finally:
        undo()
        os.chdir(cwd)
    return [
        {
            "instance_id": rs.instance.id,
            "split": rs.instance.split,
            "prompt": rs.request.prompt,
            "references": [r.output.text for r in rs.instance.references],
            "correct": [i for i, r in enumerate(rs.instance.references) if r.is_correct],
            "output_mapping": rs.output_mapping,
            "max_tokens": rs.request.max_tokens,
            "stop_sequences": list(rs.request.stop_sequences),
            "temperature": rs.request.temperature,
            "train_trial_index": rs.train_trial_index,
            "num_train_instances": rs.num_train_instances,
        }
        for rs in state.request_states
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fork", default=os.environ.get("HELM_FORK"), help="fork checkout (default $HELM_FORK; "
                        "unneeded when the venv already imports it)")
    parser.add_argument("--data", type=Path, default=REPO / "tests" / "fixtures" / "helm" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "helm" / "prompts")
    parser.add_argument("--only", help="comma-separated case names")
    args = parser.parse_args()
    if args.fork:
        import sys

        sys.path.insert(0, str(Path(args.fork) / "src"))
    wanted = set(args.only.split(",")) if args.only else None
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="helm-golden-") as tmp:
        for case in CASES:
            if wanted and case.name not in wanted:
                continue
            requests = run_case(case, args.data.resolve(), Path(tmp) / case.name)
            golden = {"case": case.name, "run_spec": case.spec, "args": case.args,
                      "max_eval_instances": case.max_eval_instances,
                      "max_train_instances": case.max_train_instances, "requests": requests}
            (args.out / f"{case.name}.json").write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n",
                                                        encoding="utf-8")
            print(f"{case.name}: {len(requests)} requests")


if __name__ == "__main__":
    main()
