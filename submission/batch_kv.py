"""The running batch's key/value states: one tensor pair per layer, rows padded on the left.

transformers' DynamicLayer concatenates on every step, copying the whole cache each token. A
SpareLayer keeps spare columns and spare rows: a decoding step writes its column in place, and a
request joining the batch is written into a free row (a spare one, or one whose request has
finished) when its prompt fits the batch's width. Only when it does not, or when finished rows
or dead columns pile up, is the batch rebuilt, in one copy, by `assemble`.

`Batch` holds the running requests with their states and mask, within a bound in tokens (rows x
columns); `prompt_layout` and `prefix_states` lay out a forward pass that computes new prompts on
top of their cached prefixes.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from submission.decoding import Job

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [rows, heads, tokens, dim]
SPARE = 64  # columns reserved per growth: one copy every SPARE decoding steps


class SpareLayer(DynamicLayer):
    def __init__(self, keys: torch.Tensor, values: torch.Tensor, rows: int, length: int):
        """Buffers [row capacity, heads, column capacity, dim]; the first `rows` rows and
        `length` columns are the batch."""
        super().__init__()
        self.device, self.is_initialized = keys.device, True
        self.buffers = (keys, values)
        self.rows = rows
        self._expose(length)

    @classmethod
    def holding(
        cls, keys: torch.Tensor, values: torch.Tensor, spare: int = SPARE, capacity: int = 0
    ) -> SpareLayer:
        """A layer holding copies of `keys` and `values`, with `spare` more columns and room
        for `capacity` rows (at least as many as given)."""
        rows, heads, length, _ = keys.shape
        capacity = max(capacity, rows)
        layer = cls(
            keys.new_zeros(capacity, heads, length + spare, keys.shape[-1]),
            values.new_zeros(capacity, heads, length + spare, values.shape[-1]),
            rows,
            0,
        )
        layer.buffers[0][:rows, :, :length] = keys
        layer.buffers[1][:rows, :, :length] = values
        layer._expose(length)
        return layer

    def _expose(self, length: int) -> None:
        self.length = length
        self.keys = self.buffers[0][: self.rows, :, :length]
        self.values = self.buffers[1][: self.rows, :, :length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        new = key_states.shape[-2]
        if self.length + new > self.buffers[0].shape[-2]:
            grown = SpareLayer.holding(self.keys, self.values, max(new, SPARE), self.buffers[0].shape[0])
            self.buffers = grown.buffers
        self.buffers[0][: self.rows, :, self.length : self.length + new] = key_states
        self.buffers[1][: self.rows, :, self.length : self.length + new] = value_states
        self._expose(self.length + new)
        return self.keys, self.values

    def place(self, row: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Write one request's states [heads, tokens, dim] into `row`, ending at the last column.
        Columns left of them keep old values: finite, and masked by the caller."""
        width = keys.shape[1]
        self.buffers[0][row, :, self.length - width : self.length] = keys
        self.buffers[1][row, :, self.length - width : self.length] = values
        if row >= self.rows:
            self.rows = row + 1
            self._expose(self.length)


def cache_of(layers: list[DynamicLayer]) -> DynamicCache:
    cache = DynamicCache()
    cache.layers = list(layers)
    return cache


def kv_of(cache: DynamicCache) -> KV:
    return [(layer.keys, layer.values) for layer in cache.layers]


