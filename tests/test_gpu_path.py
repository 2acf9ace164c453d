"""The parts of the CUDA path whose logic runs without CUDA (issue 25): FSDP's LoRA precision and
checkpointing style, NEFTune's noise scale on the flash and SDPA layouts, one TF32 API."""
from __future__ import annotations

import gc
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch

from train.data.packing import flatten
from train.model import load_model, make_optimizer
from train.recipe import parse_recipe

DATA = [{"kind": "generated", "name": "arith_qa", "max_examples": 16}]


def recipe(compute_dtype: str = "fp32", **train):
    return parse_recipe({"train": {"max_seq_len": 64, "micro_batch_size": 2, **train},
                         "model": {"compute_dtype": compute_dtype}, "data": DATA})


def test_one_adamw_step_at_lr_2e5_is_lost_in_bf16_and_kept_in_fp32():
    """Why FSDP's LoRA must train in fp32: bf16's spacing at 0.01 is 6.1e-5, above the step."""
    kept = {}
    for dtype in (torch.bfloat16, torch.float32):
        value = torch.nn.Parameter(torch.full((4,), 0.01, dtype=dtype))
        optimizer = torch.optim.AdamW([value], lr=2e-5, weight_decay=0.0)
        value.grad = torch.ones_like(value)
        optimizer.step()
        kept[dtype] = bool((value.detach().float() != torch.tensor(0.01, dtype=dtype).float()).all())
    assert kept == {torch.bfloat16: False, torch.float32: True}


def test_sharded_lora_keeps_fp32_master_weights_and_its_updates(tiny_model):
    """load_model(sharded=True) on a bf16 base: the packed 4-bit weights are held in bf16 (FSDP's
    one dtype per unit), LoRA stays fp32, and one AdamW step at lr 2e-5 moves nearly every lora_A
    value. Mutant: casting LoRA to the compute dtype (the old code) leaves most of them unchanged."""
    r = recipe("bf16", optimizer="adamw", lr=2e-5, neftune_alpha=0.0)
    torch.manual_seed(0)
    model = load_model(r, sharded=True)
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert q_proj.base_layer.weight.dtype == torch.bfloat16  # bnb_4bit_quant_storage
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trained and {p.dtype for p in trained.values()} == {torch.float32}
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}

    optimizer = make_optimizer(r, model)
    model.train()
    ids = torch.randint(3, 200, (2, 32))
    for step in range(2):  # lora_B starts at zero: lora_A has a gradient from the second step on
        lora_a = {n: p.detach().clone() for n, p in trained.items() if "lora_A" in n}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        # Reentrant checkpointing (the sharded path's) still brings gradients to LoRA in every layer.
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in trained.items() if "lora_B" in n)
        optimizer.step()
        optimizer.zero_grad()
    moved = [(trained[n].detach() != before).float().mean().item() for n, before in lora_a.items()]
    assert min(moved) > 0.9, moved


def test_sharded_checkpointing_is_reentrant_and_single_gpu_is_not(tiny_model):
    """Mutant: use_reentrant=False on both paths (the old code) fails the sharded assertion."""
    def reentrant(model) -> bool:
        layer = model.base_model.model.model.layers[0]
        return layer._gradient_checkpointing_func.keywords["use_reentrant"]

    assert reentrant(load_model(recipe(), sharded=True)) is True
    assert reentrant(load_model(recipe())) is False


def test_neftune_noise_is_the_same_on_the_flattened_and_the_packed_layout(tiny_model):
    """The flash path flattens a [B, W] micro-batch into one row; each token's noise scale is
    alpha / sqrt(its example's length * d) on both. Mutant: transformers' hook (L = the row's
    length) makes the flattened row's noise sqrt(B) = 2x weaker at B = 4."""
    alpha, width = 5.0, 32
    model = load_model(recipe(neftune_alpha=alpha))
    model.train()
    lengths = [[10, 22], [32], [5, 7, 20], [16, 16]]  # examples packed into 4 rows of 32
    positions = torch.tensor([[i for n in row for i in range(n)] for row in lengths])
    ids = torch.randint(3, 200, positions.shape)
    batch = {"input_ids": ids, "labels": ids.clone(), "position_ids": positions}
    embeddings = model.get_input_embeddings()
    seen = []
    embeddings.register_forward_hook(lambda module, inputs, output: seen.append(output.detach()))
    clean = embeddings.weight.detach()[ids]
    noise = {}
    for name, layout in (("packed", batch), ("flat", flatten(batch))):
        torch.manual_seed(1)
        seen.clear()
        model(**{k: v for k, v in layout.items()}, use_cache=False)
        noise[name] = seen[0].reshape(clean.shape) - clean
    assert torch.allclose(noise["packed"], noise["flat"], atol=1e-6)
    d = clean.shape[-1]
    per_token = torch.tensor([[n for n in row for _ in range(n)] for row in lengths], dtype=torch.float32)
    bound = alpha / torch.sqrt(per_token * d)
    assert (noise["flat"].abs().amax(-1) <= bound * 1.0001).all()
    assert (noise["flat"].abs().amax(-1) > 0.8 * bound).all()  # d = 128 uniform draws reach the bound
    assert positions.shape[1] == width
    model.eval()
    seen.clear()
    model(input_ids=ids, use_cache=False)
    assert torch.equal(seen[0], clean)  # no noise outside training


