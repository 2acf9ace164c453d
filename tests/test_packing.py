"""Packed micro-batches flattened into one row for flash-attention: the same tokens, the same
per-token losses as each example run alone, and the boundaries flash-attention's variable-length
kernel reads. The CPU runs the flattened row through SDPA (transformers masks it block-diagonally
from the restarting position ids); the CUDA test runs it through flash-attn itself."""
from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from transformers.modeling_flash_attention_utils import (
    _is_packed_sequence,
    prepare_fa_kwargs_from_position_ids,
)

from core.models import load_tokenizer
from train.data.packing import IGNORE, collate, flatten, pack
from train.data.pipeline import tokenize
from train.model import load_model, make_optimizer
from train.recipe import parse_recipe
from train.run.loop import train_step

TEXTS = [("Question: Which number is the largest?\nA. 3\nB. 9\nAnswer:", " B"), ("Q: What is 2 plus 2?\nA:", " 4"),
         ("Q: Spell 'cat' backwards.\nA:", " tac"), ("Q: What is 10 minus 7?\nA:", " 3"),
         ("Q: Name a primary colour.\nA:", " red")]
WIDTH = 64


def recipe(attention: str = "sdpa", compute: str = "fp32"):
    return parse_recipe({"model": {"compute_dtype": compute, "attention": attention},
                         "data": [{"kind": "generated", "name": "mc_largest"}]})


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return load_tokenizer(str(tiny_model))


@pytest.fixture(scope="module")
def two_rows(tokenizer):
    """A micro-batch of two packed rows (the 4090 recipe's micro-batch 2), each with padding."""
    examples = [tokenize(tokenizer, p, c, WIDTH, train_on_inputs=True) for p, c in TEXTS]
    rows = pack(examples, WIDTH)
    assert len(rows) == 2 and all(len(row) >= 2 for row in rows)
    return examples, rows, collate(rows, tokenizer.pad_token_id, packed=True, width=WIDTH)


def labelled_token_losses(model, batch: dict) -> torch.Tensor:
    """Loss of every labelled token, rows in order, one flat tensor."""
    device = next(model.parameters()).device
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        logits = model(**inputs, use_cache=False).logits.cpu()
    out = []
    for row_logits, row_labels in zip(logits, batch["labels"]):
        shifted = row_labels[1:]
        keep = shifted != IGNORE
        out.append(F.cross_entropy(row_logits[:-1][keep].float(), shifted[keep], reduction="none"))
    return torch.cat(out)


def test_flattened_row_keeps_every_token_label_and_position(two_rows):
    _, _, batch = two_rows
    flat = flatten(batch)
    for key in ("input_ids", "labels", "position_ids"):
        assert flat[key].shape == (1, 2 * WIDTH)
        assert torch.equal(flat[key][0], batch[key].reshape(-1))
    # The second row's first token is a target of nothing, so no loss term crosses the row seam.
    assert flat["labels"][0, WIDTH] == IGNORE


def test_boundaries_are_what_flash_attention_reads(two_rows):
    """Our cumulative lengths equal those transformers derives from the one-row position ids; the
    two-row batch is not read as packed at all (the fault this fixes)."""
    _, rows, batch = two_rows
    flat = flatten(batch)
    assert not _is_packed_sequence(batch["position_ids"], batch_size=2)
    assert _is_packed_sequence(flat["position_ids"], batch_size=1)
    (cu_q, cu_k), (max_q, max_k) = prepare_fa_kwargs_from_position_ids(flat["position_ids"])
    assert torch.equal(flat["cu_seq_lens_q"], cu_q) and torch.equal(flat["cu_seq_lens_k"], cu_k)
    assert flat["max_length_q"] == int(max_q) == flat["max_length_k"] == int(max_k)
    lengths = flat["cu_seq_lens_q"].diff().tolist()
    pads = [WIDTH - sum(len(e.input_ids) for e in row) for row in rows]
    expected = [n for row, pad in zip(rows, pads) for n in [len(e.input_ids) for e in row] + ([pad] if pad else [])]
    assert lengths == expected and sum(lengths) == 2 * WIDTH
    assert flat["max_length_q"] == max(expected)
    assert flat["cu_seq_lens_q"].dtype == torch.int32


def test_flattened_micro_batch_scores_as_if_each_example_ran_alone(tiny_model, tokenizer, two_rows):
    _, rows, batch = two_rows
    model = load_model(recipe()).eval()
    flat = labelled_token_losses(model, flatten(batch))
    packed = labelled_token_losses(model, batch)
    alone = torch.cat([labelled_token_losses(model, collate([[e]], tokenizer.pad_token_id, packed=True))
                       for row in rows for e in row])
    assert flat.shape == alone.shape == packed.shape
    torch.testing.assert_close(flat, alone, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(packed, alone, atol=1e-4, rtol=1e-4)
    # What flash-attention does with the two rows (the fault): restarting position ids, but plain
    # causal attention over each whole row. An all-ones mask makes SDPA do the same: examples see
    # their row's earlier examples and the losses move far from the examples' own.
    crossed = labelled_token_losses(model, dict(batch, attention_mask=torch.ones_like(batch["input_ids"])))
    assert (crossed - alone).abs().mean() > 0.1


@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("flash_attn") is None,
                    reason="needs CUDA and flash-attn")
def test_flash_attention_two_rows_need_flattening(tiny_model, tokenizer, two_rows):
    """On flash-attn: the two-row batch lets packed examples attend to each other, the flattened
    row scores each example as if alone (within bf16 noise)."""
    _, rows, batch = two_rows
    model = load_model(recipe("flash_attention_2", "bf16")).eval()
    alone = torch.cat([labelled_token_losses(model, collate([[e]], tokenizer.pad_token_id, packed=True))
                       for row in rows for e in row])
    flat = labelled_token_losses(model, flatten(batch))
    torch.testing.assert_close(flat, alone, atol=3e-2, rtol=3e-2)
    crossed = labelled_token_losses(model, batch)
    assert (crossed - alone).abs().mean() > 0.1
    # train_step flattens on its own: its loss (lr 0, nothing moves) is the examples' mean loss alone.
    loss = train_step(model, make_optimizer(recipe(), model), [dict(batch)], 0.0, 0.0, torch.bfloat16)
    assert abs(loss - alone.mean().item()) < 3e-2
