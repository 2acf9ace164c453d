"""Training data: sources -> prompt templates -> curation -> tokens -> weighted mix; train.data.packing makes
rows and batches. Curation (train/data/curation.py) drops what the recipe's [curation] options say and, for a
run, measures the whole mix for the data report written into the run folder."""
from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from core.generated import TASKS
from core.prompts import format_prompt
from train.data import report as data_report
from train.data.curation import Findings, curate
from train.data.packing import IGNORE, Batches, Example, pack
from train.recipe import DataSource, Recipe, RecipeError, source_path

GENERATED_DEFAULT_COUNT = 2000
ALPACA_PROMPT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
ALPACA_PROMPT_NO_INPUT = "### Instruction:\n{instruction}\n\n### Response:\n"
TEMPLATE_FIELDS = {"completion": ("prompt", "completion"), "alpaca": ("instruction", "input", "output")}


def read_json(path: Path) -> list[tuple[str, dict]]:
    """(where, record) of every record of a .json list or a .jsonl file, where = `path:line`
    (`path, record n` in a .json list), so that an error names the line."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        placed = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                placed.append((f"{path}:{n}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise RecipeError(f"{path}:{n}: not valid JSON ({err.msg}, column {err.colno})") from None
    else:
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise RecipeError(f"{path}:{err.lineno}: not valid JSON ({err.msg}, column {err.colno})") from None
        if not isinstance(records, list):
            raise RecipeError(f"{path}: expected a list of objects (or one object per line in .jsonl)")
        placed = [(f"{path}, record {n}", record) for n, record in enumerate(records, 1)]
    for where, record in placed:
        if not isinstance(record, dict):
            raise RecipeError(f"{where}: expected an object, found {type(record).__name__}")
    return placed


def load_records(recipe: Recipe, source: DataSource, name: str) -> list[tuple[str, dict]]:
    """(where, record) of each raw record of one source: `where` names the file and line, or `name`
    and the record's number."""
    limit = source.max_examples
    if source.kind == "json":
        placed = read_json(source_path(recipe, source))
        return placed[:limit] if limit else placed
    if source.kind == "generated":
        records = TASKS[source.name].make(limit or GENERATED_DEFAULT_COUNT, seed=recipe.train.seed)
    else:
        import datasets

        records = list(datasets.load_dataset(source.name, source.subset or None, split=source.split))
    return [(f"{name}, record {n}", record) for n, record in enumerate(records[:limit] if limit else records, 1)]


def render(source: DataSource, record: dict, where: str) -> tuple[str, str]:
    """(prompt, response) text of one record under the source's template and field mapping."""
    def get(name: str, optional: bool = False) -> str:
        column = source.fields.get(name, name)
        if column not in record:
            if optional:
                return ""
            raise RecipeError(f"{where}: record has no field {column!r} (for {name!r}; map it with fields.{name})")
        return str(record[column])

    if source.template == "completion":
        return get("prompt"), get("completion")
    instruction, extra = get("instruction"), get("input", optional=True)
    prompt = ALPACA_PROMPT.format(instruction=instruction, input=extra) if extra.strip() else (
        ALPACA_PROMPT_NO_INPUT.format(instruction=instruction))
    return prompt, get("output")


