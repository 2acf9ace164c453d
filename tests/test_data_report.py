"""The data report, deduplication and decontamination on generated data with planted cases.

The mix is random made-up words, so nothing overlaps by chance; planted into it are exact duplicates
(differing only in case and punctuation), near duplicates (one word of 100 changed), records carrying
a 13-word span of an MMLU instance or a whole 10-word GSM8K question, and near misses (12 and 9 words)
that must not count.
"""
from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO, train_cmd
from train.data.ngrams import words
from train.recipe import RecipeError, load_recipe, parse_recipe


def phrase(rng: random.Random, n: int) -> list[str]:
    return [f"qz{rng.randrange(100_000)}" for _ in range(n)]


def record(text: list[str]) -> dict[str, str]:
    return {"prompt": " ".join(text[:60]) + "\n", "completion": " " + " ".join(text[60:])}


def plant(tmp: Path) -> dict:
    """Eval data root (MMLU: 20 questions of 20 words; GSM8K: 5 questions of 10 words) and a two-source mix.
    Returns the eval root, the contaminated records' numbers in b.jsonl, and both sources' records."""
    rng = random.Random(7)
    root = tmp / "eval-data"
    (root / "mmlu" / "test").mkdir(parents=True)  # the judges' file formats (eval/sources.py)
    (root / "gsm8k").mkdir()
    mmlu = [phrase(rng, 20) for _ in range(20)]
    (root / "mmlu" / "test" / "anatomy_test.csv").write_text("".join(f"{' '.join(q)},yes,no,A\n" for q in mmlu))
    gsm = [phrase(rng, 10) for _ in range(5)]
    (root / "gsm8k" / "gsm_data_test").write_text("".join(
        json.dumps({"question": " ".join(q), "answer": " ".join(phrase(rng, 12)) + " #### 7"}) + "\n" for q in gsm))
    (root / "gsm8k" / "gsm_data_train").write_text("")

    a = [phrase(rng, 100) for _ in range(40)]
    a_records = [record(t) for t in a]
    a_records.append(record([w.upper() + "," for w in a[3]]))  # exact: case and punctuation only
    a_records.append(record(a[10]))  # exact
    b = [phrase(rng, 100) for _ in range(20)]
    b_records = [record(t) for t in b]
    b_records.append(record(a[20]))  # exact, of a record in the other source
    for base in (a[5], a[15], b[2]):  # near: one word of 100 replaced
        changed = list(base)
        changed[50] = "qzchanged"
        b_records.append(record(changed))
    hits = []
    for span in (mmlu[4][3:16], mmlu[9][7:20], gsm[2]):  # 13 words of an MMLU question; a whole GSM8K question
        text = phrase(rng, 100)
        text[30:30 + len(span)] = span
        hits.append(len(b_records))
        b_records.append(record(text))
    for span in (mmlu[1][0:12], gsm[0][0:9]):  # near misses: 12 < 13 words, 9 < 10 words
        text = phrase(rng, 100)
        text[30:30 + len(span)] = span
        b_records.append(record(text))
    for name, records in (("a.jsonl", a_records), ("b.jsonl", b_records)):
        (tmp / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    return {"root": root, "hits": hits, "a": a_records, "b": b_records}


def write_recipe(tmp: Path, curation: str = "") -> Path:
    path = tmp / "recipe.toml"
    path.write_text(f"""
name = "planted"
[train]
max_seq_len = 1024
micro_batch_size = 2
[curation]
{curation}
[[data]]
kind = "json"
path = "a.jsonl"
[[data]]
kind = "json"
path = "b.jsonl"
""")
    return path


def test_normalisation_is_lm_evals() -> None:
    from lm_eval.decontamination.janitor import Janitor

    text = "It's  a Test, of   THE (janitor's) rule: déjà-vu 12.5%!"
    assert words(text) == Janitor().normalize_string(text).split()


@pytest.mark.slow  # the CLI's report
def test_report_finds_the_planted_cases_and_only_them(tmp_path: Path) -> None:
    planted = plant(tmp_path)
    out = tmp_path / "report"
    proc = subprocess.run(train_cmd("--config", str(write_recipe(tmp_path)), "--data-report",
                                    "--eval-data", str(planted["root"]), "--output-dir", str(out)),
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "data_report.json").read_text())
    got = {s["name"]: {k: s[k] for k in ("records", "duplicates_exact", "duplicates_near", "contaminated")}
           for s in report["sources"]}
    assert got == {
        "a.jsonl": {"records": 42, "duplicates_exact": 2, "duplicates_near": 0, "contaminated": 0},
        "b.jsonl": {"records": 29, "duplicates_exact": 1, "duplicates_near": 3, "contaminated": 3},
    }
    assert all(s["tokens"] > 100 * s["records"] for s in report["sources"])
    b = report["sources"][1]
    assert sorted(h["record"] for h in b["hits"]) == planted["hits"]
    assert {h["scenario"] for h in b["hits"]} == {"mmlu", "gsm8k"}
    assert sorted(d["record"] for d in b["near_duplicates"]) == [21, 22, 23]
    by_scenario = {c["scenario"]: c for c in report["contamination"]}
    assert (by_scenario["mmlu"]["instances"], by_scenario["mmlu"]["contaminated"], by_scenario["mmlu"]["ngram"]) == (20, 2, 13)
    assert (by_scenario["gsm8k"]["instances"], by_scenario["gsm8k"]["contaminated"], by_scenario["gsm8k"]["ngram"]) == (5, 1, 10)
    assert by_scenario["fixture_mmlu"]["contaminated"] == 0  # the project's fixtures are checked too
    assert "bigbench" in {s["scenario"] for s in report["scenarios_without_data"]}
    assert (out / "data_report.md").read_text().startswith("# Data report: planted")
    assert (out / "data_report_lengths.png").read_bytes()[:4] == b"\x89PNG"
    assert "b.jsonl" in proc.stdout and "gsm8k" in proc.stdout  # the terminal table
    assert "contamination: 3 of 71 training records" in proc.stderr


