"""The server's attention function against transformers' own SDPA attention, on grouped-query shapes."""

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from submission.attention import additive_mask, attention


class Layer(torch.nn.Module):
    num_key_value_groups = 2
    is_causal = True


@pytest.mark.parametrize("queries", [1, 7])
def test_matches_transformers_sdpa_under_padding(queries):
    torch.manual_seed(0)
    rows, width = 3, 12
    query = torch.randn(rows, 4, queries, 32)
    key, value = torch.randn(rows, 2, width, 32), torch.randn(rows, 2, width, 32)
    mask = torch.ones(rows, width, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    mask[2, 5:7] = 0  # padding between a cached prefix and the prompt
    ours, _ = attention(Layer(), query, key, value, additive_mask(mask, queries, torch.float32), scaling=0.2)
    columns = torch.arange(width)
    causal = columns <= columns[width - queries :, None]
    theirs, _ = sdpa_attention_forward(
        Layer(), query, key, value, mask.bool()[:, None, None, :] & causal, scaling=0.2, is_causal=False
    )
    torch.testing.assert_close(ours, theirs)


def test_no_mask_is_causal():
    torch.manual_seed(1)
    query, key, value = torch.randn(2, 4, 6, 32), torch.randn(2, 2, 6, 32), torch.randn(2, 2, 6, 32)
    ours, _ = attention(Layer(), query, key, value, None)
    theirs, _ = sdpa_attention_forward(Layer(), query, key, value, None)
    torch.testing.assert_close(ours, theirs)


def test_a_query_with_nothing_to_attend_to_stays_finite():
    mask = torch.tensor([[0, 0, 1, 1]])
    out, _ = attention(
        Layer(),
        torch.randn(1, 4, 4, 32),
        torch.randn(1, 2, 4, 32),
        torch.randn(1, 2, 4, 32),
        additive_mask(mask, 4, torch.float32),
    )
    assert torch.isfinite(out).all()
