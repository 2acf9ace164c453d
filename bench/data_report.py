"""Data report speed at growing mix sizes: is its cost linear in records?

The project generates everything: an evaluation data root holding every scenario of the open and hidden
sets at about its real test-set size (MMLU 14,042 questions, BIG-bench's 30 entries, BBQ, GSM8K, MATH,
sam_sum, corr2cause, the five ETHICS sets: about 120,000 instances in all), and training mixes of
10k, 50k and 200k records of about 300 tokens (prompt + response under the embedded tokenizer) in
English-like text. Each mix has planted cases: 1% exact duplicates, 1% near duplicates (one word
changed) and 0.5% records carrying 13 words of an evaluation instance, and the bench checks that the
report finds at least those.

For each size it times the whole report (`train.curation.curate` with every check, then the report's
tables and packing efficiency; the records are read from a JSONL file) and, separately, the dedup pass
(`train.dedup.find_duplicates` on the records' word ids). It prints records/s and the ratio of each
size's rate to the smallest size's, measured in the same run: 1.0 means linear cost.

    nice python bench/data_report.py [--sizes 10000,50000,200000] [--json FILE]
"""
from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from train import data_report
from train.curation import curate
from train.data import render_sources
from train.dedup import find_duplicates
from train.model import load_tokenizer
from train.recipe import load_recipe
from train.words import Vocabulary

REPO = Path(__file__).resolve().parent.parent
# Test-set sizes close to the real ones (instances per file); BIG-bench entries get 500 examples each,
# of which HELM's split evaluates 40%.
JSONL_SCENARIOS = {
    "mmlu": ("mc", 40, [("abstract_algebra", 14_042)]),
    "truthful_qa": ("mc", 12, [("mc", 817)]),
    "gsm8k": ("gsm", 46, [("main", 1_319)]),
    "bbq": ("mc", 30, [("all", 58_492)]),
    "sam_sum": ("summary", 90, [("dialogues", 819)]),
    "corr2cause": ("mc", 60, [("test", 1_162)]),
    "math": ("math", 30, [("all", 5_000)]),
    "ethics_justice": ("mc", 20, [("test", 2_704)]),
    "ethics_commonsense": ("mc", 60, [("test", 3_885)]),
    "ethics_virtue": ("mc", 15, [("test", 4_975)]),
    "ethics_deontology": ("mc", 18, [("test", 3_596)]),
    "ethics_utilitarianism": ("mc", 25, [("test", 4_808)]),
}
BIGBENCH_EXAMPLES = 500


class Lexicon:
    """English-like text: the bundled prose's words, drawn with Zipf-like frequencies, plus rarer made-up ones."""

    def __init__(self, rng: random.Random) -> None:
        prose = (REPO / "train" / "assets" / "prose.txt").read_text().split()
        made_up = ["".join(rng.choice("aeioubcdfglmnprstv") for _ in range(rng.randint(4, 9))) for _ in range(20_000)]
        self.words = sorted(set(prose), key=prose.index) + made_up
        self.cumulative = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(self.words))))
        self.rng = rng

    def text(self, n: int) -> list[str]:
        return self.rng.choices(self.words, cum_weights=self.cumulative, k=n)