def tokenize(tokenizer, prompt: str, response: str, max_len: int, train_on_inputs: bool) -> Example | None:
    """Token ids and labels of one example; None when truncation would leave no response."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (prompt_ids + response_ids)[:max_len]
    if len(ids) <= len(prompt_ids):
        return None
    labels = list(ids) if train_on_inputs else [IGNORE] * len(prompt_ids) + ids[len(prompt_ids):]
    labels[0] = IGNORE  # never predicted from anything: keeps packed neighbours apart
    return Example(ids, labels)


def formatted(tokenizer, prompt: str, prompt_format: str) -> str:
    """The prompt as the model sees it (core/prompts.py), an error naming the recipe key."""
    try:
        return format_prompt(tokenizer, prompt, prompt_format)
    except ValueError as err:
        raise RecipeError(f"model.prompt_format: {err}") from None


def render_sources(recipe: Recipe) -> list[tuple[str, DataSource, list[tuple[str, str]]]]:
    """(name, source, rendered (prompt, response) of every record) for each source, in recipe order."""
    rendered = []
    for i, source in enumerate(recipe.data):
        placed = load_records(recipe, source, f"data[{i}] ({source.name or source.path})")
        rendered.append((source.name or source.path, source, [render(source, record, where) for where, record in placed]))
    return rendered


def build_examples(recipe: Recipe, tokenizer, findings: Findings | None = None) -> list[Example]:
    """The records curation keeps, tokenized and mixed: a source of weight w contributes round(w * size)
    examples (w = 2 repeats each twice, 0.5 keeps a random half), then everything is shuffled by the seed."""
    findings = findings or curate(recipe, tokenizer, render_sources(recipe))
    rng = random.Random(recipe.train.seed)
    mixed: list[Example] = []
    for i, found in enumerate(findings.sources):
        where = f"data[{i}] ({found.name})"
        examples = []
        for (prompt, response), keep in zip(found.pairs, found.keep):
            prompt = formatted(tokenizer, prompt, recipe.model.prompt_format)
            example = tokenize(tokenizer, prompt, response, recipe.train.max_seq_len,
                               recipe.train.train_on_inputs) if keep else None
            if example is not None:
                examples.append(example)
        if not examples:
            raise RecipeError(f"{where}: no usable examples")
        whole, part = divmod(found.source.weight * len(examples), len(examples))
        mixed += examples * int(whole) + rng.sample(examples, round(part))
    rng.shuffle(mixed)
    return mixed


@dataclass
class Prepared:
    """A run's data, ready before the model loads: batches, what curation found, and (rank 0's) the
    data report, written into the run folder once that exists."""
    batches: Batches
    findings: Findings
    report: dict | None

    def write_report(self, folder: Path) -> None:
        if self.report is not None:
            data_report.write(self.report, folder, self.findings)


def prepare(recipe: Recipe, tokenizer, rendered: list[tuple[str, DataSource, list[tuple[str, str]]]] | None = None,
            eval_data: tuple | None = None, report: bool = False) -> Prepared:
    """Batches for training, and what curation found. With `report`, every check runs and the data
    report is built; any contamination found is a warning, never a refusal. `rendered` and `eval_data`:
    the sources and evaluation data, where they were read (and checked) already. A recipe whose data
    leaves nothing to train on is a RecipeError."""
    t = recipe.train
    started = time.monotonic()
    findings = curate(recipe, tokenizer, rendered or render_sources(recipe), full=report, eval_data=eval_data)
    examples = build_examples(recipe, tokenizer, findings)
    rows = pack(examples, t.max_seq_len) if t.packing else [[e] for e in examples]
    if len(rows) < t.micro_batch_size:
        raise RecipeError(f"train.micro_batch_size: {t.micro_batch_size} rows per micro-batch, but the data "
                          f"makes only {len(rows)} rows")
    built = data_report.build(recipe, findings, time.monotonic() - started) if report else None
    warning = data_report.contamination_warning(findings)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    return Prepared(Batches(rows, t.micro_batch_size, t.seed, tokenizer.pad_token_id, t.packing,
                            t.max_seq_len if t.packing else None), findings, built)


def make_batches(recipe: Recipe, tokenizer) -> Batches:
    return prepare(recipe, tokenizer).batches


def report_command(recipe: Recipe, output_dir: str | None) -> int:
    """The `--data-report` command: measure, write, print."""
    from core.models import load_tokenizer

    started = time.monotonic()
    tokenizer = load_tokenizer(recipe.model.base)
    findings = curate(recipe, tokenizer, render_sources(recipe), full=True)
    report = data_report.build(recipe, findings, time.monotonic() - started)
    folder = Path(output_dir) if output_dir else Path("data-reports") / recipe.name
    data_report.write(report, folder, findings)
    print(data_report.table(report))
    warning = data_report.contamination_warning(findings)
    if warning:
        print(warning, file=sys.stderr)
    names = f"{folder / data_report.JSON_NAME}, {data_report.MD_NAME}, {data_report.PNG_NAME}"
    print(f"report      {names} ({report['seconds']:.1f}s)")
    return 0
