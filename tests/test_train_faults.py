"""Faults during real training runs of the CLI: the deadline holds whatever the disk does, resume
survives a damaged checkpoint, a crash is recorded, and the limits are limits.

Faults are injected from outside the process: the run folder removed, a file replaced by a folder, a
file cut in place, and, for a write or a phase that hangs, a sitecustomize.py put on the child's
PYTHONPATH only (tests/helpers.site_hook; helpers.hanging_renames: os.replace/os.rename sleep once a
trigger file exists; helpers.hang_call: one call of a function never returns).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.rules import load_rules
from tests.helpers import (
    REPO,
    assert_loadable,
    copy_run,
    hang_call,
    hanging_renames,
    run_train,
    site_hook,
    summary,
    train_cmd,
    wait_for,
    write_recipe,
)
from train.run.schedule import lr_factor

pytestmark = pytest.mark.slow  # real runs of the CLI under injected faults

BUDGET_S = 30


def start(tmp_path: Path, budget: str = f"{BUDGET_S}s", env: dict | None = None) -> tuple[subprocess.Popen, Path, float]:
    run = tmp_path / "run"
    proc = subprocess.Popen(train_cmd("--config", str(write_recipe(tmp_path / "r.toml")), "--budget", budget,
                                      "--output-dir", str(run)), cwd=REPO, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    return proc, run, time.monotonic()


def finish(proc: subprocess.Popen, started: float) -> tuple[int, str, float]:
    """Wait for the run; a run that overshoots its budget by far fails here rather than hanging the suite."""
    try:
        _, err = proc.communicate(timeout=BUDGET_S + 20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"the run was still going {BUDGET_S + 20}s into a {BUDGET_S}s budget:\n{err[-3000:]}")
    return proc.returncode, err, time.monotonic() - started


@pytest.mark.xdist_group("deadline")  # budget-clock assertions: one at a time when the suite runs in parallel
def test_a_ledger_write_that_raises_does_not_stop_the_watchdog(tmp_path: Path, tiny_model: Path):
    proc, run, started = start(tmp_path)
    wait_for(lambda: (run / "adapter").exists(), proc)
    while not (run / "ledger.json").is_dir():  # every later ledger write raises IsADirectoryError
        (run / "ledger.json").unlink(missing_ok=True)
        try:
            (run / "ledger.json").mkdir()
        except FileExistsError:
            continue  # the writer put a file back in between
    code, err, wall = finish(proc, started)
    assert code in (0, 3), err  # a graceful stop, or a hard one if a step ran long (a loaded machine)
    assert wall <= BUDGET_S and 1 <= err.count("could not write the ledger") <= 2  # by the writer, by the end
    assert summary(run)["stop_reason"] in ("budget", "hard_stop:deadline")
    assert_loadable(run / "adapter", tiny_model)


@pytest.mark.xdist_group("deadline")  # budget-clock assertions: one at a time when the suite runs in parallel
def test_the_run_folder_removed_mid_run(tmp_path: Path, tiny_model: Path):
    proc, run, started = start(tmp_path)
    wait_for(lambda: (run / "checkpoints" / "step-0000001").exists(), proc)
    while run.exists():  # the run may add a file while the tree is being removed: go again
        shutil.rmtree(run, ignore_errors=True)
    code, err, wall = finish(proc, started)
    assert code in (0, 3), err
    assert wall <= BUDGET_S and "could not write the ledger" in err
    if code == 0:  # a graceful stop's final save puts the folder back (a hard stop saves nothing)
        assert summary(run)["stop_reason"] == "budget"
        assert_loadable(run / "adapter", tiny_model)


@pytest.mark.xdist_group("deadline")  # budget-clock assertions: one at a time when the suite runs in parallel
def test_a_hanging_filesystem_cannot_keep_the_run_past_its_deadline(tmp_path: Path, tiny_model: Path):
    trigger = tmp_path / "hang-now"
    proc, run, started = start(tmp_path, env=hanging_renames(tmp_path / "hook", trigger))
    wait_for(lambda: (run / "checkpoints" / "step-0000001").exists(), proc)
    trigger.touch()  # from here every rename (ledger, checkpoint, adapter swap) hangs
    code, err, wall = finish(proc, started)
    assert code == 3, err
    assert wall <= BUDGET_S
    assert_loadable(run / "adapter", tiny_model)  # a hung swap never began: the last adapter stands


@pytest.mark.xdist_group("deadline")  # on the worker that makes the shared reference run for test_train_budget
def test_resume_falls_back_from_a_damaged_newest_checkpoint_without_repeating_metrics(six_steps_with_dropout,
                                                                                       tmp_path: Path):
    recipe, whole = six_steps_with_dropout  # a checkpoint after every step, LoRA dropout on
    split = tmp_path / "split"
    first, _ = run_train("--config", str(recipe), "--output-dir", str(split), "--max-steps", "3")
    assert first.returncode == 0, first.stderr
    assert [p.name for p in sorted((split / "checkpoints").iterdir())] == ["step-0000002", "step-0000003"]
    (split / "checkpoints" / "step-0000003" / "adapter" / "adapter_model.safetensors").write_bytes(b"torn")
    second, _ = run_train("--resume", str(split), "--max-steps", "6")
    assert second.returncode == 0, second.stderr
    assert "step-0000003 is damaged" in second.stderr and "resumed     from step-0000002" in second.stderr
    assert summary(split)["steps"] == 6
    steps = [json.loads(line)["step"] for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # step 3, trained twice, is logged once
    a = load_file(whole / "adapter" / "adapter_model.safetensors")
    b = load_file(split / "adapter" / "adapter_model.safetensors")
    for key in a:  # the older checkpoint restored weights, optimizer and RNG together
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)


def test_a_crash_is_recorded_in_the_summary_and_the_ledger(tmp_path: Path):
    run = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.toml")
    assert run_train("--config", str(recipe), "--output-dir", str(run), "--max-steps", "1")[0].returncode == 0
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").write_text("")  # the next checkpoint cannot be written: the run crashes
    proc, _ = run_train("--resume", str(run), "--max-steps", "3")
    assert proc.returncode == 1 and "Traceback" in proc.stderr
    s = summary(run)
    assert s["stop_reason"] == "crashed" and s["exit_code"] == 1 and s["attempts"] == 2
    assert json.loads((run / "ledger.json").read_text())["attempts"][-1]["end"] == "crashed"


def cut_in_place(path: Path) -> None:
    """Damage a file as a torn write does: the same file (inode), half its bytes."""
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


@pytest.mark.xdist_group("deadline")  # on the worker that makes the shared reference run for test_train_budget
def test_kill_9_leaves_adapter_and_checkpoints_independent_and_is_recorded_as_killed(killed_run: Path, tmp_path: Path,
                                                                                      tiny_model: Path):
    run = copy_run(killed_run, tmp_path / "run")  # killed after its second checkpoint, one saved every step
    # adapter/ holds a checkpoint's adapter, but as files of its own: damage to either spares the other.
    checkpoints = sorted((run / "checkpoints").glob("step-*"))
    for checkpoint in checkpoints:
        weights = checkpoint / "adapter" / "adapter_model.safetensors"
        intact = weights.read_bytes()
        cut_in_place(weights)
        assert_loadable(run / "adapter", tiny_model)
        weights.write_bytes(intact)
    cut_in_place(run / "adapter" / "adapter_model.safetensors")
    for checkpoint in checkpoints:
        load_file(checkpoint / "adapter" / "adapter_model.safetensors")
    newest = int(checkpoints[-1].name.removeprefix("step-"))
    resumed, _ = run_train("--resume", str(run), "--max-steps", str(newest + 1))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed     from {checkpoints[-1].name}" in resumed.stderr and "damaged" not in resumed.stderr
    assert_loadable(run / "adapter", tiny_model)  # the resumed checkpoint's, published again
    ends = [a["end"] for a in json.loads((run / "ledger.json").read_text())["attempts"]]
    assert ends == ["killed", "max_steps"]


def assert_a_signal_stops_it_before_training(proc, run: Path, started: float) -> None:
    """SIGTERM before the first step: exit 6, no adapter, and the summary says why."""
    proc.send_signal(signal.SIGTERM)
    code, err, _ = finish(proc, started)
    assert code == 6, err
    assert "no adapter was saved" in err
    s = summary(run)
    assert s["stop_reason"] == "signal_before_training" and s["steps"] == 0 and s["adapter"] is None


def test_a_signal_before_training_has_its_own_exit_code(tmp_path: Path):
    proc, run, started = start(tmp_path, budget="5m")
    wait_for(lambda: (run / "ledger.json").exists(), proc)  # the run has begun: loading the model
    assert_a_signal_stops_it_before_training(proc, run, started)


def test_a_signal_in_the_data_phase_ends_the_run_at_once(tmp_path: Path):
    # The data phase can take minutes (a data report over 200k records); a signal there must not wait
    # for its end. Here it never ends: only acting on the signal at once can stop the run. The data
    # phase comes before the run folder and the model: nothing is made, nothing saved.
    hook = tmp_path / "hook"
    proc, run, started = start(tmp_path, budget="5m", env=hang_call(hook, "train.data.pipeline", "prepare", 1))
    wait_for(lambda: (hook / "hung").exists(), proc)
    proc.send_signal(signal.SIGTERM)
    code, err, _ = finish(proc, started)
    assert code == 6 and "no adapter was saved" in err, err
    assert not run.exists()


def test_max_steps_under_the_budget_clock_brings_the_rate_to_its_floor(tmp_path: Path):
    recipe = write_recipe(tmp_path / "r.toml", "min_lr_ratio = 0.1")
    recipe.write_text(recipe.read_text().replace('schedule = "constant"', 'schedule = "cosine"'))
    run = tmp_path / "run"
    proc, _ = run_train("--config", str(recipe), "--output-dir", str(run), "--max-steps", "6")
    assert proc.returncode == 0, proc.stderr
    rates = [json.loads(line)["lr"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    # the step limit is reached long before the track's 24-hour budget, so it sets the progress
    assert rates == pytest.approx([1e-3 * lr_factor(step / 6, 0.0, 0.1, "cosine") for step in range(6)])


def test_the_cpu_track_hides_cuda_devices(tmp_path: Path):
    from train.budget.limits import hide_gpus

    tracks = load_rules().tracks
    env = {"CUDA_VISIBLE_DEVICES": "0"}
    assert hide_gpus(tracks["cpu"], env) and env["CUDA_VISIBLE_DEVICES"] == ""
    env = {"CUDA_VISIBLE_DEVICES": "0"}
    assert not hide_gpus(tracks["a100-40gb"], env) and env["CUDA_VISIBLE_DEVICES"] == "0"
    # The CLI itself: what CUDA_VISIBLE_DEVICES the training process ended with (a device of "cpu" alone
    # proves nothing on a machine without CUDA). Fails if train/__main__.py stops calling hide_gpus.
    seen = tmp_path / "cuda_visible_devices"
    hook = site_hook(tmp_path / "hook", f"import atexit, os\natexit.register(lambda: open({str(seen)!r}, 'w').write("
                                        "os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')))\n")
    run = tmp_path / "run"
    proc, _ = run_train("--config", str(write_recipe(tmp_path / "r.toml")), "--track", "cpu", "--output-dir", str(run),
                        "--max-steps", "1", env={"CUDA_VISIBLE_DEVICES": "0", **hook})
    assert proc.returncode == 0, proc.stderr
    assert seen.read_text() == "" and summary(run)["device"] == "cpu"


BAD_INPUTS = {  # file -> (content, what the error must name)
    "data.jsonl": ('{"prompt": "a", "completion": "b"}\n\n{"prompt": "c", "completion": \n',
                   "data.jsonl:3: not valid JSON"),
    "fields.jsonl": ('{"prompt": "a", "completion": "b"}\n{"prompt": "c", "answer": "d"}\n',
                     "fields.jsonl:2: record has no field 'completion'"),
    "eval": ('{"question": "a b", "answer": "c #### 7"}\n{"question": "a b"\n',
             "gsm_data_test:2: field '(line)': not JSON"),
    # Read whole, these files are fine; what the run would make of them is not: found by the data
    # phase, which runs before the model loads too.
    "long.jsonl": (json.dumps({"prompt": "word " * 400, "completion": "b"}) + "\n",
                   "data[0] (long.jsonl): no usable examples"),
    "few.jsonl": ('{"prompt": "a", "completion": "b"}\n' * 2,
                  "train.micro_batch_size: 4 rows per micro-batch, but the data makes only"),
}


@pytest.mark.parametrize("bad", sorted(BAD_INPUTS))
def test_a_bad_data_or_eval_data_file_is_refused_before_the_model_loads(tmp_path: Path, bad: str):
    content, named = BAD_INPUTS[bad]
    eval_root = tmp_path / "eval-data"
    (eval_root / "gsm8k").mkdir(parents=True)  # the judges' GSM8K layout (eval's readers)
    (eval_root / "gsm8k" / "gsm_data_train").write_text("")
    (eval_root / "gsm8k" / "gsm_data_test").write_text(content if bad == "eval" else "")
    source = "data.jsonl" if bad == "eval" else bad
    (tmp_path / source).write_text('{"prompt": "a", "completion": "b"}\n' * 8 if bad == "eval" else content)
    recipe = write_recipe(tmp_path / "r.toml", "packing = false")
    recipe.write_text(recipe.read_text().split("[[data]]")[0] + f'[[data]]\nkind = "json"\npath = "{source}"\n')
    run = tmp_path / "run"
    proc, _ = run_train("--config", str(recipe), "--output-dir", str(run), "--eval-data", str(eval_root),
                        "--max-steps", "1")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert named in proc.stderr
    assert bad in ("long.jsonl", "few.jsonl") or str(tmp_path) in proc.stderr  # a file error names the full path
    assert not run.exists()  # refused before the run began: no folder, no ledger, no model loaded
