"""The served model's attention: PyTorch SDPA under the engine's own masks.

The engine lays batches out itself (rows left-padded, prompts on top of cached prefixes) and
passes every forward a ready 4-D additive mask, which transformers hands to each layer as it is:
no per-forward mask building, and no boolean mask for SDPA to convert in every layer. Registered
with transformers' AttentionInterface under NAME; load models with `attn_implementation=NAME`.

Grouped-query attention (more query heads than key/value heads, as in Llama 3 and Mistral) over
several query tokens runs with SDPA's enable_gqa on the CPU, without copying keys and values per
query head; transformers' own SDPA attention does that only without a mask. Everything else (one
query token, CUDA, no grouped heads) is transformers' own SDPA attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from submission.virtual_prefix import with_prefix

NAME = "harness_sdpa"


def attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """query [batch, heads, tokens, dim], key and value [batch, kv heads, keys, dim]; returns the
    output as [batch, tokens, heads, dim], as transformers' attention functions do."""
    key, value, attention_mask = with_prefix(module, key, value, attention_mask)  # a virtual-token adapter's
    grouped = key.shape[1] < query.shape[1]
    if not (grouped and query.shape[2] > 1 and query.device.type == "cpu"):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    out = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        is_causal=attention_mask is None,
        scale=scaling,
        enable_gqa=True,
    )
    return out.transpose(1, 2).contiguous(), None


def additive_mask(mask: torch.Tensor, queries: int, dtype: torch.dtype) -> torch.Tensor:
    """The 4-D additive mask [rows, 1, queries, columns] of a batch whose 2-D `mask` marks each
    row's real columns, the queries being its last `queries` columns (causal among them). Masked
    entries get the dtype's lowest finite value, not -inf: a query with nothing to attend to
    (left padding) then gets a finite, ignored output instead of NaN."""
    width = mask.shape[1]
    columns = torch.arange(width, device=mask.device)
    allowed = mask.bool()[:, None, None, :] & (columns <= columns[width - queries :, None])
    return torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill_(
        ~allowed, torch.finfo(dtype).min
    )


AttentionInterface.register(NAME, attention)
AttentionMaskInterface.register(NAME, sdpa_mask)  # for callers that pass 2-D masks
