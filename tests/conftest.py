"""Shared fixtures: every test runs on the embedded tiny model, built once per session; the tests that
need a plain server share one started once per session, and the tests that resume a reference
training run share that run."""
from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, Server, run_train, train_cmd, wait_for, write_recipe


def pytest_configure(config: pytest.Config) -> None:
    # Every process of the suite (xdist workers, the training runs and servers they start) computes on
    # one thread: with a pool of one thread per core in each, the processes sharing the cores spin
    # against each other (two tiny training runs side by side on 2 cores: 34 s of steps each, 11 s with one
    # thread each). Children inherit the variable; the worker itself already holds torch.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # xdist hands out tests in collection order (after the largest group, "deadline"): the slow ones
    # first, so that the quick ones fill the workers' ends instead of one long test ending the run alone.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """Folder of the embedded tiny Llama (HF format: config, weights, tokenizer)."""
    from core.tiny import tiny_model_path

    return tiny_model_path()


@pytest.fixture(scope="session")
def default_server(tiny_model, tmp_path_factory) -> Iterator[Server]:
    """`python -m submission` with every default (the embedded tiny model, fp32 on a CPU) and one torch
    thread (servers and the test process share the CPUs). Shared: tests must not depend on its state."""
    server = Server(["-m", "submission", "--threads", "1"], {}, tmp_path_factory.mktemp("default-server") / "log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nf4_server(tiny_model, tmp_path_factory) -> Iterator[Server]:
    """`uvicorn submission.main:app` configured by environment variables to serve the same model in 4-bit NF4."""
    server = Server(["-m", "uvicorn", "submission.main:app", "--host", "127.0.0.1"],
                    {"HARNESS_MODEL": str(tiny_model), "HARNESS_QUANT": "nf4", "HARNESS_THREADS": "1"},
                    tmp_path_factory.mktemp("nf4-server") / "log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


# ---- training runs that several tests start from (each test works on its own copy) ----------------------

SAVING_EVERY_STEP = 'checkpoint_every = "0.01s"'  # a checkpoint after every step: the newest two are kept


@pytest.fixture(scope="session")
def six_steps_with_dropout(tmp_path_factory) -> tuple[Path, Path]:
    """(recipe, run) of an uninterrupted 6-step run with LoRA dropout on (so the RNG state matters):
    the reference a resumed run must reach bit for bit."""
    folder = tmp_path_factory.mktemp("six-steps")
    recipe = write_recipe(folder / "r.toml", SAVING_EVERY_STEP, "[lora]\ndropout = 0.1")
    proc, _ = run_train("--config", str(recipe), "--output-dir", str(folder / "run"), "--max-steps", "6")
    assert proc.returncode == 0, proc.stderr
    return recipe, folder / "run"


@pytest.fixture(scope="session")
def killed_run(tmp_path_factory) -> Path:
    """A run of a 60 s budget ended by kill -9 once its second checkpoint exists (no summary, its
    ledger's attempt unfinished). Tests resume copies of it (`copy_run`)."""
    folder = tmp_path_factory.mktemp("killed")
    run = folder / "run"
    proc = subprocess.Popen(train_cmd("--config", str(write_recipe(folder / "r.toml", SAVING_EVERY_STEP)),
                                      "--budget", "60s", "--output-dir", str(run)), cwd=REPO, stderr=subprocess.DEVNULL)
    wait_for(lambda: (run / "checkpoints" / "step-0000002").exists(), proc)
    proc.kill()
    proc.wait()
    return run
