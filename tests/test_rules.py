"""The competition's limits: durations, tracks, budgets, the base-model rule and budget.toml checking."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType
from hypothesis import given
from hypothesis import strategies as st

from core.rules import (
    DEFAULT_BUDGET_FILE,
    OVERRIDE_FLAG,
    check_base_model,
    format_duration,
    load_rules,
    parse_duration,
)
from tests.helpers import free_port
from train.budget.limits import apply_gpu_limits, budget_seconds, check_processes, choose_track

REAL_TEXT = DEFAULT_BUDGET_FILE.read_text(encoding="utf-8")
ACCELERATE_CONFIGS = DEFAULT_BUDGET_FILE.parent / "configs" / "accelerate"


@pytest.fixture(scope="module")
def rules():
    return load_rules()


# --- durations -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("24h", 86400),
        ("90m", 5400),
        ("45s", 45),
        ("1h30m", 5400),
        ("1h30m15s", 5415),
        ("1h15s", 3615),
        ("0.5h", 1800),
        ("1.5m", 90),
        (" 2m ", 120),
        ("0s", 0),
    ],
)
def test_parse_duration_accepts_hours_minutes_seconds(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", " ", "10", "5x", "1h-3m", "h", "2d", "30m1h", "1h 30m", "-5m", "1.h", "1hh", "24H", "1e3s"]
)
def test_parse_duration_rejects_malformed_text(text):
    with pytest.raises(ValueError, match=r"malformed duration .*: use forms like 24h, 90m, 45s, 1h30m"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (5400, "1h30m"),
        (45.2, "45s"),
        (86400, "24h"),
        (3661, "1h1m1s"),
        (3600.4, "1h"),
        (2.5, "2.5s"),
        (0, "0s"),
    ],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@given(st.integers(min_value=0, max_value=10**7))
def test_format_duration_reads_back_whole_seconds(seconds):
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("seconds", [-1, float("inf"), float("nan")])
def test_format_duration_refuses_what_is_not_a_duration(seconds):
    with pytest.raises(ValueError, match="finite and not negative"):
        format_duration(seconds)


# --- the real budget.toml ------------------------------------------------------------------------


def test_real_budget_file_declares_the_four_tracks_at_24h(rules):
    assert DEFAULT_BUDGET_FILE == Path(__file__).resolve().parent.parent / "budget.toml"
    assert set(rules.tracks) == {"a100-40gb", "rtx4090-24gb", "multi-gpu", "cpu"}
    for name, track in rules.tracks.items():
        assert track.name == name
        assert track.wall_clock_s == 24 * 3600
        assert 0 < track.final_save_reserve_s + track.margin_s < track.wall_clock_s
        assert track.checkpoint_every_s > 0
    a100, rtx, cpu = rules.tracks["a100-40gb"], rules.tracks["rtx4090-24gb"], rules.tracks["cpu"]
    assert (a100.gpus, rtx.gpus, cpu.gpus) == (1, 1, 0)
    # Capped at what CUDA reports on the real cards, just under the nominal 40 GB / 24 GB.
    assert 39 < a100.gpu_memory_gib <= 40
    assert 23 < rtx.gpu_memory_gib <= 24
    assert cpu.gpu_memory_gib is None


def test_real_budget_file_has_an_uncapped_multi_gpu_track_outside_the_competition(rules):
    multi = rules.tracks["multi-gpu"]
    assert multi.gpus == 8
    assert multi.gpu_memory_gib is None  # each process has all of its own card
    assert "not a competition track" in multi.card
    assert (multi.final_save_reserve_s, multi.margin_s) == (300, 120)


def test_real_budget_file_declares_the_challenge_rules(rules):
    assert rules.max_total_tokens == 2048
    assert {"llama", "mistral", "qwen", "falcon", "mpt", "gpt_neox", "gpt2", "opt", "bloom", "t5"} <= (
        rules.approved_model_types
    )
    assert {"instruct", "chat", "flan"} <= set(rules.instruct_markers)
    assert any("ChatGPT" in line for line in rules.data_rules)
    assert any("Open-source datasets only" in line for line in rules.data_rules)


# --- budget.toml errors --------------------------------------------------------------------------


def _variant(tmp_path: Path, old: str, new: str) -> Path:
    """The real budget.toml with one exact passage replaced, written to a temporary file."""
    assert REAL_TEXT.count(old) == 1, f"{old!r} must occur once in budget.toml"
    path = tmp_path / "budget.toml"
    path.write_text(REAL_TEXT.replace(old, new), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("[tracks.cpu]\n", "[tracks.cpu]\ngpu = 1\n", r"unknown key\(s\) gpu in tracks\.cpu"),
        ("# The competition's", 'budget = "24h"\n#', r"unknown key\(s\) budget; expected rules, tracks"),
        (
            "max_total_tokens = 2048",
            "max_total_tokens = 2048\nmax_tokens = 1",
            r"unknown key\(s\) max_tokens in rules",
        ),
        ("gpus = 0", 'gpus = "0"', r"tracks\.cpu\.gpus must be an integer, got '0' \(str\)"),
        ("gpus = 0", "gpus = true", r"tracks\.cpu\.gpus must be an integer, got True \(bool\)"),
        (
            "max_total_tokens = 2048",
            'max_total_tokens = "2048"',
            r"rules\.max_total_tokens must be an integer",
        ),
        (
            "gpu_memory_gib = 39.38",
            'gpu_memory_gib = "40GB"',
            r"tracks\.a100-40gb\.gpu_memory_gib must be a number",
        ),
        ("gpu_memory_gib = 39.38", "gpu_memory_gib = 0", r"tracks\.a100-40gb\.gpu_memory_gib must be positive"),
        ("gpus = 8", "gpus = -1", r"tracks\.multi-gpu\.gpus must be 0 or more, got -1"),
        ('margin = "1.5s"', 'margin = "3 s"', r"tracks\.cpu\.margin: malformed duration '3 s'"),
        ('margin = "1.5s"', "margin = 3", r"tracks\.cpu\.margin must be a string, got 3 \(int\)"),
        (
            "gpus = 0",
            "gpus = 0\ngpu_memory_gib = 8",
            r"tracks\.cpu\.gpu_memory_gib is set but the track has gpus = 0",
        ),
        (
            'checkpoint_every = "30s"',
            'checkpoint_every = "0s"',
            r"tracks\.cpu\.checkpoint_every must be positive",
        ),
        ("'-it\\b',", "'-it(',", r"rules\.instruct_markers: '-it\(' is not a valid regular expression"),
        ("[tracks.cpu]", "[tracks.cpu-only]", r"missing key tracks\.cpu"),
        ('"Never ChatGPT output.",', "3,", r"rules\.data_rules must hold non-empty strings, got 3"),
    ],
)
def test_budget_file_errors_name_the_offending_key(tmp_path, old, new, message):
    path = _variant(tmp_path, old, new)
    with pytest.raises(ValueError, match=message) as error:
        load_rules(path)
    assert str(path) in str(error.value)


def test_gpu_memory_cap_is_optional_on_a_gpu_track(tmp_path):
    track = load_rules(_variant(tmp_path, "gpu_memory_gib = 39.38", "")).tracks["a100-40gb"]
    assert (track.gpus, track.gpu_memory_gib) == (1, None)
    capped = load_rules(_variant(tmp_path, "gpus = 8\n", "gpus = 8\ngpu_memory_gib = 79.1\n")).tracks["multi-gpu"]
    assert (capped.gpus, capped.gpu_memory_gib) == (8, 79.1)


def test_budget_file_that_is_not_toml_or_missing(tmp_path):
    with pytest.raises(ValueError, match="is not valid TOML"):
        load_rules(_variant(tmp_path, "[rules]", "[rules"))
    with pytest.raises(ValueError, match="not found"):
        load_rules(tmp_path / "absent.toml")


# --- tracks and budgets --------------------------------------------------------------------------


def test_no_track_on_a_cpu_machine_is_the_cpu_track(rules):
    assert choose_track(rules, None, cuda_available=False) is rules.tracks["cpu"]


def test_no_track_on_a_gpu_machine_asks_for_one(rules):
    with pytest.raises(ValueError) as error:
        choose_track(rules, None, cuda_available=True)
    assert str(error.value) == (
        "a CUDA device is visible: choose the hardware track with --track a100-40gb or --track rtx4090-24gb"
        " (a run on several GPUs: --track multi-gpu)"
    )


def test_no_track_on_a_gpu_machine_names_only_the_tracks_budget_toml_has(tmp_path):
    without_multi = REAL_TEXT.split("[tracks.multi-gpu]")[0] + "[tracks.cpu]" + REAL_TEXT.split("[tracks.cpu]")[1]
    path = tmp_path / "budget.toml"
    path.write_text(without_multi, encoding="utf-8")
    with pytest.raises(ValueError) as error:
        choose_track(load_rules(path), None, cuda_available=True)
    assert str(error.value).endswith("--track a100-40gb or --track rtx4090-24gb")


def test_unknown_track_lists_the_known_ones(rules):
    with pytest.raises(
        ValueError, match=r"unknown track 'h100': known tracks are a100-40gb, cpu, multi-gpu, rtx4090-24gb"
    ):
        choose_track(rules, "h100", cuda_available=True)


def test_gpu_track_without_cuda_is_refused(rules):
    with pytest.raises(ValueError, match="track rtx4090-24gb needs a CUDA GPU but none is available"):
        choose_track(rules, "rtx4090-24gb", cuda_available=False)
    assert choose_track(rules, "a100-40gb", cuda_available=True).gpus == 1
    assert choose_track(rules, "cpu", cuda_available=True).gpus == 0
    assert choose_track(rules, "multi-gpu", cuda_available=True).gpus == 8
    with pytest.raises(ValueError, match="track multi-gpu needs a CUDA GPU but none is available"):
        choose_track(rules, "multi-gpu", cuda_available=False)


# --- processes: one per GPU ----------------------------------------------------------------------


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_cpu_track_accepts_any_number_of_processes(rules, world_size):
    check_processes(rules, rules.tracks["cpu"], world_size)


@pytest.mark.parametrize("name", ["a100-40gb", "rtx4090-24gb"])
def test_competition_tracks_refuse_a_second_process(rules, name):
    check_processes(rules, rules.tracks[name], 1)
    with pytest.raises(ValueError) as error:
        check_processes(rules, rules.tracks[name], 2)
    assert str(error.value) == (
        f"the {name} track allows 1 GPU, but 2 processes were launched (one GPU each):"
        " a run on 2 GPUs needs --track multi-gpu"
    )


def test_multi_gpu_track_accepts_up_to_its_gpu_count(rules):
    multi = rules.tracks["multi-gpu"]
    for world_size in range(1, 9):
        check_processes(rules, multi, world_size)
    with pytest.raises(ValueError) as error:
        check_processes(rules, multi, 9)
    assert str(error.value) == (
        "the multi-gpu track allows 8 GPUs, but 9 processes were launched (one GPU each):"
        " no track allows that many; launch at most 8 processes"
    )


@pytest.mark.parametrize("name", ["cpu", "rtx4090-24gb", "multi-gpu"])
def test_fewer_than_one_process_is_refused(rules, name):
    with pytest.raises(ValueError, match="the number of processes must be at least 1, got 0"):
        check_processes(rules, rules.tracks[name], 0)


# --- the accelerate launch configs ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "processes"),
    [("ddp.yaml", 8), ("cpu-gloo.yaml", 2)],
)
def test_accelerate_configs_load_with_accelerates_own_loader(file, processes):
    """Both start torchrun (MULTI_GPU, not use_cpu: that would start a single process); the cpu
    track's Accelerator(cpu=True) then makes the gloo run MULTI_CPU."""
    config = load_config_from_file(str(ACCELERATE_CONFIGS / file))
    assert config.distributed_type == DistributedType.MULTI_GPU
    assert (config.num_processes, config.num_machines, config.use_cpu) == (processes, 1, False)
    assert config.mixed_precision == "no"  # the recipe's train.autocast decides precision


