"""Golden perturbations and worst-case scores: run the judges' HELM fork's own augmentation and metric code on
our small multiple-choice set (tests/fixtures/helm/perturb/inputs.jsonl) and write what it produces.

Run with the side venv (scripts/helm/setup-venv), from the repository root:

    /path/to/helm-venv/bin/python scripts/helm/perturb_golden.py [--fork DIR] [--out DIR]

(`--fork` defaults to $HELM_FORK.) The fork downloads two word lists at run time and ships the third; this
script puts this project's lists (eval/wordlists/) where the fork looks for them, so nothing is fetched:
the SAE->AAVE map and the person names under `benchmark_output/perturbations/...` of a scratch working
folder, and the misspellings next to a stand-in `__file__` of the fork's misspelling module (the module
reads `correct_to_misspelling.json` beside its own file).

Outputs, under --out (default tests/fixtures/helm/perturb/):
- perturbed.jsonl: every instance HELM's data augmenter emits for the run expander's `canonical` set
  (the original, then each perturbed copy whose input changed), with its id, perturbation, input and
  references;
- prompts/<case>.json: for each scenario the judges ran with `data_augmentation=canonical` (MMLU,
  TruthfulQA, the five ETHICS scenarios), the requests the fork builds from the prompts golden's data sets
  and cases (scripts/helm/prompts_golden.py, reused) once its DataPreprocessor has added the copies: each
  with its instance id, perturbation, prompt and references;
- oracle.json: the completions an oracle server gives (the right letter, except for a chosen few copies
  and originals), each copy's exact match as HELM's BasicMetric scores a multiple-choice-joint answer
  (letter -> reference text through the output mapping, then `exact_match`), and the run's EM,
  EM (Robustness) and EM (Fairness) from HELM's `Metric.compute_worst_case_metrics`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import string
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORDLISTS = REPO / "eval" / "wordlists"

# Which answers the oracle gets wrong, by (instance id, perturbation or None for the original); every other
# request gets the right letter. Chosen to make worst case differ from EM and from a plain mean of copies:
# a robustness copy wrong, a fairness copy wrong, both, an original wrong with its copies right, and a copy
# that does not exist for its instance (the oracle must then never be asked for it).
WRONG = {
    ("id1", "mild_mix"), ("id2", "dialect"), ("id3", "person_name"), ("id4", "gender"),
    ("id5", "mild_mix"), ("id5", "person_name"), ("id6", None), ("id8", "dialect"),
}


def place_word_lists(work: Path) -> Path:
    """Our lists where the fork reads its downloads; returns the folder to pose as the misspelling module's."""
    dialect = work / "benchmark_output" / "perturbations" / "dialect"
    names = work / "benchmark_output" / "perturbations" / "person_name" / "data"
    module_dir = work / "misspelling_module"
    for folder in (dialect, names, module_dir):
        folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(WORDLISTS / "SAE_to_AAVE_mapping.json", dialect / "SAE_to_AAVE_mapping.json")
    shutil.copyfile(WORDLISTS / "person_names.txt", names / "person_names.txt")
    shutil.copyfile(WORDLISTS / "correct_to_misspelling.json", module_dir / "correct_to_misspelling.json")
    return module_dir


def helm_instances(rows: list[dict]):
    from helm.benchmark.scenarios.scenario import CORRECT_TAG, TEST_SPLIT, Input, Instance, Output, Reference

    return [
        Instance(
            input=Input(text=row["question"]),
            references=[Reference(Output(text=c), tags=[CORRECT_TAG] if i == row["answer"] else [])
                        for i, c in enumerate(row["choices"])],
            split=TEST_SPLIT,
            id=f"id{n}",
        )
        for n, row in enumerate(rows)
    ]


COPIED_CASES = ("mmlu_anatomy", "truthful_qa", "ethics_justice", "ethics_commonsense", "ethics_deontology",
                "ethics_virtue", "ethics_utilitarianism")


def perturbed_prompts(work: Path) -> dict[str, list[dict]]:
    """The prompts golden's cases run with the canonical copies: the fork's DataPreprocessor (with the
    spec its data_augmentation run expander builds) between instance selection and adaptation, as in the
    fork's runner."""
    sys.path.insert(0, str(REPO / "scripts" / "helm"))
    import prompts_golden
    from helm.benchmark.data_preprocessor import DataPreprocessor
    from helm.benchmark.run_expander import DataAugmentationRunExpander
    from helm.benchmark.run_specs import get_mmlu_spec
    from helm.benchmark.scenarios.scenario import TRAIN_SPLIT

    augmenter_spec = DataAugmentationRunExpander("canonical").expand(get_mmlu_spec("anatomy"))[0].data_augmenter_spec
    evaluated: list = []
    make_adapter = prompts_golden.make_adapter

    def augmenting_adapter(adapter_spec):
        adapter = make_adapter(adapter_spec)
        select = adapter.get_run_instances

        def run_instances(instances):
            augmented = DataPreprocessor(augmenter_spec).preprocess(select(instances))
            evaluated[:] = [i for i in augmented if i.split != TRAIN_SPLIT]
            return augmented

        adapter.get_run_instances = run_instances
        return adapter

    prompts_golden.make_adapter = augmenting_adapter
    out = {}
    for case in (c for c in prompts_golden.CASES if c.name in COPIED_CASES):
        place_word_lists(work / case.name)  # the fork reads its downloads relative to its working folder
        requests = prompts_golden.run_case(case, REPO / "tests" / "fixtures" / "helm" / "data", work / case.name)
        assert len(requests) == len(evaluated), case.name  # multiple_choice_joint: one request per instance
        out[case.name] = [
            {"instance_id": inst.id, "perturbation": inst.perturbation.name if inst.perturbation else None,
             "prompt": request["prompt"], "references": request["references"]}
            for inst, request in zip(evaluated, requests)
            if request["instance_id"] == inst.id
        ]
        assert len(out[case.name]) == len(requests), case.name
    return out


