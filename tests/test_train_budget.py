"""The budget, enforced on real runs of the CLI: graceful stop, hard stop, signals, kill -9 + resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import (
    REPO,
    assert_loadable,
    copy_run,
    hang_at_step,
    run_train,
    summary,
    train_cmd,
    wait_for,
    write_recipe,
)
from train.run.schedule import lr_factor

# Real budgeted runs of the CLI; their assertions read the budget's clock, so a parallel suite runs them one
# at a time (and with the other deadline tests: test_train_faults, test_train_ranks).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("deadline")]


def test_schedule_peaks_after_warmup_and_ends_at_its_floor():
    for kind in ("cosine", "linear"):
        assert lr_factor(0.0, 0.1, 0.05, kind) == 0.0
        assert lr_factor(0.1, 0.1, 0.05, kind) == pytest.approx(1.0)
        assert lr_factor(1.0, 0.1, 0.05, kind) == pytest.approx(0.05)
        assert lr_factor(0.5, 0.1, 0.05, kind) < 1.0
    assert lr_factor(0.7, 0.1, 0.05, "constant") == 1.0


def test_a_budgeted_run_ends_inside_its_budget_with_an_adapter(tmp_path: Path, tiny_model: Path):
    run = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.toml", "min_lr_ratio = 0.1")
    recipe.write_text(recipe.read_text().replace('schedule = "constant"', 'schedule = "cosine"'))
    proc, wall = run_train("--config", str(recipe), "--budget", "30s", "--output-dir", str(run))
    assert proc.returncode == 0, proc.stderr
    s = summary(run)
    assert s["stop_reason"] == "budget" and s["overshoot_s"] == 0.0
    assert s["used_s"] <= 30 and wall <= 30
    # Startup, data and load take what they take (a loaded machine doubles them); the training window is
    # the rest, and the schedule needs a few steps in it to be seen rising and falling.
    assert s["steps"] >= 4
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, s["steps"] + 1))
    assert {"loss", "lr", "tokens_per_s", "step_time_s", "peak_mem_mib"} <= rows[-1].keys()
    assert json.loads((run / "data_report.json").read_text())["mix"]["dropped"]  # prepared before the load, written here
    # The time-aware schedule: the rate starts at its peak and falls towards its floor (0.1 x 1e-3) as the
    # budget runs out, the last step past the window's middle. The window's end moves with how long steps
    # take (a loaded machine stops it earlier), so no tighter bound on the last rate.
    assert rows[0]["lr"] > 0.8 * 1e-3 and rows[-1]["lr"] < 0.55 * 1e-3
    assert_loadable(run / "adapter", tiny_model)


def test_a_hung_step_is_ended_hard_inside_the_budget(tmp_path: Path, tiny_model: Path):
    run = tmp_path / "run"
    proc, wall = run_train("--config", str(write_recipe(tmp_path / "r.toml")), "--budget", "25s",
                           "--output-dir", str(run), env=hang_at_step(tmp_path / "hook", 2))
    assert proc.returncode == 3, proc.stderr
    assert "HARD STOP (deadline)" in proc.stderr
    s = summary(run)
    assert s["stop_reason"] == "hard_stop:deadline" and s["used_s"] <= 25 and wall <= 25.5
    assert_loadable(run / "adapter", tiny_model)  # the checkpoint after step 1


def test_sigterm_stops_gracefully_with_a_checkpoint_and_a_second_signal_hard(tmp_path: Path, tiny_model: Path):
    run = tmp_path / "run"
    proc = subprocess.Popen(train_cmd("--config", str(write_recipe(tmp_path / "r.toml")), "--budget", "5m",
                                      "--output-dir", str(run)), cwd=REPO, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (run / "adapter").exists(), proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 4
    s = summary(run)
    assert s["stop_reason"] == "signal"
    assert (run / "checkpoints" / f"step-{s['steps']:07d}").is_dir()
    assert_loadable(run / "adapter", tiny_model)

    hung = tmp_path / "hung"
    proc = subprocess.Popen(train_cmd("--config", str(write_recipe(tmp_path / "r.toml")), "--budget", "5m",
                                      "--output-dir", str(hung)), cwd=REPO, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **hang_at_step(tmp_path / "hook", 2)})
    wait_for(lambda: (hung / "checkpoints" / "step-0000001").exists(), proc)
    time.sleep(1)  # step 2 has begun, and never ends
    proc.send_signal(signal.SIGTERM)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)  # the step never ends, so only the hard path can stop it
    assert proc.wait(timeout=30) == 5
    assert summary(hung)["stop_reason"] == "hard_stop:signal"
    assert_loadable(hung / "adapter", tiny_model)


def test_kill_9_then_resume_continues_the_same_budget(killed_run: Path, tmp_path: Path, tiny_model: Path):
    run = copy_run(killed_run, tmp_path / "run")  # a 60 s run killed after its second checkpoint
    first = json.loads((run / "ledger.json").read_text())["attempts"][0]["seconds"]
    assert first > 5
    resumed, wall = run_train("--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed     from step-" in resumed.stderr
    ledger = json.loads((run / "ledger.json").read_text())
    assert len(ledger["attempts"]) == 2 and ledger["attempts"][0]["seconds"] == first
    s = summary(run)
    assert s["attempts"] == 2 and s["used_s"] <= 60 and s["used_s"] >= first + wall - 1
    assert_loadable(run / "adapter", tiny_model)


def test_resumed_run_reaches_the_same_weights_as_an_uninterrupted_one(six_steps_with_dropout, tmp_path: Path):
    # LoRA dropout on: the restored RNG state must give the same dropout masks.
    recipe, whole = six_steps_with_dropout
    split = tmp_path / "split"
    first, _ = run_train("--config", str(recipe), "--output-dir", str(split), "--max-steps", "3")
    assert first.returncode == 0 and summary(split)["steps"] == 3
    second, _ = run_train("--resume", str(split), "--max-steps", "6")
    assert second.returncode == 0, second.stderr
    assert summary(split)["steps"] == 6
    from safetensors.torch import load_file

    a = load_file(whole / "adapter" / "adapter_model.safetensors")
    b = load_file(split / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)


@pytest.mark.parametrize("args, message", [
    (["--budget", "25h"], "exceeds the cpu track's limit of 24h"),
    (["--budget", "ten minutes"], "malformed duration"),
    (["--track", "tpu-v5"], "tpu-v5"),
])
def test_bad_limits_are_clear_errors(args, message):
    proc, _ = run_train(*args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_an_unapproved_base_model_is_refused_unless_overridden(tmp_path: Path):
    from transformers import GPTJConfig, GPTJForCausalLM

    from core.tiny import tiny_model_path

    folder = tmp_path / "gptj"
    GPTJForCausalLM(GPTJConfig(n_embd=64, n_layer=1, n_head=2, vocab_size=1024, rotary_dim=16)).save_pretrained(folder)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (folder / f).write_bytes((tiny_model_path() / f).read_bytes())
    recipe = write_recipe(tmp_path / "r.toml", "max_steps = 1", f'[model]\nbase = "{folder}"\n'
                          'quantization = "none"\n[lora]\ntargets = ["q_proj", "v_proj"]')
    proc, _ = run_train("--config", str(recipe), "--output-dir", str(tmp_path / "run"))
    assert proc.returncode == 2 and "gptj" in proc.stderr and "--allow-unapproved-model" in proc.stderr
    proc, _ = run_train("--config", str(recipe), "--output-dir", str(tmp_path / "run"), "--allow-unapproved-model")
    assert proc.returncode == 0, proc.stderr
    assert "breaks the competition rules" in proc.stderr
