"""Shared fixtures: every test runs on the embedded tiny model, built once per session, and the tests
that need a plain server share one started once per session."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Server


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