def test_the_fsdp_config_shards_without_flattening_trainable_and_frozen_weights_together():
    config = load_config_from_file(str(ACCELERATE_CONFIGS / "fsdp-qlora.yaml"))
    assert config.distributed_type == DistributedType.FSDP and config.mixed_precision == "no"
    fsdp = config.fsdp_config
    assert fsdp["fsdp_version"] == 1 and fsdp["fsdp_use_orig_params"] is False
    assert fsdp["fsdp_sharding_strategy"] == "FULL_SHARD" and fsdp["fsdp_cpu_ram_efficient_loading"] is False
    assert config.gpu_ids == "all"


_PROBE = """
import os
import torch.distributed
from accelerate import Accelerator
accelerator = Accelerator(cpu=True)  # what training makes on the cpu track
line = (f"rank {accelerator.process_index} of {accelerator.num_processes}"
        f" {accelerator.distributed_type.value} {torch.distributed.get_backend()}\\n")
os.write(1, line.encode())  # one write, so the two processes' lines do not interleave
"""


def test_cpu_gloo_config_launches_two_gloo_processes(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(_PROBE, encoding="utf-8")
    accelerate = Path(sys.executable).parent / "accelerate"
    result = subprocess.run(
        [str(accelerate), "launch", "--config_file", str(ACCELERATE_CONFIGS / "cpu-gloo.yaml"),
         "--main_process_port", str(free_port()), str(probe)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    ranks = sorted(line for line in result.stdout.splitlines() if line.startswith("rank "))
    assert ranks == ["rank 0 of 2 MULTI_CPU gloo", "rank 1 of 2 MULTI_CPU gloo"], result.stdout
    assert "had defaults used" not in result.stderr  # every launcher setting comes from the file


def test_budget_defaults_to_the_track_limit_and_may_be_shorter(rules):
    track = rules.tracks["a100-40gb"]
    assert budget_seconds(track, None) == 86400
    assert budget_seconds(track, "1h30m") == 5400
    assert budget_seconds(track, "24h") == 86400


def test_budget_over_the_limit_is_refused(rules):
    with pytest.raises(ValueError) as error:
        budget_seconds(rules.tracks["a100-40gb"], "25h")
    assert str(error.value) == "budget 25h exceeds the a100-40gb track's limit of 24h"
    with pytest.raises(ValueError, match="malformed duration '1 day'"):
        budget_seconds(rules.tracks["cpu"], "1 day")


def test_budget_with_no_time_after_the_final_save_reserve_is_refused(rules):
    cpu = rules.tracks["cpu"]
    with pytest.raises(ValueError, match=r"budget 3s leaves no time to train on the cpu track"):
        budget_seconds(cpu, "3s")
    assert budget_seconds(cpu, "30s") == 30


# --- the base-model rule -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_id", "model_type"),
    [
        ("meta-llama/Llama-2-7b-hf", "llama"),
        ("mistralai/Mistral-7B-v0.1", "mistral"),
        ("EleutherAI/pythia-1b", "gpt_neox"),
        ("t5-base", "t5"),
        ("dbmdz/bert-base-italian-cased", "bert"),  # "-it" counts only as a whole suffix part
        ("/data/chat-models/llama-2-7b/", "llama"),  # a folder above the model does not count
    ],
)
def test_approved_base_models_pass(rules, model_id, model_type):
    assert check_base_model(rules, model_id, model_type, allow_unapproved=False) is None


def test_the_embedded_tiny_model_passes(rules, tiny_model):
    model_type = json.loads((tiny_model / "config.json").read_text())["model_type"]
    assert check_base_model(rules, str(tiny_model), model_type, allow_unapproved=False) is None


def test_unapproved_model_type_is_refused_with_the_approved_list(rules):
    with pytest.raises(ValueError) as error:
        check_base_model(rules, "google/gemma-7b", "gemma", allow_unapproved=False)
    text = str(error.value)
    assert "base model google/gemma-7b refused" in text
    assert "model_type 'gemma' is not an approved base-model family" in text
    assert "gpt_neox, internlm, llama, mistral" in text
    assert OVERRIDE_FLAG in text


@pytest.mark.parametrize(
    ("model_id", "model_type", "found"),
    [
        ("mistralai/Mistral-7B-Instruct-v0.1", "mistral", "instruct"),
        ("meta-llama/Llama-2-7b-chat-hf", "llama", "chat"),
        ("google/flan-t5-large", "t5", "flan"),
        ("someone/llama-7b-it", "llama", "-it"),
        ("OpenAssistant/oasst-sft-4-pythia-12b", "gpt_neox", "sft"),
        ("databricks/dolly-v2-3b", "gpt_neox", "dolly"),
    ],
)
def test_instruction_tuned_names_are_refused(rules, model_id, model_type, found):
    with pytest.raises(
        ValueError, match=re.escape(f"base model {model_id} refused: its name contains '{found}'")
    ):
        check_base_model(rules, model_id, model_type, allow_unapproved=False)


def test_explicit_override_turns_the_refusal_into_a_warning(rules):
    warning = check_base_model(rules, "google/gemma-7b-it", "gemma", allow_unapproved=True)
    assert warning.startswith("warning: base model google/gemma-7b-it breaks the competition rules")
    assert "model_type 'gemma'" in warning
    assert "'-it'" in warning
    assert warning.endswith(f"allowed by {OVERRIDE_FLAG}")


# --- GPU limits ----------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only path")
def test_gpu_limits_on_a_cpu_machine(rules):
    assert apply_gpu_limits(rules.tracks["cpu"]) == ["no CUDA device: using the cpu track limits"]
    with pytest.raises(ValueError, match="track a100-40gb needs a CUDA GPU but none is available"):
        apply_gpu_limits(rules.tracks["a100-40gb"])


# In a child process: the memory cap lasts for the life of the process that sets it.
_CAP_CHECK = """
import torch
from core.rules import load_rules
from train.budget.limits import apply_gpu_limits
track = load_rules().tracks["rtx4090-24gb"]
if torch.cuda.device_count() > 1:
    try:
        apply_gpu_limits(track)
    except ValueError as error:
        assert "CUDA_VISIBLE_DEVICES" in str(error), error
        print("refused")
    raise SystemExit(0)
lines = apply_gpu_limits(track)
total_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
if total_gib > track.gpu_memory_gib:
    assert any("capped" in line for line in lines), lines
    fits = torch.empty(int((track.gpu_memory_gib - 1) * 2**30), dtype=torch.uint8, device="cuda")
    del fits
    torch.cuda.empty_cache()
    try:
        torch.empty(int((track.gpu_memory_gib + 0.5) * 2**30), dtype=torch.uint8, device="cuda")
    except torch.OutOfMemoryError:
        print("capped")
else:
    print("uncapped")
"""


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() > 8, reason="needs 1-8 CUDA devices")
def test_gpu_limits_without_a_cap_leave_the_card_whole(rules):
    lines = apply_gpu_limits(rules.tracks["multi-gpu"])
    device = torch.cuda.current_device()
    assert lines[0].startswith(f"CUDA device {device}: ")
    assert lines[1:] == ["the multi-gpu track sets no memory cap: this process may use all of its card"]
    over_4090 = int((rules.tracks["rtx4090-24gb"].gpu_memory_gib + 1) * 2**30)
    if torch.cuda.mem_get_info(device)[0] > over_4090 + 2**30:
        block = torch.empty(over_4090, dtype=torch.uint8, device="cuda")
        del block
        torch.cuda.empty_cache()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_limits_cap_memory_at_the_track_card():
    result = subprocess.run(
        [sys.executable, "-c", _CAP_CHECK], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in {"refused", "capped", "uncapped"}, result.stdout
    if torch.cuda.device_count() == 1 and torch.cuda.get_device_properties(0).total_memory / 2**30 > 24:
        assert result.stdout.strip() == "capped"
