"""How much key/value state the server holds, sized in bytes from the device's free memory at start.

The settings bound the batch in rows and the prefix cache in tokens; what a token costs depends on
the model: layers x key/value heads x head size x 2 (keys and values) x bytes per value, 128 KiB
for Mistral-7B in bf16 (8 key/value heads) and 512 KiB for Llama-2-7b (32). The plan takes the
free memory after the weights are loaded and what loading left (cached blocks, garbage) is
released, sets aside a margin for the allocator and the largest forward pass's activations, gives the prefix cache at most 15% of the rest (the batch serves the 30 clients first), and sizes the
running batch in tokens (rows x columns) so that it fits twice (a rebuild copies it) beside the
states of one prompt forward pass.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from submission.settings import Settings

MAX_PREFILL_TOKENS = 8192  # new prompt tokens of one forward pass (rows x padded width)
MARGIN = 0.9  # of the free memory: the caching allocator's fragmentation and other tensors
CACHE_SHARE = 0.15  # of the key/value budget, at most, for the prefix cache (HELM runs a scenario at a time)
GIB = 1024**3


@dataclass(frozen=True)
class MemoryPlan:
    free_bytes: int
    kv_bytes_per_token: int
    workspace_bytes: int  # activations and logits of the largest forward pass
    prefix_cache_tokens: int
    batch_tokens: int  # rows x columns of the running batch, spare rows and columns included
    prefill_tokens: int  # prompt states (cached prefixes copied in, new tokens) of one forward pass

    def kv_bytes(self) -> int:
        """The most key/value bytes the server holds at once: the cache, the batch while a
        rebuild copies it, and one prompt forward pass."""
        return (
            self.prefix_cache_tokens + 2 * self.batch_tokens + self.prefill_tokens
        ) * self.kv_bytes_per_token

    def describe(self) -> str:
        per_token = self.kv_bytes_per_token
        return (
            f"{self.free_bytes / GIB:.1f} GiB free, {per_token // 1024} KiB of keys and values per token:"
            f" prefix cache {self.prefix_cache_tokens} tokens ({self.prefix_cache_tokens * per_token / GIB:.2f} GiB),"
            f" running batch {self.batch_tokens} tokens ({self.batch_tokens * per_token / GIB:.2f} GiB, twice"
            f" while rebuilt), prompt pass {self.prefill_tokens} tokens, activations"
            f" {self.workspace_bytes / GIB:.2f} GiB"
        )


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers * kv_heads * head_dim * 2 * dtype.itemsize


def workspace_bytes(config, dtype: torch.dtype, context: int) -> int:
    """A prompt pass's largest layer (hidden states, residual, projections, the MLP's three
    intermediate tensors) and an echoed prompt's logits over the whole context (the model's, a
    float32 copy and its log-softmax)."""
    layer = MAX_PREFILL_TOKENS * (4 * config.hidden_size + 3 * config.intermediate_size) * dtype.itemsize
    return layer + context * config.vocab_size * (dtype.itemsize + 8)


def plan(free_bytes: int, config, dtype: torch.dtype, settings: Settings, context: int) -> MemoryPlan:
    """The sizes that fit `free_bytes`, never above the settings' own bounds. Raises ValueError
    when not even one full-context request fits."""
    per_token = kv_bytes_per_token(config, dtype)
    workspace = workspace_bytes(config, dtype, context)
    budget = int(free_bytes * MARGIN) - workspace  # bytes for keys and values
    cache = min(settings.prefix_cache_tokens, int(budget * CACHE_SHARE) // per_token)
    # The rest holds the batch twice and a prompt pass of a quarter of the batch (2.25 batches),
    # or of one full context where that is more.
    rest = (budget - cache * per_token) // per_token
    batch = int(rest / 2.25) if rest / 2.25 / 4 >= context else (rest - context) // 2
    batch = min(settings.max_batch * (context + 64), batch)
    if batch < context:
        raise ValueError(
            f"{free_bytes / GIB:.1f} GiB free does not hold one {context}-token request"
            f" ({per_token // 1024} KiB per token, {workspace / GIB:.2f} GiB of activations); lower"
            " --context or serve a smaller or quantized model"
        )
    return MemoryPlan(free_bytes, per_token, workspace, cache, batch, max(context, batch // 4))


def free_bytes(device: torch.device) -> int:
    """Memory the server may still take on `device`, once what loading left behind is released:
    garbage (a merge's discarded wrappers) and, on CUDA, the caching allocator's free blocks (NF4
    loading, dequantizing and merging leave gigabytes there, which mem_get_info counts as used).
    For a CPU, the kernel's estimate of memory available without swapping (free pages alone leave
    out the page cache, which holds the weights file just read)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        return torch.cuda.mem_get_info(device)[0]
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
