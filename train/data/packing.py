"""Rows and batches: examples packed into rows of `max_seq_len` tokens, batched in a seeded order.

Packing puts several examples in one row. To keep packed examples from seeing each other, position
ids restart at 0 for every example: transformers turns restarting position ids (with no attention
mask) into a block-diagonal causal mask, and flash-attention uses them as variable-length
boundaries. The first token of every example is never a label, so no loss term predicts one
example from the previous one.

Flash-attention reads those boundaries only from a batch of one row (transformers'
`_is_packed_sequence`); on a batch of several rows it runs plain causal attention over each whole
row, across its examples. `flatten` turns a packed micro-batch into that one row, with the
cumulative sequence lengths its variable-length kernel takes, as transformers'
`DataCollatorWithFlattening(return_flash_attn_kwargs=True)` does.
"""
from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch

IGNORE = -100


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]


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

    def from_position(self, position: int, rank: int = 0, world_size: int = 1) -> Iterator[dict[str, torch.Tensor]]:
        """Batches from global batch index `position` on, epoch after epoch, without end; each
        carries `num_tokens` (its non-pad tokens), which the caller pops before the forward pass.
        Rank `rank` of `world_size` processes gets every world_size-th batch from position + rank."""
        epoch, index = divmod(position, self.per_epoch)
        seen = 0  # batches since `position`
        while True:
            order = list(range(len(self.rows)))
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
            for i in range(index, self.per_epoch):
                seen += 1
                if (seen - 1) % world_size != rank:
                    continue
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


def flatten(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | int]:
    """A packed batch of B rows as one row of B x width tokens, plus the sequence boundaries.

    Each row's padding tail stays a segment of its own, so the tokens and the loss are those of the
    B-row batch: the last token of a row has the next row's first label, which is never a target."""
    positions = batch["position_ids"].reshape(1, -1)
    starts = (positions[0] == 0).nonzero().flatten()
    cu_seq_lens = torch.cat([starts, torch.tensor([positions.shape[1]])]).to(torch.int32)
    longest = int(cu_seq_lens.diff().max())
    return {"input_ids": batch["input_ids"].reshape(1, -1), "labels": batch["labels"].reshape(1, -1),
            "position_ids": positions, "cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens,
            "max_length_q": longest, "max_length_k": longest}
