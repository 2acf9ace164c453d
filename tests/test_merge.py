"""The served model is the trained one: a QLoRA adapter learned on NF4-dequantized weights, so the
server merges it into those (real NF4 quantization and dequantization by bitsandbytes, a real
adapter with non-zero B), not into the original weights; a 4-bit server keeps it beside the base."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from core.models import BASE_QUANTIZATION, load_tokenizer, load_trained, save_adapter
from submission.loading import load
from submission.settings import Settings
from train.model import load_model
from train.recipe import parse_recipe

PROMPT = "Question: Which number is the largest? A. 12 B. 47 C. 3\nAnswer:"


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    """(adapter folder, input ids, logits of the NF4 + LoRA model that trained it, that model)."""
    recipe = parse_recipe({"model": {"compute_dtype": "fp32"}, "lora": {"r": 8, "alpha": 16},
                           "data": [{"kind": "generated", "name": "mc_largest", "max_examples": 8}]})
    model = load_model(recipe)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # as after training: B starts at zero, which would hide any merge error
                param.normal_(0.0, 0.05)
    model.eval()
    ids = load_tokenizer(str(tiny_model))(PROMPT, return_tensors="pt").input_ids
    with torch.inference_mode():
        logits = model(ids).logits
    folder = tmp_path_factory.mktemp("run") / "adapter"
    save_adapter(model, folder)
    return folder, ids, logits, model


def logits_of(model, ids):
    with torch.inference_mode():
        return model(ids).logits


def test_adapter_records_the_quantization_it_was_trained_on(trained):
    recorded = json.loads((trained[0] / BASE_QUANTIZATION).read_text())
    assert recorded["load_in_4bit"] and recorded["bnb_4bit_quant_type"] == "nf4"
    assert recorded["bnb_4bit_use_double_quant"] and recorded["bnb_4bit_compute_dtype"] == "float32"


def test_merged_server_model_equals_the_trained_nf4_lora_model(tiny_model, trained):
    adapter, ids, expected, _ = trained
    merged, _, quant = load(Settings(model=str(tiny_model), adapter=str(adapter), quant="fp32"))
    assert quant == "fp32" and not hasattr(merged, "peft_config")
    error = (logits_of(merged, ids) - expected).abs().max().item()

    # The old way: LoRA merged into the original fp32 weights the adapter never saw.
    original = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    old = PeftModel.from_pretrained(original, str(adapter)).merge_and_unload().eval()
    old_error = (logits_of(old, ids) - expected).abs().max().item()
    print(f"max |logit difference| from NF4 + LoRA: merged into dequantized {error:.2e}, into original {old_error:.2e}")
    assert error < 1e-4
    assert old_error > 1e-2 and old_error > 100 * error


def test_nf4_server_keeps_the_adapter_beside_the_trained_base(tiny_model, trained):
    adapter, ids, expected, _ = trained
    model, _, quant = load(Settings(model=str(tiny_model), adapter=str(adapter), quant="nf4"))
    assert quant == "nf4" and hasattr(model, "peft_config")
    assert {p.dtype for n, p in model.named_parameters() if "lora_" in n} == {torch.float32}  # the CPU's compute dtype
    assert (logits_of(model, ids) - expected).abs().max().item() < 1e-4


def test_nf4_server_computes_in_the_rules_dtype_not_the_configs(tiny_model, tmp_path):
    """Llama-2's config.json says float16: every weight that is not 4-bit must still be in the compute dtype."""
    folder = tmp_path / "fp16-config"
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / "config.json").read_text())
    config["dtype"] = config["torch_dtype"] = "float16"
    (folder / "config.json").write_text(json.dumps(config))
    model, _, _ = load(Settings(model=str(folder), quant="nf4"))
    q_proj = model.model.layers[0].self_attn.q_proj
    assert q_proj.compute_dtype == torch.float32
    assert {p.dtype for p in model.parameters() if p.dtype != torch.uint8} == {torch.float32}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_nf4_server_casts_the_adapter_and_the_merge_matches(tiny_model, trained):
    adapter = trained[0]
    ids = trained[1].cuda()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    nf4, _, _ = load_trained(str(tiny_model), adapter, "nf4", "sdpa")
    assert {p.dtype for n, p in nf4.named_parameters() if "lora_" in n} == {dtype}
    assert nf4.model.model.layers[0].self_attn.q_proj.base_layer.compute_dtype == dtype
    merged, _, quant = load_trained(str(tiny_model), adapter, "auto", "sdpa")
    assert quant == {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    reference = logits_of(nf4, ids).float()
    assert (logits_of(merged, ids).float() - reference).abs().max().item() < 0.05 * reference.abs().max().item()


def test_training_checkpoints_and_the_published_adapter_record_it(trained, tmp_path):
    """The training run's own save paths (train.run.checkpoint) write the file beside peft's."""
    from train.run.checkpoint import save_checkpoint, save_final_adapter

    model = trained[3]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    checkpoint = save_checkpoint(tmp_path, model, optimizer.state_dict(), {"step": 1})
    save_final_adapter(tmp_path, model)
    for adapter in (checkpoint / "adapter", tmp_path / "adapter"):
        assert json.loads((adapter / BASE_QUANTIZATION).read_text())["bnb_4bit_quant_type"] == "nf4"


def test_a_damaged_base_quantization_file_is_named(tiny_model, trained, tmp_path):
    adapter = tmp_path / "adapter"
    shutil.copytree(trained[0], adapter)
    (adapter / BASE_QUANTIZATION).write_text('{"load_in_4bit": tru')
    with pytest.raises(ValueError, match=f"{BASE_QUANTIZATION}: not a bitsandbytes quantization config"):
        load_trained(str(tiny_model), adapter, "fp32", "sdpa")
