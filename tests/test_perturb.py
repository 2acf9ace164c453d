"""The robustness/fairness perturbations equal the judges' HELM fork's, character for character, and the
word lists come from the data root when they are there (fixtures: scripts/helm/perturb_golden.py)."""
from __future__ import annotations

import json
import random

import pytest

from eval.__main__ import main as cli
from eval.adapters import Instance
from eval.perturb import (
    DIALECT,
    FALLBACK_DIR,
    MISSPELLINGS,
    NAMES,
    PERTURBATIONS,
    Canonical,
    canonical,
    load_word_lists,
    match_case,
    perturbed,
)
from tests.helpers import GOLDEN, inputs


def golden() -> list[dict]:
    return [json.loads(line) for line in (GOLDEN / "perturbed.jsonl").read_text().splitlines()]


def ours(instances: list[Instance], perturb: Canonical) -> list[dict]:
    """What HELM's data augmenter emits, in its order: each original, then its copies whose input changed."""
    out = []
    for inst in instances:
        out.append({"id": inst.id, "perturbation": None, "input": inst.input, "references": list(inst.choices)})
        for name, _kind in PERTURBATIONS:
            copy = perturbed(inst, name, perturb)
            if copy is not None:
                out.append({"id": inst.id, "perturbation": name, "input": copy.input,
                            "references": list(copy.choices)})
    return out


def test_perturbed_copies_equal_the_forks_character_for_character():
    expected = golden()
    got = ours(inputs(), canonical(None))
    assert [(r["id"], r["perturbation"]) for r in got] == [(r["id"], r["perturbation"]) for r in expected]
    for mine, theirs in zip(got, expected):
        assert mine == theirs, (mine["id"], mine["perturbation"])
    # The fixture exercises every perturbation, and the cases where HELM leaves text alone.
    kinds = {r["perturbation"] for r in expected}
    assert kinds == {None, "mild_mix", "dialect", "gender", "person_name"}
    assert ("id7", "mild_mix") not in {(r["id"], r["perturbation"]) for r in expected}  # "x": nothing to change


def test_robustness_leaves_options_alone_and_fairness_changes_them_too():
    expected = golden()
    originals = {r["id"]: r for r in expected if r["perturbation"] is None}
    for r in expected:
        if r["perturbation"] == "mild_mix":
            assert r["references"] == originals[r["id"]]["references"]
    changed = [r for r in expected if r["perturbation"] in ("dialect", "person_name")
               and r["references"] != originals[r["id"]]["references"]]
    assert changed  # e.g. "John's saw" -> the same substitute name as in the question
    for r in expected:
        if r["perturbation"] == "person_name" and r["id"] == "id0":
            assert r["references"][1].removesuffix("'s saw") in r["input"]


def test_perturbations_are_seeded_by_the_instance_id_alone():
    inst = inputs()[0]
    perturb = canonical(None)
    assert perturbed(inst, "mild_mix", perturb) == perturbed(inst, "mild_mix", perturb)
    other = perturbed(Instance(inst.input, inst.output, inst.choices, id="id77"), "mild_mix", perturb)
    assert other is not None and other.input != perturbed(inst, "mild_mix", perturb).input


def test_match_case_follows_the_source_word():
    assert [match_case(w, "wit") for w in ("with", "WITH", "With", "wITH", "'s")] == ["wit", "WIT", "Wit", "wit", "wit"]


def test_fallback_lists_are_used_and_reported_when_the_data_root_has_none(tmp_path):
    lists = load_word_lists(tmp_path)
    assert lists.sources == {name: str(FALLBACK_DIR / name) for name in (MISSPELLINGS, DIALECT, NAMES)}


def test_the_judges_lists_are_read_from_the_data_root(tmp_path):
    folder = tmp_path / "perturbations"
    folder.mkdir()
    (folder / DIALECT).write_text(json.dumps({"bone": ["bonez"]}))
    (folder / NAMES).write_text("Zed,first_name,race,white_american,gender,male\n"
                                "Quincy,first_name,race,black_american,gender,male\n")
    perturb = canonical(tmp_path)
    assert perturb.lists.sources[DIALECT] == str(folder / DIALECT)
    assert perturb.lists.sources[NAMES] == str(folder / NAMES)
    assert perturb.lists.sources[MISSPELLINGS] == str(FALLBACK_DIR / MISSPELLINGS)
    assert perturb.lists.describe() == (f"perturbation word lists: {MISSPELLINGS} (project fallback), "
                                        f"{DIALECT} from {folder / DIALECT}, {NAMES} from {folder / NAMES}")
    inst = Instance("Zed broke a bone, the doctor said.", 0, ("Zed's bone", "none"), id="id0")
    assert perturbed(inst, "dialect", perturb).input == "Zed broke a bonez, the doctor said."
    assert perturbed(inst, "person_name", perturb).choices == ("Quincy's bone", "none")
    assert perturbed(inst, "dialect", canonical(None)).input in {f"Zed broke a bone, {w} doctor said." for w in ("da", "tha")}


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [(DIALECT, '{"a": [', r"SAE_to_AAVE_mapping.json:1: not JSON"),
     (DIALECT, '{"a": []}', r"SAE_to_AAVE_mapping.json: expected a JSON object of word -> non-empty list"),
     (MISSPELLINGS, '["a"]', r"correct_to_misspelling.json: expected a JSON object"),
     (NAMES, "Ann,first_name\nBob,first_name,race\n", r"person_names.txt:2: expected <name>,<name type>")],
)
def test_a_malformed_word_list_is_refused_with_its_path(tmp_path, name, text, message):
    (tmp_path / "perturbations").mkdir()
    (tmp_path / "perturbations" / name).write_text(text)
    with pytest.raises(ValueError, match=message):
        load_word_lists(tmp_path)


def test_mild_mix_draws_misspellings_and_spaces_from_one_generator():
    """Every listed word is a candidate (probability 0.1): about a tenth of 200 are misspelt."""
    perturb = canonical(None)
    text = "because " * 200
    misspelt = sum(w != "because" for w in perturb.mild_mix(text, random.Random("id0")).split())
    assert 5 < misspelt < 45


def test_eval_data_says_where_the_word_lists_go_and_which_are_there(tmp_path, capsys):
    (tmp_path / "perturbations").mkdir()
    (tmp_path / "perturbations" / DIALECT).write_text("{}")
    assert cli(["data", "--dest", str(tmp_path), "--sdist", str(tmp_path / "missing.tar.gz")]) == 2
    out = capsys.readouterr().out
    assert f"go in {tmp_path / 'perturbations'}/" in out
    assert f"{DIALECT}: present" in out
    assert f"{NAMES}: absent, the project fallback is used (judges' copy: https://" in out
    assert f"{MISSPELLINGS}: absent" in out and "the fork's src/helm/benchmark/augmentations/" in out
