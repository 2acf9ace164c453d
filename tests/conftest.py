"""Shared fixtures: every test runs on the embedded tiny model, built once per session."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """Folder of the embedded tiny Llama (HF format: config, weights, tokenizer)."""
    from core.tiny import tiny_model_path

    return tiny_model_path()
