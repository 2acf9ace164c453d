"""Training data: sources -> prompt templates -> tokens -> weighted mix -> packed rows -> batches.

Packing puts several examples in one row of `max_seq_len` tokens. To keep packed examples from
seeing each other, position ids restart at 0 for every example: transformers turns restarting
position ids (with no attention mask) into a block-diagonal causal mask, and flash-attention uses
them as variable-length boundaries. The first token of every example is never a label, so no loss
term predicts one example from the previous one.
"""
from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from train.generated import TASKS
from train.recipe import DataSource, Recipe, RecipeError, source_path

IGNORE = -100
GENERATED_DEFAULT_COUNT = 2000
ALPACA_PROMPT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
ALPACA_PROMPT_NO_INPUT = "### Instruction:\n{instruction}\n\n### Response:\n"
TEMPLATE_FIELDS = {"completion": ("prompt", "completion"), "alpaca": ("instruction", "input", "output")}


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]


def load_records(recipe: Recipe, source: DataSource) -> list[dict]:
    """The raw records of one source, as dictionaries."""
    limit = source.max_examples
    if source.kind == "generated":
        return TASKS[source.name].make(limit or GENERATED_DEFAULT_COUNT, seed=recipe.train.seed)
    if source.kind == "json":
        path = source_path(recipe, source)
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix == ".jsonl":
                records = [json.loads(line) for line in text.splitlines() if line.strip()]
            else:
                records = json.loads(text)
        except json.JSONDecodeError as err:
            raise RecipeError(f"{path}: not valid JSON ({err})") from err
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise RecipeError(f"{path}: expected a list of objects (or one object per line in .jsonl)")
    else:
        import datasets

        records = list(datasets.load_dataset(source.name, source.subset or None, split=source.split))
    return records[:limit] if limit else records


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


def build_examples(recipe: Recipe, tokenizer) -> list[Example]:
    """All sources, tokenized and mixed: a source of weight w contributes round(w * size) examples
    (w = 2 repeats each twice, 0.5 keeps a random half), then everything is shuffled by the seed."""
    rng = random.Random(recipe.train.seed)
    mixed: list[Example] = []
    for i, source in enumerate(recipe.data):
        where = f"data[{i}] ({source.name or source.path})"
        examples = []
        for record in load_records(recipe, source):
            example = tokenize(tokenizer, *render(source, record, where), recipe.train.max_seq_len,
                               recipe.train.train_on_inputs)
            if example is not None:
                examples.append(example)
        if not examples:
            raise RecipeError(f"{where}: no usable examples")
        whole, part = divmod(source.weight * len(examples), len(examples))
        mixed += examples * int(whole) + rng.sample(examples, round(part))
    rng.shuffle(mixed)
    return mixed


def pack(examples: list[Example], max_len: int, open_bins: int = 64) -> list[list[Example]]:
    """Group examples into rows of at most max_len tokens, first-fit over the last few open rows
    (order-preserving enough to be deterministic and fast, within a few % of optimal here)."""
    rows: list[list[Example]] = []
    room: list[int] = []
    for example in examples:
        size = len(example.input_ids)
        start = max(0, len(rows) - open_bins)
        for j in range(start, len(rows)):
            if room[j] >= size:
                rows[j].append(example)
                room[j] -= size
                break
        else:
            rows.append([example])
            room.append(max_len - size)
    return rows


def collate(rows: list[list[Example]], pad_id: int, packed: bool, width: int | None = None) -> dict[str, torch.Tensor]:
    """Tensors for one batch. Packed rows get restarting position ids and no attention mask;
    unpacked rows (one example each) are right-padded to the longest and masked."""
    width = width or max(sum(len(e.input_ids) for e in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for example in row:
            n = len(example.input_ids)
            ids[r, at:at + n] = torch.tensor(example.input_ids)
            labels[r, at:at + n] = torch.tensor(example.labels)
            positions[r, at:at + n] = torch.arange(n)
            mask[r, at:at + n] = 1
            at += n
        positions[r, at:] = torch.arange(width - at)  # padding is a segment of its own
    if packed:
        return {"input_ids": ids, "labels": labels, "position_ids": positions}
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


@dataclass
class Batches:
    """Deterministic batch order: rows are reshuffled each epoch from (seed, epoch), so a resumed
    run that skips to the same position sees the same batches."""

    rows: list[list[Example]]
    batch_size: int
    seed: int
    pad_id: int
    packed: bool
    width: int | None

    @property
    def per_epoch(self) -> int:
        return max(1, len(self.rows) // self.batch_size)

    def from_position(self, position: int) -> Iterator[dict[str, torch.Tensor]]:
        """Batches from global batch index `position` on, epoch after epoch, without end; each
        carries `num_tokens` (its non-pad tokens), which the caller pops before the forward pass."""
        epoch, index = divmod(position, self.per_epoch)
        while True:
            order = list(range(len(self.rows)))
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
            for i in range(index, self.per_epoch):
                chosen = [self.rows[j] for j in order[i * self.batch_size:(i + 1) * self.batch_size]]
                batch = collate(chosen, self.pad_id, self.packed, self.width)
                batch["num_tokens"] = torch.tensor(sum(len(e.input_ids) for row in chosen for e in row))
                yield batch
            epoch, index = epoch + 1, 0

    def token_stats(self) -> tuple[int, int]:
        """(non-pad tokens, token slots) over one epoch's rows."""
        tokens = sum(len(e.input_ids) for row in self.rows for e in row)
        if self.packed:
            return tokens, len(self.rows) * (self.width or 0)
        slots = 0
        for i in range(0, len(self.rows), self.batch_size):  # each batch pads to its longest row
            lengths = [len(row[0].input_ids) for row in self.rows[i:i + self.batch_size]]
            slots += max(lengths) * len(lengths)
        return tokens, slots


def make_batches(recipe: Recipe, tokenizer) -> Batches:
    t = recipe.train
    examples = build_examples(recipe, tokenizer)
    rows = pack(examples, t.max_seq_len) if t.packing else [[e] for e in examples]
    if len(rows) < t.micro_batch_size:
        raise RecipeError(f"only {len(rows)} rows of data for micro_batch_size {t.micro_batch_size}")
    return Batches(rows, t.micro_batch_size, t.seed, tokenizer.pad_token_id, t.packing,
                   t.max_seq_len if t.packing else None)
