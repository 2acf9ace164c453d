"""The running batch's key/value states: one tensor pair per layer, rows padded on the left.

transformers' DynamicLayer concatenates on every step, copying the whole cache each token. A
SpareLayer keeps spare columns and spare rows: a decoding step writes its column in place, and a
request joining the batch is written into a free row (a spare one, or one whose request has
finished) when its prompt fits the batch's width. Only when it does not, or when finished rows
or dead columns pile up, is the batch rebuilt, in one copy, by `assemble`.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

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