def write_eval_root(root: Path, lex: Lexicon) -> list[str]:
    """Every scenario's test file; returns the instances' inputs (to plant contamination from)."""
    from eval.scenarios import BIGBENCH_TASKS

    inputs: list[str] = []
    for folder, (kind, words, files) in JSONL_SCENARIOS.items():
        (root / folder).mkdir(parents=True)
        for name, count in files:
            rows = []
            for _ in range(count):
                question = " ".join(lex.text(lex.rng.randint(words // 2, words * 3 // 2)))
                inputs.append(question)
                if kind == "mc":
                    rows.append({"question": question, "choices": [" ".join(lex.text(3)) for _ in range(4)], "answer": 1})
                elif kind == "gsm":
                    rows.append({"question": question, "answer": " ".join(lex.text(50)) + " #### 12"})
                elif kind == "summary":
                    rows.append({"document": question, "summary": " ".join(lex.text(25))})
                else:
                    rows.append({"problem": question, "solution": " ".join(lex.text(60)) + " \\boxed{3}"})
            (root / folder / f"{name}.test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for entry in BIGBENCH_TASKS:
        examples = []
        for _ in range(BIGBENCH_EXAMPLES):
            question = " ".join(lex.text(lex.rng.randint(15, 60)))
            inputs.append(question)
            examples.append({"input": question, "target_scores": {"yes": 1, "no": 0}})
        (root / "bigbench" / entry).mkdir(parents=True)
        (root / "bigbench" / entry / "task.json").write_text(
            json.dumps({"metrics": ["multiple_choice_grade"], "examples": examples}))
    return inputs


def write_mix(path: Path, count: int, lex: Lexicon, eval_inputs: list[str]) -> dict[str, int]:
    """`count` records of about 300 tokens, with planted duplicates and contamination."""
    records, originals, planted = [], [], {"exact": 0, "near": 0, "contaminated": 0}
    for i in range(count):
        if i % 100 == 1 and originals:  # copies are of original records only, so each is planted once
            records.append(dict(lex.rng.choice(originals)))
            planted["exact"] += 1
            continue
        if i % 100 == 2 and originals:
            base = lex.rng.choice(originals)
            response = base["output"].split()
            response[len(response) // 2] = "changedword"
            records.append({"instruction": base["instruction"], "output": " ".join(response)})
            planted["near"] += 1
            continue
        instruction, response = lex.text(35), lex.text(55)
        if i % 200 == 3:
            candidates = [q.split() for q in lex.rng.sample(eval_inputs, 50)]
            span = next(q for q in candidates if len(q) >= 13)
            start = lex.rng.randrange(len(span) - 12)
            response[20:20] = span[start:start + 13]
            planted["contaminated"] += 1
        records.append({"instruction": " ".join(instruction), "output": " ".join(response)})
        originals.append(records[-1])
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return planted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,50000,200000")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    lex = Lexicon(random.Random(0))
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-data-report-") as tmp:
        work = Path(tmp)
        eval_inputs = write_eval_root(work / "eval-data", lex)
        print(f"eval data: {len(eval_inputs):,} generated instances over every open and hidden scenario", flush=True)
        for size in sizes:
            planted = write_mix(work / "mix.jsonl", size, lex, eval_inputs)
            (work / "recipe.toml").write_text(
                f'name = "bench"\n[curation]\neval_data = "{work / "eval-data"}"\n'
                '[[data]]\nkind = "json"\npath = "mix.jsonl"\ntemplate = "alpaca"\n')
            recipe = load_recipe(work / "recipe.toml")
            recipe.train.max_seq_len = 512
            tokenizer = load_tokenizer(recipe.model.base)
            started = time.perf_counter()
            findings = curate(recipe, tokenizer, render_sources(recipe), full=True)
            report = data_report.build(recipe, findings)
            report_s = time.perf_counter() - started
            vocab = Vocabulary()
            ids = [vocab.encode(f"{p} {r}") for p, r in findings.sources[0].pairs]
            started = time.perf_counter()
            find_duplicates(ids)
            dedup_s = time.perf_counter() - started
            mix = report["mix"]
            found = {"exact": mix["duplicates_exact"], "near": mix["duplicates_near"], "contaminated": mix["contaminated"]}
            if any(found[k] < planted[k] for k in planted):
                print(f"error: planted {planted}, found {found}", file=sys.stderr)
                return 1
            row = {"records": size, "mean_tokens": round(mix["tokens"] / size, 1), "report_s": round(report_s, 1),
                   "report_records_per_s": round(size / report_s), "dedup_s": round(dedup_s, 1),
                   "dedup_records_per_s": round(size / dedup_s), "planted": planted, "found": found}
            results.append(row)
            print(f"{size:>8,} records (~{row['mean_tokens']:.0f} tokens): report {report_s:7.1f} s "
                  f"{row['report_records_per_s']:>7,} records/s; dedup pass {dedup_s:6.1f} s "
                  f"{row['dedup_records_per_s']:>7,} records/s; planted {planted}, found {found}", flush=True)
    base = results[0]
    for row in results:
        print(f"rate at {row['records']:>7,} / rate at {base['records']:,}: report "
              f"{row['report_records_per_s'] / base['report_records_per_s']:.2f}, dedup "
              f"{row['dedup_records_per_s'] / base['dedup_records_per_s']:.2f}  (1.00 = linear cost)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