def augment(instances):
    """The fork's own path: the run expander's `canonical` specs through its DataAugmenter, with the
    expander's settings for evaluation instances (originals kept, unchanged copies skipped, one seed)."""
    from helm.benchmark.augmentations.data_augmenter import DataAugmenterSpec, create_data_augmenter
    from helm.benchmark.run_expander import PERTURBATION_SPECS_DICT

    spec = DataAugmenterSpec(perturbation_specs=PERTURBATION_SPECS_DICT["canonical"]["canonical"])
    return create_data_augmenter(spec).generate(instances, include_original=True, skip_unchanged=True,
                                                seeds_per_instance=1)


def worst_case(augmented, completions: list[str]) -> tuple[list[float], dict[str, float]]:
    """Per-request exact match as the fork scores multiple_choice_joint, and the aggregated metrics."""
    from helm.benchmark.metrics.basic_metrics import BasicMetric, exact_match
    from helm.benchmark.metrics.metric_name import MetricName
    from helm.benchmark.metrics.statistic import Stat, merge_stat

    per_request, per_instance = [], {}
    for inst, completion in zip(augmented, completions):
        mapping = {string.ascii_uppercase[i]: r.output.text for i, r in enumerate(inst.references)}
        gold = next(r.output.text for r in inst.references if r.is_correct)
        score = exact_match(gold, mapping.get(completion.strip()))
        per_request.append(score)
        name = MetricName("exact_match", split=inst.split, perturbation=inst.perturbation)
        per_instance[inst] = [Stat(name).add(score)]
    stats: dict = {}
    for inst_stats in per_instance.values():
        for stat in inst_stats:
            merge_stat(stats, stat)
    for stat in BasicMetric(names=["exact_match"]).compute_worst_case_metrics(per_instance):
        merge_stat(stats, stat)
    values = {}
    for name, stat in stats.items():
        p = name.perturbation
        if p is None:
            values["EM"] = stat.mean
        elif p.name in ("robustness", "fairness") and p.computed_on == "worst":
            values[f"EM ({p.name.title()})"] = stat.mean
    return per_request, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fork", default=os.environ.get("HELM_FORK"), help="the fork's checkout ($HELM_FORK)")
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "helm" / "perturb")
    args = parser.parse_args()
    if not args.fork:
        parser.error("--fork (or $HELM_FORK) is required")
    sys.path.insert(0, str(Path(args.fork).resolve() / "src"))
    rows = [json.loads(line) for line in (args.out / "inputs.jsonl").read_text(encoding="utf-8").splitlines()]

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        module_dir = place_word_lists(work)
        os.chdir(work)
        import helm.benchmark.augmentations.misspelling_perturbation as misspelling

        misspelling.__file__ = str(module_dir / "misspelling_perturbation.py")
        augmented = augment(helm_instances(rows))
        prompts = perturbed_prompts(work / "cases")

    records = []
    for inst in augmented:
        name = inst.perturbation.name if inst.perturbation else None
        answer = next(i for i, r in enumerate(inst.references) if r.is_correct)
        letter = string.ascii_uppercase[(answer + ((inst.id, name) in WRONG)) % len(inst.references)]
        records.append({"id": inst.id, "perturbation": name, "input": inst.input.text,
                        "references": [r.output.text for r in inst.references], "completion": f" {letter}"})
    scores, metrics = worst_case(augmented, [r["completion"] for r in records])
    for record, score in zip(records, scores):
        record["exact_match"] = score

    with open(args.out / "perturbed.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({k: r[k] for k in ("id", "perturbation", "input", "references")}) + "\n"
                     for r in records)
    (args.out / "oracle.json").write_text(json.dumps({"requests": records, "metrics": metrics}, indent=1) + "\n",
                                          encoding="utf-8")
    (args.out / "prompts").mkdir(exist_ok=True)
    for name, requests in prompts.items():
        (args.out / "prompts" / f"{name}.json").write_text(json.dumps(requests, indent=1) + "\n", encoding="utf-8")
        print(f"{name}: {len(requests)} requests")
    print(f"{len(rows)} instances -> {len(records)} requests; {metrics}")


if __name__ == "__main__":
    main()
