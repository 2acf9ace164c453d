"""Our scenarios build, from the judges' file formats, exactly the requests the judges' HELM fork builds: the
same evaluation instances (HELM's numpy seed-0 selection, its ids and order), the same prompts character for
character, the same gold option and the same request settings. The fork's side is
tests/fixtures/helm/prompts/<case>.json, written by scripts/helm/prompts_golden.py from the data sets in
tests/fixtures/helm/data/ (see that script for what it changes in the fork, and why)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval import hidden_scenarios, open_scenarios, scenarios, sources, task_spec
from eval.adapters import Instance, build_prompt
from eval.scenarios import SCENARIOS
from eval.task_spec import TaskSpec

HELM = Path(__file__).parent / "fixtures" / "helm"
DATA = HELM / "data"
GOLDEN = sorted((HELM / "prompts").glob("*.json"))
BBQ_TEST_SIZE = 4  # the golden's BBQ test size (scripts/helm/prompts_golden.py)


def golden(case: str) -> dict:
    return json.loads((HELM / "prompts" / f"{case}.json").read_text(encoding="utf-8"))


def truthful_qa_root(root: Path, folder: Path) -> Path:
    """A data root whose truthful_qa folder is `folder`."""
    (root / "truthful_qa").symlink_to(folder)
    return root


def our_task(case: dict, monkeypatch, tmp_path: Path) -> TaskSpec:
    """Our task for a golden case: the scenario's builder on the golden data set, with the case's budget."""
    name, n = case["case"], case["max_eval_instances"]
    if name.startswith("bigbench_"):
        entry, shots = name.removeprefix("bigbench_").rsplit("_", 1)
        path = scenarios.FIXTURES / "bigbench" / entry / "task.json"
        path = path if path.exists() else DATA / "bigbench" / entry / "task.json"  # a golden-only task
        specs = open_scenarios.bigbench_task_specs(path, entry, "B", n)
        return next(s for s in specs if s.name.endswith(f"_{shots}"))
    if name.startswith("math_"):
        specs = SCENARIOS["math"].build(DATA, None)
        subject, level = case["args"]["subject"], case["args"]["level"]
        spec = next(s for s in specs if s.name == f"math_{subject}_level{level}")
        return task_spec.run_task(spec.name, spec.metric, spec.fmt, sources.math(DATA / "math", subject, level), 8, n,
                                  spec.generation, spec.scoring)
    if name == "bbq":
        monkeypatch.setattr(sources, "BBQ_TEST_SIZE", BBQ_TEST_SIZE)
    if name == "truthful_qa_duplicate":  # its own data set, where the fork reads TruthfulQA's
        (spec, *_copies) = open_scenarios.truthful_qa(truthful_qa_root(tmp_path, DATA / name), n)
        return spec
    scenario = {"mmlu_anatomy": "mmlu", "gsm8k": "gsm8k", "truthful_qa": "truthful_qa"}.get(name, name)
    build = SCENARIOS[scenario].build
    if scenario == "mmlu":
        build = open_scenarios.mmlu("MMLU", {"anatomy": n})
        n = None
    (spec, *_copies) = build(DATA, n)
    return spec


@pytest.mark.parametrize("path", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_prompts_equal_the_forks(path: Path, monkeypatch, tmp_path):
    case = golden(path.stem)
    spec = our_task(case, monkeypatch, tmp_path)
    theirs = case["requests"]
    assert [i.id for i in spec.test] == [r["instance_id"] for r in theirs]  # the same instances, same order
    for inst, request in zip(spec.test, theirs):
        assert build_prompt(spec.fmt, list(spec.train), inst).text == request["prompt"]
        if inst.is_mc:
            assert list(inst.choices) == request["references"]
            assert inst.output == request["correct"][0]
        else:
            assert [inst.output, *inst.golds] == [request["references"][i] for i in request["correct"]]
        assert spec.generation.max_new_tokens == request["max_tokens"]
        assert list(spec.generation.stop) == request["stop_sequences"]
        assert spec.generation.temperature == request["temperature"]
        assert len(spec.train) == request["num_train_instances"]


def test_every_forked_scenario_has_a_golden():
    cases = {p.stem for p in GOLDEN}
    hidden = {f"ethics_{s}" for s in scenarios.ETHICS} | {"corr2cause", "sam_sum", "summarization_cnndm"}
    assert hidden | {"mmlu_anatomy", "truthful_qa", "gsm8k", "bbq"} <= cases
    assert any(c.startswith("math_") for c in cases)
    assert {f"bigbench_fixture_{k}_{n}shot" for k in ("mc", "gen") for n in range(4)} <= cases


def test_sam_sum_is_zero_shot_and_ethics_keep_the_forks_wording():
    (sam,) = SCENARIOS["sam_sum"].build(DATA, None)
    assert sam.train == () and len(sam.test) == 8  # every TSV row is evaluated; the judges sent no examples
    justice = SCENARIOS["ethics_justice"].build(DATA, None)[0]
    assert justice.fmt.instructions.startswith("\n    Based on the principle of justice")
    assert justice.test[0].choices == ("Unreasonable", "Reasonable")
    commonsense = SCENARIOS["ethics_commonsense"].build(DATA, None)[0]
    assert commonsense.fmt.input_prefix == "Scenario: " and commonsense.test[0].choices == ("Yes", "No")
    util = SCENARIOS["ethics_utilitarianism"].build(DATA, None)[0]
    assert util.fmt.input_prefix == ": " and len(util.train) == 5
    assert len(sources.binary_csv(DATA / "ethics_utilitarianism", sources.HIDDEN_CSV["ethics_utilitarianism"]).train) == 14


def test_helm_sample_is_numpys_seed_0_choice():
    import numpy as np

    items = [Instance(str(i), str(i)) for i in range(50)]
    np.random.seed(0)
    expected = list(np.random.choice(np.arange(50), 7, replace=False))
    assert [int(i.input) for i in task_spec.helm_sample(items, 7)] == expected
    assert task_spec.helm_sample(items[:5], 7) == tuple(items[:5])


def test_judges_budgets_from_the_confs():
    assert len(open_scenarios.MMLU_BUDGETS) == 55 and sum(open_scenarios.MMLU_BUDGETS.values()) == 721
    assert sum(open_scenarios.BIGBENCH_BUDGETS.values()) == 1096 and len(open_scenarios.BIGBENCH_BUDGETS) == 29
    assert sum(hidden_scenarios.MATH_BUDGETS.values()) == 1000 and len(hidden_scenarios.MATH_BUDGETS) == 14
