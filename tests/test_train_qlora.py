"""Real QLoRA on the tiny model: 4-bit base layers, LoRA adapters, loss that falls; exact packing."""
from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch
import torch.nn.functional as F

from core.models import load_tokenizer
from train.data.packing import IGNORE, collate, pack
from train.data.pipeline import make_batches, tokenize
from train.model import load_model, make_optimizer
from train.recipe import RecipeError, parse_recipe
from train.run.loop import autocast_dtype, enable_tf32, train_step

DATA = [{"kind": "generated", "name": "mc_largest", "max_examples": 64},
        {"kind": "generated", "name": "arith_qa", "max_examples": 64}]


def recipe(**train):
    return parse_recipe({"train": {"max_seq_len": 128, "micro_batch_size": 4, **train},
                         "model": {"compute_dtype": "fp32"}, "data": DATA})


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return load_tokenizer(str(tiny_model))


def test_base_layers_are_nf4_and_only_lora_trains(tiny_model):
    model = load_model(recipe())
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, bnb.nn.Linear4bit)
    assert q_proj.base_layer.weight.quant_type == "nf4"
    assert q_proj.base_layer.weight.quant_state.nested  # double quantization
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    adapted = {n.split(".")[-4] for n in trainable if n.endswith("lora_A.default.weight")}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.mark.slow  # many training steps
def test_loss_falls_on_a_fixed_batch(tiny_model, tokenizer):
    r = recipe(lr=3e-3, optimizer="paged_adamw_8bit")
    torch.manual_seed(0)
    model = load_model(r)
    optimizer = make_optimizer(r, model)
    batch = next(make_batches(r, tokenizer).from_position(0))
    batch.pop("num_tokens")
    losses = [train_step(model, optimizer, [batch], 3e-3, 1.0) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0], losses


def per_token_losses(model, batch) -> list[torch.Tensor]:
    """Loss of every labelled token, in order, for each row."""
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
    out = []
    for row_logits, row_labels in zip(logits, batch["labels"]):
        shifted = row_labels[1:]
        keep = shifted != IGNORE
        out.append(F.cross_entropy(row_logits[:-1][keep].float(), shifted[keep], reduction="none"))
    return out


def test_packed_examples_score_as_if_alone(tiny_model, tokenizer):
    r = recipe()
    model = load_model(r).eval()
    texts = [("Question: Which number is the largest?\nA. 3\nB. 9\nAnswer:", " B"),
             ("Q: What is 2 plus 2?\nA:", " 4"), ("Q: Spell 'cat' backwards.\nA:", " tac")]
    examples = [tokenize(tokenizer, p, c, 128, train_on_inputs=True) for p, c in texts]
    rows = pack(examples, 128)
    assert len(rows) == 1 and len(rows[0]) == 3
    packed = per_token_losses(model, collate(rows, tokenizer.pad_token_id, packed=True, width=128))[0]
    alone = torch.cat([per_token_losses(model, collate([[e]], tokenizer.pad_token_id, packed=True))[0]
                       for e in examples])
    assert packed.shape == alone.shape
    torch.testing.assert_close(packed, alone, atol=1e-4, rtol=1e-4)


def test_no_label_crosses_an_example_boundary(tokenizer):
    examples = [tokenize(tokenizer, "Q: What is 1 plus 1?\nA:", " 2", 64, train_on_inputs=True) for _ in range(3)]
    batch = collate(pack(examples, 64), tokenizer.pad_token_id, packed=True, width=64)
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert len(starts) == 4  # three examples and the padding segment
    assert all(batch["labels"][0, s] == IGNORE for s in starts)  # never predicted from the previous example
    assert (batch["labels"][0, starts[-1]:] == IGNORE).all()  # padding carries no labels


def test_response_only_loss_masks_the_prompt(tokenizer):
    example = tokenize(tokenizer, "Q: What is 1 plus 1?\nA:", " 2", 64, train_on_inputs=False)
    n_prompt = len(tokenizer("Q: What is 1 plus 1?\nA:")["input_ids"])
    assert all(label == IGNORE for label in example.labels[:n_prompt])
    assert example.labels[n_prompt:] == example.input_ids[n_prompt:]
    assert example.input_ids[-1] == tokenizer.eos_token_id


def test_packing_beats_padding_on_the_bundled_data(tokenizer):
    packed = make_batches(recipe(packing=True), tokenizer).token_stats()
    padded = make_batches(recipe(packing=False), tokenizer).token_stats()
    assert packed[0] == padded[0]  # the same tokens
    assert packed[0] / packed[1] > 0.9 > padded[0] / padded[1]


def test_bf16_autocast_computes_in_bf16_and_tracks_the_fp32_loss(tiny_model, tokenizer):
    """train.autocast = "bf16": the fp32 lm_head (and every layer kept in fp32) computes in bf16, the
    loss stays within bf16 rounding of the fp32 loss; the weights stay fp32."""
    r = recipe(autocast="bf16", optimizer="adamw")
    assert autocast_dtype(r) == torch.bfloat16
    model = load_model(r)
    optimizer = make_optimizer(r, model)
    batch = next(make_batches(r, tokenizer).from_position(0))
    batch.pop("num_tokens")
    seen: list[torch.dtype] = []
    model.base_model.model.lm_head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    full = train_step(model, optimizer, [dict(batch)], 0.0, 0.0, None)  # lr 0: nothing moves
    half = train_step(model, optimizer, [dict(batch)], 0.0, 0.0, autocast_dtype(r))
    assert seen == [torch.float32, torch.bfloat16]
    assert abs(half - full) < 0.02 * full, (half, full)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


def test_autocast_setting():
    assert autocast_dtype(recipe(autocast="off")) is None
    expected = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else None
    assert autocast_dtype(parse_recipe({"data": DATA})) == expected  # auto: CUDA bf16 only
    with pytest.raises(RecipeError, match="train.autocast"):
        recipe(autocast="fp8")
    with pytest.raises(RecipeError, match="train.autocast = 'bf16' with model.compute_dtype = 'fp16'"):
        parse_recipe({"train": {"autocast": "bf16"}, "model": {"compute_dtype": "fp16"}, "data": DATA})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_defaults_to_bf16_autocast_and_tf32():
    from transformers.utils import is_torch_tf32_available

    assert autocast_dtype(parse_recipe({"data": DATA})) == torch.bfloat16
    enable_tf32()
    assert not is_torch_tf32_available() or torch.get_float32_matmul_precision() == "high"
