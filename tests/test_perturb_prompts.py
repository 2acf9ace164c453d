"""The perturbed copies of the scenarios the judges ran with robustness/fairness (MMLU, TruthfulQA, ETHICS)
give the fork's prompts character for character: tests/fixtures/helm/perturb/prompts/<case>.json holds the
requests the fork builds from the prompts golden's data sets after its DataPreprocessor added the canonical
copies (scripts/helm/perturb_golden.py, with this project's word lists where the fork expects its own)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval import open_scenarios
from eval.adapters import build_prompt
from eval.scenarios import SCENARIOS

HELM = Path(__file__).parent / "fixtures" / "helm"
DATA = HELM / "data"
CASES = sorted((HELM / "perturb" / "prompts").glob("*.json"))


def our_requests(case: str) -> dict[tuple[str, str | None], tuple[str, list[str]]]:
    """(instance id, perturbation) -> (prompt, options) for our tasks of the case, copies included."""
    n = json.loads((HELM / "prompts" / f"{case}.json").read_text(encoding="utf-8"))["max_eval_instances"]
    if case == "mmlu_anatomy":
        specs = open_scenarios.mmlu("MMLU", {"anatomy": n})(DATA, None)
    else:
        specs = SCENARIOS[case].build(DATA, n)
    out = {}
    for spec in specs:
        perturbation = spec.name.removeprefix(f"{spec.copy_of}_") if spec.copy_of else None
        for inst in spec.test:
            out[(inst.id, perturbation)] = (build_prompt(spec.fmt, list(spec.train), inst).text, list(inst.choices))
    return out


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_perturbed_prompts_equal_the_forks(path: Path):
    theirs = json.loads(path.read_text(encoding="utf-8"))
    ours = our_requests(path.stem)
    assert sorted(ours, key=str) == sorted(((r["instance_id"], r["perturbation"]) for r in theirs), key=str)
    for request in theirs:
        prompt, options = ours[(request["instance_id"], request["perturbation"])]
        assert prompt == request["prompt"], (request["instance_id"], request["perturbation"])
        assert options == request["references"]


def test_copies_say_which_word_lists_made_them(tmp_path):
    """The run prints each task's `source`: the copies name the word lists, the judges' ones when present."""
    from eval.perturb import DIALECT, FALLBACK_DIR

    n = json.loads((HELM / "prompts" / "truthful_qa.json").read_text(encoding="utf-8"))["max_eval_instances"]
    copies = [s for s in SCENARIOS["truthful_qa"].build(DATA, n) if s.copy_of]
    assert copies and all(s.source.startswith("perturbation word lists: ") for s in copies)
    assert all(f"{DIALECT} (project fallback)" in s.source for s in copies)

    root = tmp_path / "data"
    (root / "perturbations").mkdir(parents=True)
    (root / "truthful_qa").symlink_to(DATA / "truthful_qa")
    (root / "perturbations" / DIALECT).write_bytes((FALLBACK_DIR / DIALECT).read_bytes())
    copies = [s for s in SCENARIOS["truthful_qa"].build(root, n) if s.copy_of]
    assert all(f"{DIALECT} from {root / 'perturbations' / DIALECT}" in s.source for s in copies)