def test_decontaminate_and_dedup_train_on_exactly_the_clean_records(tmp_path: Path, tiny_model: Path, capsys) -> None:
    from core.models import load_tokenizer
    from train.data.pipeline import prepare

    planted = plant(tmp_path)
    recipe = load_recipe(write_recipe(tmp_path, f'dedup = "near"\ndecontaminate = true\neval_data = "{planted["root"]}"'))
    tokenizer = load_tokenizer(str(tiny_model))
    prepared = prepare(recipe, tokenizer, report=True)
    prepared.write_report(tmp_path / "run")
    findings = prepared.findings
    trained = sorted(tokenizer.decode(e.input_ids, skip_special_tokens=True) for row in prepared.batches.rows for e in row)
    clean_b = [r for i, r in enumerate(planted["b"]) if i < 20 or i in (len(planted["b"]) - 2, len(planted["b"]) - 1)]
    expected = sorted(r["prompt"] + r["completion"] for r in planted["a"][:40] + clean_b)
    assert trained == expected
    assert findings.dropped() == {"length": 0, "duplicates": 6, "contaminated": 3}
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["mix"]["dropped"] == {"length": 0, "duplicates": 6, "contaminated": 3}
    assert "dropped (curation.decontaminate = true)" in capsys.readouterr().err


def test_length_bounds_drop_by_characters_and_tokens(tmp_path: Path, tiny_model: Path) -> None:
    from core.models import load_tokenizer
    from train.data.curation import curate
    from train.data.pipeline import render_sources

    plant(tmp_path)
    tokenizer = load_tokenizer(str(tiny_model))
    recipe = load_recipe(write_recipe(tmp_path, "max_chars = 10000\nmin_tokens = 5"))
    assert all(s.keep.all() for s in curate(recipe, tokenizer, render_sources(recipe)).sources)
    recipe = load_recipe(write_recipe(tmp_path, "max_chars = 100"))
    assert curate(recipe, tokenizer, render_sources(recipe)).dropped()["length"] == 71


@pytest.mark.parametrize(("table", "message"), [
    ({"dedup": "fuzzy"}, "curation.dedup = 'fuzzy': choose one of off, exact, near"),
    ({"decontaminate": "yes"}, "curation.decontaminate: expected bool"),
    ({"min_tokens": 50, "max_tokens": 10}, "curation.min_tokens = 50 is above curation.max_tokens = 10"),
    ({"max_chars": -1}, "curation.min_chars and curation.max_chars cannot be negative"),
    ({"dedupe": "near"}, "unknown key(s) in [curation]: dedupe"),
    ({"eval_data": "/no/such/eval-data"}, "curation.eval_data: no folder /no/such/eval-data"),
])
def test_bad_curation_options_name_the_key(table: dict, message: str) -> None:
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        parse_recipe({"curation": table, "data": [{"kind": "generated", "name": "arith_qa"}]})


# One record in the schema of each winner's published hub dataset (field names and layout as published).
WINNER_RECORDS = {
    "upaya07/NeurIPS-LLM-data": {
        "question": "### Instruction:\nAnswer the question.\n\n### Input:\nWhat is the boiling point of water at sea level?"
                    "\n\n### Response:\n",
        "answer": "100 degrees Celsius.",
    },
    "Percent-BFD/nips_data_v7": {
        "instruction": "Question: \n", "input": "Which planet is largest?\nA.Mars\nB.Jupiter\nAnswer:", "output": "B",
        "data_source": "mmlu",
    },
}