def test_tf32_is_set_through_the_api_every_reader_reads():
    """enable_tf32's one API: after it, torch.compile's reader (get_float32_matmul_precision) and both
    flag APIs read without "mix of the legacy and new APIs". Runs in a fresh process (the flags are
    global); on a CPU the setter is called directly. Mutant: transformers' enable_tf32
    (torch.backends.fp32_precision = "tf32") makes the reader raise."""
    code = ("import torch\n"
            "from train.run.loop import use_tf32\n"
            "use_tf32()\n"
            "print(torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32,\n"
            "      torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.allow_tf32)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["high", "True", "tf32", "True"]


def test_the_servers_plan_reads_memory_after_releasing_what_loading_left():
    """free_bytes releases before it reads: a 1.5 GiB tensor held only by a reference cycle (as a
    merge's discarded wrappers can be) is freed by the time free_bytes has read the memory. On CUDA the
    same call empties the caching allocator, the gigabytes NF4 loading and merging leave there. Watched
    through the tensor itself, not the machine's free memory, which other processes move. Mutant: no
    gc.collect() in free_bytes: the tensor is still alive."""
    from submission.memory import free_bytes

    gc.disable()  # the cycle is freed by free_bytes, not by an automatic collection on the way
    try:
        tensor = torch.ones(3 * 2**27, dtype=torch.float32)  # 1.5 GiB
        alive = weakref.ref(tensor)
        cycle: list = [tensor, None]
        cycle[1] = cycle
        del tensor, cycle
        assert alive() is not None  # still held: only the cycle collector frees it
        assert free_bytes(torch.device("cpu")) > 0
        assert alive() is None
    finally:
        gc.enable()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_free_bytes_counts_the_allocators_cached_blocks():
    """A freed 1 GiB tensor stays in the caching allocator, which mem_get_info counts as used;
    free_bytes gives it back first. Mutant: no empty_cache() in free_bytes: about 1 GiB less."""
    from submission.memory import free_bytes

    device = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.empty_cache()
    before = torch.cuda.mem_get_info(device)[0]
    block = torch.empty(2**30, dtype=torch.uint8, device=device)
    del block
    assert torch.cuda.mem_get_info(device)[0] < before - 2**29  # cached, not returned
    assert free_bytes(device) > before - 2**29


def flash_attn_step() -> str:
    """Dockerfile.train's FLASH_ATTN instruction, as the shell command docker runs."""
    text = (Path(__file__).resolve().parent.parent / "Dockerfile.train").read_text().replace("\\\n", "")
    line = next(line for line in text.splitlines() if line.startswith('RUN case "$FLASH_ATTN"'))
    return line.removeprefix("RUN ")


def test_training_image_refuses_a_flash_attn_it_would_build_from_source():
    """A requirement like flash-attn==2.8.3 makes pip compile flash-attn, which needs nvcc (absent
    from a -runtime base image): refused at once with the reason; no value installs nothing.
    Mutant: the old `pip install "$FLASH_ATTN"` of any value fails the refusal assertions."""
    step = flash_attn_step()
    refused = subprocess.run(["sh", "-c", step], env={"FLASH_ATTN": "flash-attn==2.8.3", "PATH": "/usr/bin:/bin"},
                             capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 1
    assert "prebuilt flash-attn wheel" in refused.stderr and "nvcc" in refused.stderr
    nothing = subprocess.run(["sh", "-c", step], env={"FLASH_ATTN": "", "PATH": "/usr/bin:/bin"},
                             capture_output=True, text=True, timeout=60, check=False)
    assert (nothing.returncode, nothing.stdout, nothing.stderr) == (0, "", "")