def left_pad(mask: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - mask.shape[1]
    return mask if missing == 0 else torch.cat([mask.new_zeros(mask.shape[0], missing), mask], dim=1)


def place_rows(
    cache: DynamicCache, mask: torch.Tensor, slots: list[int], kv: KV, new_mask: torch.Tensor, rows: list[int]
) -> torch.Tensor:
    """Write new requests (row rows[i] of `kv` and `new_mask` into batch row `slots[i]`) without
    rebuilding; returns the batch's new mask. The new states must be no wider than the batch;
    `slots` are free rows or the rows right after the last one, within the buffers' capacity."""
    width = mask.shape[1]
    for layer, (k, v) in zip(cache.layers, kv):
        for slot, row in zip(slots, rows):
            layer.place(slot, k[row], v[row])
    total = max(mask.shape[0], max(slots) + 1)
    if total > mask.shape[0]:
        mask = torch.cat([mask, mask.new_zeros(total - mask.shape[0], width)])
    padded = left_pad(new_mask, width)
    for slot, row in zip(slots, rows):
        mask[slot] = padded[row]
    return mask


def capacity(cache: DynamicCache) -> int:
    """Rows the batch can hold without a rebuild."""
    layer = cache.layers[0] if cache.layers else None
    return layer.buffers[0].shape[0] if isinstance(layer, SpareLayer) else 0


def assemble(
    parts: list[tuple[KV, torch.Tensor, list[int]]], spare: int = SPARE, rows_capacity: int = 0
) -> tuple[DynamicCache, torch.Tensor]:
    """One batch from parts (states, attention mask, rows to keep), each padded on the left to
    the widest; columns masked in every row are dropped. Returns the cache and its mask."""
    width = max(mask.shape[1] for _, mask, _ in parts)
    masks = [left_pad(mask[rows], width) for _, mask, rows in parts]
    combined = torch.cat(masks)
    used = combined.any(dim=0)
    combined = combined[:, used]
    total = combined.shape[0]
    layers = []
    for layer in range(len(parts[0][0])):
        k0, v0 = parts[0][0][layer]
        shape = (max(rows_capacity, total), k0.shape[1], combined.shape[1] + spare)
        keys, values = k0.new_zeros(*shape, k0.shape[-1]), v0.new_zeros(*shape, v0.shape[-1])
        row = 0
        for kv, mask, rows in parts:
            k, v = kv[layer]
            first = width - mask.shape[1]  # this part's first column in the padded batch
            kept = used[first:]
            start, count = int(used[:first].sum()), int(kept.sum())
            if len(rows) != k.shape[0]:
                index = torch.tensor(rows, device=k.device)
                k, v = k.index_select(0, index), v.index_select(0, index)
            if count != k.shape[2]:
                k, v = k[:, :, kept], v[:, :, kept]
            keys[row : row + len(rows), :, start : start + count] = k
            values[row : row + len(rows), :, start : start + count] = v
            row += len(rows)
        layers.append(SpareLayer(keys, values, total, combined.shape[1]))
    return cache_of(layers), combined


def prompt_layout(
    prompts: list[list[int]], cached: list[int], pad: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The inputs of one forward pass computing `prompts` on top of their cached prefixes (the first
    cached[i] tokens of prompt i). A row is laid out [padding | cached prefix | padding | rest of
    the prompt]: prefixes end at one column and every prompt's last token is the last column.
    Returns the uncached tokens' ids and positions [rows, width] and the attention mask over all
    the columns [rows, max(cached) + width]."""
    n = len(prompts)
    top = max(cached)
    width = max(len(ids) - length for ids, length in zip(prompts, cached))
    input_ids = torch.full((n, width), pad, dtype=torch.long)
    positions = torch.zeros((n, width), dtype=torch.long)
    mask = torch.zeros((n, top + width), dtype=torch.long)
    for i, (ids, length) in enumerate(zip(prompts, cached)):
        own = len(ids) - length
        input_ids[i, width - own :] = torch.tensor(ids[length:])
        positions[i, width - own :] = torch.arange(length, len(ids))
        mask[i, top - length : top] = 1
        mask[i, top + width - own :] = 1
    return input_ids, positions, mask


def prefix_states(prefixes: list[tuple[KV | None, int]], width: int) -> DynamicCache:
    """Row i's cached prefix (the first `length` columns of a batch of one's states, or none),
    right-aligned at the last cached column as `prompt_layout` puts it, with room for `width` more
    columns written in place by the forward pass."""
    cached = max(length for _, length in prefixes)
    given = [(i, kv, length) for i, (kv, length) in enumerate(prefixes) if kv is not None]
    layers = []
    for layer in range(len(given[0][1])):
        k0, v0 = given[0][1][layer]
        keys = k0.new_zeros(len(prefixes), k0.shape[1], cached + width, k0.shape[-1])
        values = v0.new_zeros(len(prefixes), v0.shape[1], cached + width, v0.shape[-1])
        for i, kv, length in given:
            k, v = kv[layer]
            keys[i, :, cached - length : cached] = k[0, :, :length]
            values[i, :, cached - length : cached] = v[0, :, :length]
        layers.append(SpareLayer(keys, values, len(prefixes), cached))
    return cache_of(layers)


class Batch:
    """The running batch: request rows[i] owns row i of the states and of the mask. A finished
    request's row stays, its output ignored, until a joining request takes its place or a rebuild
    drops it: rebuilding copies all of the states, so it is done for several rows at once."""

    def __init__(self, device: torch.device, max_batch: int, bound: int):
        self.max_batch = max_batch
        self.bound = bound  # tokens: rows x columns, spare ones included; lowered after out of memory
        self.rows: list[Job] = []
        self.cache = DynamicCache()
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=device)
        self.joins = {"in_place": 0, "rebuilding": 0}  # how requests joined the running batch

    def running(self) -> list[int]:
        """Rows whose requests are still generating."""
        return [i for i, job in enumerate(self.rows) if not job.future.done()]

    def widen(self) -> torch.Tensor:
        """Open the next column in every row, for a decoding step's token; returns the new mask."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        return self.mask

    def keep(self, keep: list[int]) -> None:
        """After a decoding step in which only rows `keep` go on: rebuild once no row goes on, or
        once finished rows (a third of the batch) or dead columns cost more than a rebuild."""
        if not keep or self._wasteful(len(self.rows) - len(keep), keep):
            self.set([self.rows[i] for i in keep], [(kv_of(self.cache), self.mask, keep)])

    def _wasteful(self, finished: int, keep: list[int]) -> bool:
        """Whether finished rows, or leading columns no running row attends to, cost the
        decoding steps more than a rebuild would."""
        if finished > max(4, len(self.rows) // 3):
            return True
        width = self.mask.shape[1]
        unused = int(self.mask[keep].any(dim=0).int().argmax())  # leading columns no row uses
        return unused > max(SPARE, width // 4)

    def join(self, jobs: list[Job], kv: KV, mask: torch.Tensor, keep: list[int]) -> None:
        """Add freshly computed prompts (rows `keep` of `jobs`, `kv` and `mask`) to the batch:
        written into free rows when they fit its width, else by rebuilding it."""
        if not keep:
            return
        for i in keep:
            jobs[i].length = len(jobs[i].ids)
        running = self.running()
        busy = set(running)
        slots = [i for i in range(len(self.rows)) if i not in busy]
        slots += list(range(len(self.rows), capacity(self.cache)))
        if self.rows and mask.shape[1] <= self.mask.shape[1] and len(keep) <= len(slots):
            slots = slots[: len(keep)]
            self.mask = place_rows(self.cache, self.mask, slots, kv, mask, keep)
            self.joins["in_place"] += len(keep)
            for slot, i in zip(slots, keep):
                if slot < len(self.rows):
                    self.rows[slot] = jobs[i]
                else:
                    self.rows.append(jobs[i])
            return
        parts = [(kv_of(self.cache), self.mask, running)] if running else []
        self.joins["rebuilding"] += len(keep)
        self.set([self.rows[i] for i in running] + [jobs[i] for i in keep], [*parts, (kv, mask, keep)])

    def set(self, rows: list[Job], parts: list[tuple[KV, torch.Tensor, list[int]]]) -> None:
        """Install the batch built from `parts` (see `assemble`); no rows empties it."""
        self.rows = rows
        if rows:
            # Spare rows for requests to join in place; bounded, as they cost memory and copying.
            width = max(mask.shape[1] for _, mask, _ in parts) + SPARE
            spare_rows = min(self.max_batch, max(2 * len(rows), len(rows) + 4))
            spare_rows = max(len(rows), min(spare_rows, self.bound // width))
            self.cache, self.mask = assemble(parts, rows_capacity=spare_rows)
        else:
            self.cache, self.mask = DynamicCache(), self.mask[:0, :0]