@pytest.mark.parametrize("config", ["winner-4090-birbal-mix.toml", "winner-a100-percent-bfd-mix.toml"])
def test_winner_mixes_map_their_published_fields(config: str, tmp_path: Path) -> None:
    from train.data.pipeline import render_sources

    recipe = load_recipe(REPO / "configs" / config)  # validates without the hub, as --dry-run does
    assert [s.kind for s in recipe.data] == ["hf"]
    for source in recipe.data:  # the same source read from a local file of the published schema
        record = WINNER_RECORDS[source.name]
        (tmp_path / "local.json").write_text(json.dumps([record]))
        source.kind, source.path = "json", str(tmp_path / "local.json")
    ((_, _, [(prompt, response)]),) = render_sources(recipe)
    if "question" in record:
        assert (prompt, response) == (record["question"], record["answer"])
    else:
        assert record["input"] in prompt and record["instruction"].strip() in prompt and response == record["output"]


def borderline_mix(tmp: Path, pairs: int = 150) -> Path:
    """A source of `pairs` records each followed by a variant with 2 of its 100 words changed: word
    5-gram Jaccard 86/106 = 0.81, at the near-duplicate threshold, so the MinHash estimate decides
    each one and any change in how words are hashed flips some of them."""
    rng = random.Random(11)
    records = []
    for _ in range(pairs):
        text = phrase(rng, 100)
        variant = list(text)
        variant[30], variant[70] = "qzone", "qztwo"
        records += [record(text), record(variant)]
    (tmp / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp / "b.jsonl").write_text(json.dumps(record(phrase(rng, 100))) + "\n")
    return write_recipe(tmp, 'dedup = "near"')


def test_data_selection_does_not_depend_on_what_was_read_first(tmp_path: Path, tiny_model: Path) -> None:
    """Rank 0 reads the evaluation instances before the mix (for the data report), the other ranks do
    not, and a resume may find more evaluation data on disk: all must keep the same records."""
    from core.models import load_tokenizer
    from train.data.curation import curate
    from train.data.dedup import find_duplicates
    from train.data.ngrams import Vocabulary
    from train.data.pipeline import render_sources

    planted = plant(tmp_path / "eval")
    recipe = load_recipe(borderline_mix(tmp_path))
    tokenizer = load_tokenizer(str(tiny_model))
    rendered = render_sources(recipe)
    alone = curate(recipe, tokenizer, rendered)  # a rank other than 0: no evaluation data read
    with_eval = curate(recipe, tokenizer, rendered, full=True, eval_root=planted["root"])  # rank 0
    near = alone.sources[0].duplicates_near
    assert 30 < near.sum() < 120  # borderline indeed: the estimate decides, both ways
    assert (with_eval.sources[0].duplicates_near == near).all()
    assert all((a.keep == b.keep).all() for a, b in zip(alone.sources, with_eval.sources))
    texts = [f"{p} {r}" for p, r in rendered[0][2]]
    seen_backwards = Vocabulary()
    seen_backwards.encode(" ".join(reversed(" ".join(texts).split())))  # every word, first seen in another order
    assert (find_duplicates([seen_backwards.encode(t) for t in texts]).near == near).all()


def test_the_contamination_index_is_built_once_per_instances_and_read_back(tmp_path: Path) -> None:
    from train.data.contamination import Index, index_key, load_eval_sets
    from train.data.ngrams import Vocabulary

    root = plant(tmp_path)["root"]
    built = Index.build(load_eval_sets(root)[0], Vocabulary())
    cache = tmp_path / "cache"

    def read_back() -> Index:
        sets = load_eval_sets(root)[0]  # fresh sets: their n comes from the cache too
        index = Index.cached(sets, Vocabulary(), cache)
        assert [s.n for s in index.sets] == [s.n for s in built.sets]
        assert index.keys.keys() == built.keys.keys()
        for n in built.keys:
            assert (index.keys[n] == built.keys[n]).all() and (index.owners[n] == built.owners[n]).all()
        return index

    read_back()
    saved = cache / index_key(built.sets) / "index.npz"
    written = saved.stat().st_mtime_ns
    read_back()  # read, not built again
    assert saved.stat().st_mtime_ns == written and [p.name for p in cache.iterdir()] == [saved.parent.name]
    saved.write_bytes(saved.read_bytes()[:100])  # a damaged file is built again
    read_back()
    assert saved.stat().st_size > 100
    changed = load_eval_sets(root)[0]
    changed[0].segments[0] = (0, changed[0].segments[0][1] + " one more word")
    assert index_key(changed) != index_key(built.sets)
