"""The data report: what is in a recipe's mix, how much of it repeats, and how much overlaps the
evaluation instances, before any model is loaded.

`python -m train --config FILE --data-report [--eval-data DIR] [--output-dir DIR]` writes it to the
output folder (default data-reports/<recipe name>); every training run also writes it into its run
folder at start. Files: data_report.json (for scripts), data_report.md, data_report_lengths.png,
and a table on the terminal. In the JSON, `sources` holds one entry per source and `contamination`
one per scenario whose data was found; a duplicate count is the number of records that repeat an
earlier one (the first of each group is not counted).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from train.data.curation import Findings, SourceFindings
from train.data.ngrams import words
from train.data.packing import Example, pack
from train.recipe import Recipe

EXAMPLES_PER_SOURCE = 20  # hits and near duplicates shown per source in the JSON (the Markdown shows 5)
SNIPPET = 160
JSON_NAME, MD_NAME, PNG_NAME = "data_report.json", "data_report.md", "data_report_lengths.png"


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET else text[:SNIPPET - 1] + "…"


def packing_efficiency(lengths: np.ndarray, max_len: int) -> float:
    """Share of token slots that hold tokens once these examples are packed into rows (train.data.packing)."""
    if len(lengths) == 0:
        return 0.0
    # pack() reads only each example's length, so a range of that length stands in for its token ids.
    rows = pack([Example(range(int(n)), []) for n in lengths], max_len)
    return float(lengths.sum()) / (len(rows) * max_len)


def _lengths(tokens: np.ndarray) -> dict[str, float]:
    if len(tokens) == 0:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0, "mean": 0.0}
    p50, p90, p99 = np.percentile(tokens, [50, 90, 99])
    return {"p50": int(p50), "p90": int(p90), "p99": int(p99), "max": int(tokens.max()),
            "mean": round(float(tokens.mean()), 1)}


def _trained_lengths(s: SourceFindings, max_len: int) -> np.ndarray:
    """Lengths of the examples a kept record becomes: truncated at max_len, gone when no response fits."""
    usable = s.keep & (s.prompt_tokens < max_len)
    return np.minimum(s.tokens[usable], max_len)


def _source_entry(s: SourceFindings, findings: Findings, max_len: int) -> dict:
    entry = {
        "name": s.name, "kind": s.source.kind, "weight": s.source.weight,
        "records": len(s.pairs), "tokens": int(s.tokens.sum()),
        "length_tokens": _lengths(s.tokens),
        "truncated": int((s.tokens > max_len).sum()),
        "truncated_share": round(float((s.tokens > max_len).mean()), 4) if len(s.pairs) else 0.0,
        "packing_efficiency": round(packing_efficiency(_trained_lengths(s, max_len), max_len), 4),
        "duplicates_exact": int(s.duplicates_exact.sum()),
        "duplicates_near": int(s.duplicates_near.sum()),
        "contaminated": int(s.contaminated.sum()),
        "kept": int(s.keep.sum()),
        "dropped": {reason: int(mask.sum()) for reason, mask in s.dropped_by.items()},
        "hits": [],
        "near_duplicates": [],
    }
    for record, hit in sorted(s.hits.items())[:EXAMPLES_PER_SOURCE]:
        prompt, response = s.pairs[record]
        eval_set = findings.eval_sets[findings.index.owner_set(hit.instance)]
        local = hit.instance - int(findings.index.offsets[findings.index.owner_set(hit.instance)])
        entry["hits"].append({
            "record": record, "scenario": eval_set.scenario,
            "overlap": " ".join(words(f"{prompt} {response}")[hit.start:hit.start + hit.length]),
            "instance": _snippet(eval_set.instances[local]),
        })
    for record, (other_source, other) in sorted(s.near_of.items())[:EXAMPLES_PER_SOURCE]:
        entry["near_duplicates"].append({"record": record, "resembles": {"source": other_source, "record": other},
                                         "text": _snippet(" ".join(s.pairs[record]))})
    return entry


def build(recipe: Recipe, findings: Findings, seconds: float | None = None) -> dict:
    """The report as a JSON-ready dictionary."""
    max_len = recipe.train.max_seq_len
    sources = [_source_entry(s, findings, max_len) for s in findings.sources]
    all_tokens = np.concatenate([s.tokens for s in findings.sources]) if findings.sources else np.zeros(0)
    mix_lengths = np.concatenate([_trained_lengths(s, max_len) for s in findings.sources])  # at weight 1
    mix = {
        "records": sum(e["records"] for e in sources), "tokens": sum(e["tokens"] for e in sources),
        "length_tokens": _lengths(all_tokens),
        "truncated": sum(e["truncated"] for e in sources),
        "truncated_share": round(float((all_tokens > max_len).mean()), 4) if len(all_tokens) else 0.0,
        "packing_efficiency": round(packing_efficiency(mix_lengths, max_len), 4),
        "duplicates_exact": sum(e["duplicates_exact"] for e in sources),
        "duplicates_near": sum(e["duplicates_near"] for e in sources),
        "contaminated": sum(e["contaminated"] for e in sources),
        "kept": sum(e["kept"] for e in sources),
        "dropped": findings.dropped(),
    }
    contamination = []
    for k, eval_set in enumerate(findings.eval_sets):
        first = int(findings.index.offsets[k])
        hit = sum(1 for i in findings.touched if first <= i < first + len(eval_set.instances))
        contamination.append({
            "scenario": eval_set.scenario, "suite": eval_set.suite, "ngram": eval_set.n,
            "instances": len(eval_set.instances), "contaminated": hit,
            "share": round(hit / len(eval_set.instances), 4) if eval_set.instances else 0.0,
        })
    return {
        "recipe": recipe.name, "recipe_file": recipe.source_file, "tokenizer": recipe.model.base,
        "max_seq_len": max_len, "curation": vars(recipe.curation) | {"checks": sorted(findings.checked)},
        "eval_data": str(findings.eval_root) if findings.eval_root else None,
        "sources": sources, "mix": mix, "contamination": contamination,
        "scenarios_without_data": [{"scenario": name, "reason": why} for name, why in findings.skipped],
        "seconds": round(seconds, 2) if seconds is not None else None,
    }


def contamination_warning(findings: Findings) -> str | None:
    """One line when training records overlap evaluation instances (nothing is refused by default)."""
    count = findings.contaminated_records()
    if "contamination" not in findings.checked or count == 0:
        return None
    total = sum(len(s.pairs) for s in findings.sources)
    by_scenario: dict[str, int] = {}
    for i in findings.touched:
        name = findings.eval_sets[findings.index.owner_set(i)].scenario
        by_scenario[name] = by_scenario.get(name, 0) + 1
    scenarios = ", ".join(f"{name} ({n} instances)" for name, n in sorted(by_scenario.items()))
    action = ("dropped (curation.decontaminate = true)" if all(not s.keep[s.contaminated].any() for s in findings.sources)
              else "kept: set curation.decontaminate = true to drop them")
    return (f"warning     contamination: {count} of {total} training records share n-grams with evaluation "
            f"instances of {scenarios}; {action}")


def table(report: dict) -> str:
    """The terminal table: one row per source and one for the mix, then one per scenario."""
    head = f"{'source':<34} {'records':>8} {'tokens':>11} {'p50':>5} {'p99':>6} {'trunc':>6} {'pack':>6} " \
           f"{'dup':>6} {'near':>6} {'contam':>7} {'kept':>8}"
    lines = [head, "-" * len(head)]
    for e in [*report["sources"], {"name": "(mix)", **report["mix"]}]:
        name = e["name"] if len(e["name"]) <= 34 else "…" + e["name"][-33:]
        lines.append(f"{name:<34} {e['records']:>8,} {e['tokens']:>11,} {e['length_tokens']['p50']:>5} "
                     f"{e['length_tokens']['p99']:>6} {e['truncated_share']:>6.1%} {e['packing_efficiency']:>6.1%} "
                     f"{e['duplicates_exact']:>6,} {e['duplicates_near']:>6,} {e['contaminated']:>7,} {e['kept']:>8,}")
    if report["contamination"]:
        lines += ["", f"{'scenario':<34} {'n':>3} {'instances':>10} {'in training':>12} {'share':>7}"]
        for c in report["contamination"]:
            lines.append(f"{c['scenario']:<34} {c['ngram']:>3} {c['instances']:>10,} {c['contaminated']:>12,} "
                         f"{c['share']:>7.1%}")
    if report["scenarios_without_data"]:
        lines.append("no data for: " + ", ".join(s["scenario"] for s in report["scenarios_without_data"]))
    return "\n".join(lines)


def markdown(report: dict) -> str:
    c = report["curation"]
    lines = [
        f"# Data report: {report['recipe']}", "",
        (f"Recipe `{report['recipe_file']}`, tokens under `{report['tokenizer']}` with the recipe's templates, "
        f"max_seq_len {report['max_seq_len']}. Evaluation data root: `{report['eval_data']}`."),
        (f"Curation: dedup = {c['dedup']}, decontaminate = {str(c['decontaminate']).lower()}; "
        f"dropped {report['mix']['dropped']}."), "",
        "```", table(report), "```", "",
        ("Columns: records; tokens (prompt + response + EOS, before truncation); median and 99th percentile "
        "length; share longer than max_seq_len; packing efficiency of what is trained; records repeating an "
        "earlier one exactly (normalised words) and nearly (MinHash Jaccard >= 0.8 on word 5-grams); "
        "records sharing an n-gram with an evaluation instance; records kept."), "",
    ]
    for e in report["sources"]:
        if e["hits"] or e["near_duplicates"]:
            lines.append(f"## {e['name']}")
            for h in e["hits"][:5]:
                lines.append(f"- record {h['record']} overlaps {h['scenario']}: \"{h['overlap']}\" "
                             f"(instance: \"{h['instance']}\")")
            for d in e["near_duplicates"][:5]:
                lines.append(f"- record {d['record']} nearly repeats {d['resembles']['source']} record "
                             f"{d['resembles']['record']}: \"{d['text']}\"")
            lines.append("")
    lines.append(f"![token lengths]({PNG_NAME})")
    return "\n".join(lines) + "\n"


def plot(findings_tokens: list[tuple[str, np.ndarray]], max_len: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    top = max([int(t.max()) for _, t in findings_tokens if len(t)] + [max_len])
    bins = np.linspace(0, top, 60)
    for name, tokens in findings_tokens:
        ax.hist(tokens, bins=bins, histtype="step", label=name[-40:])
    ax.axvline(max_len, color="black", linestyle="--", label=f"max_seq_len {max_len}")
    ax.set_xlabel("tokens per record (prompt + response)")
    ax.set_ylabel("records")
    ax.set_title("Length distribution")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(report: dict, folder: Path, findings: Findings) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / JSON_NAME).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (folder / MD_NAME).write_text(markdown(report), encoding="utf-8")
    plot([(s.name, s.tokens) for s in findings.sources], report["max_seq_len"], folder / PNG_NAME)
