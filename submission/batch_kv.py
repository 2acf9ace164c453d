"""The running batch's key/value states: one tensor pair per layer, rows padded on the left.

transformers' DynamicLayer concatenates on every step, copying the whole cache each token; a
SpareLayer keeps spare columns and writes the step's column in place. When rows join or leave,
`assemble` builds the new batch in one copy, dropping the columns no row attends to any more.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [rows, heads, tokens, dim]
SPARE = 64  # columns reserved per growth: one copy every SPARE decoding steps


class SpareLayer(DynamicLayer):
    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int):
        """Buffers [rows, heads, capacity, dim] whose first `length` columns hold states."""
        super().__init__()
        self.device, self.is_initialized = keys.device, True
        self.buffers = (keys, values)
        self._expose(length)

    @classmethod
    def holding(cls, keys: torch.Tensor, values: torch.Tensor, spare: int = SPARE) -> SpareLayer:
        rows, heads, length, _ = keys.shape
        layer = cls(
            keys.new_empty(rows, heads, length + spare, keys.shape[-1]),
            values.new_empty(rows, heads, length + spare, values.shape[-1]),
            0,
        )
        layer.buffers[0][:, :, :length] = keys
        layer.buffers[1][:, :, :length] = values
        layer._expose(length)
        return layer

    def _expose(self, length: int) -> None:
        self.length = length
        self.keys = self.buffers[0][:, :, :length]
        self.values = self.buffers[1][:, :, :length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        new = key_states.shape[-2]
        if self.length + new > self.buffers[0].shape[-2]:
            grown = SpareLayer.holding(self.keys, self.values, max(new, SPARE))
            self.buffers = grown.buffers
        self.buffers[0][:, :, self.length : self.length + new] = key_states
        self.buffers[1][:, :, self.length : self.length + new] = value_states
        self._expose(self.length + new)
        return self.keys, self.values


def cache_of(layers: list[SpareLayer]) -> DynamicCache:
    cache = DynamicCache()
    cache.layers = list(layers)
    return cache


def kv_of(cache: DynamicCache) -> KV:
    return [(layer.keys, layer.values) for layer in cache.layers]


def left_pad(mask: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - mask.shape[1]
    return mask if missing == 0 else torch.cat([mask.new_zeros(mask.shape[0], missing), mask], dim=1)


def assemble(
    parts: list[tuple[KV, torch.Tensor, list[int]]], spare: int = SPARE
) -> tuple[DynamicCache, torch.Tensor]:
    """One batch from parts (states, attention mask, rows to keep), each padded on the left to
    the widest; columns masked in every row are dropped. Returns the cache and its mask."""
    width = max(mask.shape[1] for _, mask, _ in parts)
    masks = [left_pad(mask[rows], width) for _, mask, rows in parts]
    combined = torch.cat(masks)
    used = combined.any(dim=0)
    combined = combined[:, used]
    layers = []
    for layer in range(len(parts[0][0])):
        keys = values = None
        row = 0
        for (kv, mask, rows), padded in zip(parts, masks):
            k, v = kv[layer]
            if keys is None:
                keys = k.new_zeros(combined.shape[0], k.shape[1], combined.shape[1] + spare, k.shape[-1])
                values = v.new_zeros(combined.shape[0], v.shape[1], combined.shape[1] + spare, v.shape[-1])
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
        layers.append(SpareLayer(keys, values, combined.shape[1]))
    return cache_of(layers), combined
