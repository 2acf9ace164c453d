"""bench/gpu_check.py's CPU mode, end to end in a subprocess, so the GPU check cannot rot between
the rare runs on a GPU: every phase runs and every figure is there and consistent, in a process
where datasketch cannot be imported (the device image has none) and with the device command's flags."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # the whole device script on the CPU
def test_cpu_mode_reports_every_figure(tiny_model, tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    without_datasketch = ("import runpy, sys; sys.modules['datasketch'] = None; sys.path.insert(0, 'bench'); "
                          "sys.argv = ['bench/gpu_check.py', *sys.argv[1:]]; "
                          "runpy.run_path('bench/gpu_check.py', run_name='__main__')")
    proc = subprocess.run(
        [sys.executable, "-c", without_datasketch, "--cpu", "--steps", "2", "--budget-s", "300", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["skipped"] == [] and figures["failed"] == {}
    assert figures["device"]["device"] == "cpu" and figures["device"]["peak_tflops"] > 0

    args = figures["args"]
    flops = figures["flops"]
    # N_base of the FLOPs rule (bench/gpu_figures.base_params, from the shape's dimensions) is what the
    # model built from those dimensions multiplies by: every nn.Linear's weights, counted on the model.
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        built = LlamaForCausalLM(LlamaConfig(**figures["model"]["dims"], tie_word_embeddings=False))
    assert flops["base_params"] == sum(m.weight.numel() for m in built.modules() if isinstance(m, torch.nn.Linear))
    assert flops["lora_params"] > 0
    assert flops["hardware_flops_per_token"] > flops["model_flops_per_token"] > 4 * flops["base_params"]
    for side in ("ours", "trainer_flat", "trainer"):
        run = figures[side]
        assert 0 < run["tokens"] <= 1.5 * args["steps"] * args["micro_batch"] * args["seq_len"]
        assert math.isclose(run["tokens_per_s"], run["tokens"] / run["seconds"])
        # The physical limit: no step does more work per second than the measured matmul peak (on the
        # CPU the peak is measured, so an MFU or HFU above 1 means a wrong FLOPs count or peak).
        assert 0 < run["mfu"] < run["hfu"] < 1
        assert run["peak_allocated_gib"] > 0
    # Packing fills rows; one padded example per row cannot come close.
    assert figures["ours"]["tokens"] > 0.8 * args["steps"] * args["micro_batch"] * args["seq_len"]
    assert figures["ours"]["tokens"] > 2 * figures["trainer"]["tokens"]
    # The fair baseline: the padding-free Trainer trains on about as many tokens per step as ours.
    assert 0.75 < figures["trainer_flat"]["tokens"] / figures["ours"]["tokens"] < 1.25
    assert figures["trainer_flat"]["micro_batch"] > figures["trainer"]["micro_batch"] == args["micro_batch"]
    ours = figures["ours"]
    assert 0 < ours["plan_allocator_gib"] < ours["plan_card_gib"] == sum(ours["plan_terms_gib"].values())

    cap = figures["cap"]
    assert cap["track"] == "rtx4090-24gb" and cap["enforced"] is False and cap["fits"] is True
    # The cap runs before any other training phase (nothing of theirs counted as CUDA context).
    assert list(figures).index("cap") < list(figures).index("ours")
    resume = ours["resume"]
    assert resume["state_gib"] > 0 and resume["allocated_delta_gib"] is None and resume["paged_after_load"] is False
    assert figures["device"]["tf32"] == {"allow_tf32": False, "float32_matmul_precision": "highest",
                                         "cuda_matmul_fp32_precision": "none"}  # no CUDA: TF32 stays off

    serve = figures["serve"]
    plan = serve["plan"]
    assert plan["free_gib"] > 0 and plan["batch_tokens"] > 0 and plan["unreleased_free_gib"] is None
    assert serve["baseline"]["requests"] == 4 and serve["baseline"]["generated_tokens_per_s"] > 0
    assert 0 < serve["full_length_share"] <= 1

    levels = figures["serve"]["levels"]
    assert [level["concurrency"] for level in levels] == [1, 30]
    assert [level["requests"] for level in levels] == args["requests"]
    assert all(level["requests_per_s"] > 0 and level["generated_tokens_per_s"] > 0 for level in levels)

    text = proc.stdout
    for needle in ("FLOPs/token: model", "ours (train_step, packed)", "Trainer + peft (padded)",
                   "Trainer + peft (padding-free)", "MFU", "ratio ours / Trainer padded",
                   "ratio ours / Trainer padding-free", "memory plan (train.budget.plan)", "rtx4090-24gb cap 23.52 GiB",
                   "FITS", "concurrency   1", "concurrency  30", "TF32: allow_tf32", "resume: optimizer state",
                   "server memory plan", "one-at-a-time generate", "ran to max_new_tokens"):
        assert needle in text, needle
    assert figures["summary"] == text.split("total ")[0].strip().splitlines()[-len(figures["summary"]):]
