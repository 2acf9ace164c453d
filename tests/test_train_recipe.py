"""Recipes: bad ones fail with a message naming the problem; the shipped ones validate."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_train
from train.recipe import CONFIG_DIR, RecipeError, dump_recipe, load_recipe, parse_recipe

GOOD_DATA = [{"kind": "generated", "name": "mc_arith"}]


@pytest.mark.parametrize("table, message", [
    ({"trian": {}, "data": GOOD_DATA}, "unknown key(s) in [recipe]: trian"),
    ({"train": {"lr": "fast"}, "data": GOOD_DATA}, "train.lr: expected float, got str"),
    ({"train": {"max_steps": 1.5}, "data": GOOD_DATA}, "train.max_steps: expected int"),
    ({"train": {"packing": 1}, "data": GOOD_DATA}, "train.packing: expected bool"),
    ({"train": {"schedule": "cosine-ish"}, "data": GOOD_DATA}, "train.schedule = 'cosine-ish': choose one of"),
    ({"lora": {"r": 0}, "data": GOOD_DATA}, "lora.r must be positive"),
    ({"data": [{"kind": "generated", "name": "nope"}]}, "data[0].name: unknown generated task 'nope'"),
    ({"data": [{"kind": "generated", "name": "mc_smallest"}]}, "held out for evaluation"),
    ({"data": [{"kind": "hf", "name": "cais/mmlu"}]}, "looks like an evaluation scenario (mmlu)"),
    ({"data": [{"kind": "json", "path": "/no/such/file.jsonl"}]}, "data[0].path: data file not found: /no/such/file.jsonl"),
    ({"data": [{"kind": "json", "path": "x.jsonl", "colour": "red"}]}, "unknown key(s) in [data[0]]: colour"),
    ({}, "no [[data]] sources"),
])
def test_bad_recipes_name_the_problem(table, message):
    with pytest.raises(RecipeError) as err:
        parse_recipe(table)
    assert message in str(err.value)


def test_eval_overlap_can_be_allowed_explicitly():
    recipe = parse_recipe({"allow_eval_overlap": True, "data": [{"kind": "generated", "name": "mc_smallest"}]})
    assert recipe.data[0].name == "mc_smallest"


def test_missing_field_in_json_data_is_named(tmp_path: Path, tiny_model):
    from core.models import load_tokenizer
    from train.data.pipeline import build_examples

    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "Q: 1+1?\\nA:", "answer": " 2"}\n')
    recipe = parse_recipe({"data": [{"kind": "json", "path": str(data), "fields": {"prompt": "question"}}]})
    with pytest.raises(RecipeError, match="record has no field 'completion'"):
        build_examples(recipe, load_tokenizer(str(tiny_model)))
    recipe.data[0].fields["completion"] = "answer"
    assert len(build_examples(recipe, load_tokenizer(str(tiny_model)))) == 1


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIG_DIR.glob("*.toml")))
def test_shipped_recipes_validate_and_round_trip(name, tmp_path: Path):
    recipe = load_recipe(CONFIG_DIR / name)
    (tmp_path / "r.toml").write_text(dump_recipe(recipe))
    again = load_recipe(tmp_path / "r.toml")
    again.source_file = recipe.source_file
    assert again == recipe


@pytest.mark.slow  # CLI processes
def test_cli_reports_a_bad_recipe_with_exit_2(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[train]\nlr = "fast"\n[[data]]\nkind = "generated"\nname = "mc_arith"\n')
    proc, _ = run_train("--config", str(bad), "--budget", "1m")
    assert proc.returncode == 2
    assert "train.lr: expected float, got str" in proc.stderr


@pytest.mark.slow  # the real model's shape
def test_dry_run_of_the_real_recipe_prints_the_plan():
    # A plan may name a GPU track on this CPU machine; a real run may not.
    proc, _ = run_train("--config", "configs/mistral-7b-qlora-4090.toml", "--track", "rtx4090-24gb", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "mistralai/Mistral-7B-v0.1" in proc.stdout and "r=128 alpha=256" in proc.stdout
    assert "GiB" in proc.stdout and "steps/hour" in proc.stdout and "approved family: mistral" in proc.stdout
    proc, _ = run_train("--config", "configs/mistral-7b-qlora-4090.toml", "--track", "rtx4090-24gb")
    assert proc.returncode == 2 and "CUDA" in proc.stderr
