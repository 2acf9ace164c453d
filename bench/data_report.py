"""Data report speed at growing mix sizes: is its cost linear in records?

The project generates everything: an evaluation data root holding every scenario of the open and hidden
sets in the judges' file formats at about its real size (MMLU's 55 subjects, TruthfulQA, GSM8K, BBQ, the
31 BIG-bench entries, SAMSum, MATH, corr2cause, the five ETHICS sets; CNN/DailyMail, scored but not ranked,
is left out), and training mixes of
10k, 50k and 200k records of about 300 tokens (prompt + response under the embedded tokenizer) in
English-like text. Each mix has planted cases: 1% exact duplicates, 1% near duplicates (one word
changed) and 0.5% records carrying 13 words of an evaluation instance, and the bench checks that the
report finds them (the near duplicates: at least 98%, as MinHash only estimates similarity).

For each size it times the whole report (`train.data.curation.curate` with every check, then the report's
tables and packing efficiency; the records are read from a JSONL file) and, separately, the dedup pass
(`train.data.dedup.find_duplicates` on the records' word ids). It prints records/s and the ratio of each
size's rate to the smallest size's, measured in the same run: 1.0 means linear cost. Rates are given by
wall clock and by the process's CPU time (all threads), which machine load disturbs less.

    nice python bench/data_report.py [--sizes 10000,50000,200000] [--json FILE]
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from core.models import load_tokenizer
from train.data import report as data_report
from train.data.contamination import load_eval_sets
from train.data.curation import curate
from train.data.dedup import find_duplicates
from train.data.ngrams import Vocabulary
from train.data.pipeline import render_sources
from train.recipe import load_recipe

REPO = Path(__file__).resolve().parent.parent
BIGBENCH_EXAMPLES = 500  # per BIG-bench entry; HELM's split evaluates 40% of them
SUMMARY_ROWS = 819  # SAMSum's test set
CSV_ROWS = {"corr2cause.csv": 5_000, "justice_hard.csv": 2_704, "commonsense_hard.csv": 3_885,
            "virtue.csv": 4_975, "deontology.csv": 3_596, "util.csv": 4_808}


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


def write_eval_root(root: Path, lex: Lexicon) -> None:
    """Every scenario's files in the judges' formats (eval/sources.py), at about the real sizes."""
    from eval.open_scenarios import BIGBENCH_TASKS, MMLU_BUDGETS
    from eval.sources import BBQ_CATEGORIES, MATH_SUBJECTS

    def say(low: int, high: int) -> str:
        return " ".join(lex.text(lex.rng.randint(low, high)))

    def write_csv(path: Path, header: list[str] | None, rows: list[list[str]], delimiter: str = ",") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter=delimiter)
            writer.writerows(([header] if header else []) + rows)

    def write_jsonl(path: Path, rows: list[dict]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    for subject in MMLU_BUDGETS:  # 55 subjects x 255: about MMLU's 14,042 test questions
        write_csv(root / "mmlu" / "test" / f"{subject}_test.csv", None,
                  [[say(10, 60), *(" ".join(lex.text(3)) for _ in range(4)), "B"] for _ in range(255)])
    write_csv(root / "truthful_qa" / "TruthfulQA.csv",
              ["Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers", "Source"],
              [["Adversarial", "Misc", say(6, 18), "best answer", "best answer", "wrong one; wrong two", "x"]
               for _ in range(817)])
    for split, count in (("train", 100), ("test", 1_319)):
        write_jsonl(root / "gsm8k" / f"gsm_data_{split}",
                    [{"question": say(25, 70), "answer": " ".join(lex.text(50)) + " #### 12"} for _ in range(count)])
    for category in BBQ_CATEGORIES:  # about BBQ's 58,492 lines; the fork evaluates the last 1,000 after a shuffle
        write_jsonl(root / "bbq" / f"{category}.jsonl",
                    [{"context": say(20, 50), "question": "Who was it?", "ans0": "the first", "ans1": "the second",
                      "ans2": "unknown", "label": 2} for _ in range(5_317)])
    write_csv(root / "sam_sum" / "samsum.tsv", ["id", "dialogue", "summary"],
              [[str(i), say(60, 150), " ".join(lex.text(25))] for i in range(SUMMARY_ROWS)], delimiter="\t")
    for folder, file, columns in (("corr2cause", "corr2cause.csv", ["label", "input"]),
                                  ("ethics_justice", "justice_hard.csv", ["label", "scenario"]),
                                  ("ethics_commonsense", "commonsense_hard.csv", ["label", "input", "is_short", "edited"]),
                                  ("ethics_virtue", "virtue.csv", ["label", "scenario"]),
                                  ("ethics_deontology", "deontology.csv", ["label", "scenario", "excuse"]),
                                  ("ethics_utilitarianism", "util.csv", ["scenario_1", "scenario_2", "label"])):
        rows = []
        for _ in range(CSV_ROWS[file]):
            row = {"label": "1", "input": say(15, 80), "is_short": "False", "edited": "False",
                   "scenario": say(10, 40) + (" [SEP] kind" if file == "virtue.csv" else ""),
                   "excuse": say(8, 20), "scenario_1": say(10, 30), "scenario_2": say(10, 30)}
            rows.append([row[c] for c in columns])
        write_csv(root / folder / file, columns, rows)
    for split, count in (("train", 500), ("test", 5_000)):
        write_jsonl(root / "math" / f"{split}.jsonl",
                    [{"problem": say(15, 60), "level": f"Level {lex.rng.choice('12345')}",
                      "type": lex.rng.choice(list(MATH_SUBJECTS.values())),
                      "solution": " ".join(lex.text(60)) + " \\boxed{3}"} for _ in range(count)])
    for entry in BIGBENCH_TASKS:
        examples = [{"input": say(15, 60), "target_scores": {"yes": 1, "no": 0}} for _ in range(BIGBENCH_EXAMPLES)]
        (root / "bigbench" / entry).mkdir(parents=True)
        (root / "bigbench" / entry / "task.json").write_text(
            json.dumps({"metrics": ["multiple_choice_grade"], "examples": examples}))


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
            response[len(response) // 2] = f"changed{i}"  # its own word: two near copies of one record stay apart
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
        write_eval_root(work / "eval-data", lex)
        eval_sets, skipped = load_eval_sets(work / "eval-data")  # contamination is planted from evaluated instances
        eval_inputs = [text for eval_set in eval_sets for text in eval_set.instances]
        print(f"eval data: {len(eval_inputs):,} evaluation instances in {len(eval_sets)} scenarios "
              f"(without data: {', '.join(name for name, _ in skipped) or 'none'})", flush=True)
        for size in sizes:
            planted = write_mix(work / "mix.jsonl", size, lex, eval_inputs)
            (work / "recipe.toml").write_text(
                f'name = "bench"\n[curation]\neval_data = "{work / "eval-data"}"\n'
                '[[data]]\nkind = "json"\npath = "mix.jsonl"\ntemplate = "alpaca"\n')
            recipe = load_recipe(work / "recipe.toml")
            recipe.train.max_seq_len = 512
            tokenizer = load_tokenizer(recipe.model.base)
            started, cpu = time.perf_counter(), time.process_time()
            findings = curate(recipe, tokenizer, render_sources(recipe), full=True)
            report = data_report.build(recipe, findings)
            report_s, report_cpu = time.perf_counter() - started, time.process_time() - cpu
            vocab = Vocabulary()
            ids = [vocab.encode(f"{p} {r}") for p, r in findings.sources[0].pairs]
            started, cpu = time.perf_counter(), time.process_time()
            find_duplicates(ids)
            dedup_s, dedup_cpu = time.perf_counter() - started, time.process_time() - cpu
            mix = report["mix"]
            found = {"exact": mix["duplicates_exact"], "near": mix["duplicates_near"], "contaminated": mix["contaminated"]}
            # Exact duplicates and n-gram hits are deterministic; near duplicates are MinHash estimates (a planted
            # pair of similarity ~0.89 is missed about once in a thousand), so 98% of them must be found.
            if found["exact"] < planted["exact"] or found["contaminated"] < planted["contaminated"] or (
                    found["near"] < 0.98 * planted["near"]):
                print(f"error: planted {planted}, found {found}", file=sys.stderr)
                return 1
            row = {"records": size, "mean_tokens": round(mix["tokens"] / size, 1),
                   "report_s": round(report_s, 1), "report_cpu_s": round(report_cpu, 1),
                   "dedup_s": round(dedup_s, 1), "dedup_cpu_s": round(dedup_cpu, 1), "planted": planted, "found": found}
            results.append(row)
            print(f"{size:>8,} records (~{row['mean_tokens']:.0f} tokens): report {report_s:6.1f} s wall "
                  f"({size / report_s:5,.0f} records/s), {report_cpu:6.1f} s CPU ({size / report_cpu:5,.0f}/s); "
                  f"dedup pass {dedup_s:5.1f} s wall ({size / dedup_s:5,.0f}/s), {dedup_cpu:5.1f} s CPU "
                  f"({size / dedup_cpu:5,.0f}/s); planted {planted}, found {found}", flush=True)
    base = results[0]
    for row in results:
        ratio = {k: (row["records"] / row[k]) / (base["records"] / base[k])
                 for k in ("report_s", "report_cpu_s", "dedup_s", "dedup_cpu_s")}
        print(f"rate at {row['records']:>7,} / rate at {base['records']:,}: report {ratio['report_s']:.2f} wall, "
              f"{ratio['report_cpu_s']:.2f} CPU; dedup {ratio['dedup_s']:.2f} wall, {ratio['dedup_cpu_s']:.2f} CPU"
              "  (1.00 = linear cost)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
