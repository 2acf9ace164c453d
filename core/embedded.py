"""Embedded models: `embedded:<name>` ids that name a model built on this machine, not fetched from a hub.

Each id maps to a function that returns the model's folder in the cache, building it the first time;
everything downstream then loads that folder like any hub model. Any other id passes through unchanged.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from core import tiny

PREFIX = "embedded:"
BUILDERS: dict[str, Callable[[], Path]] = {
    tiny.EMBEDDED_ID: tiny.tiny_model_path,
}


def resolve_model_id(model_id: str) -> str:
    """The folder of an embedded id (built if needed); any other id unchanged."""
    if not model_id.startswith(PREFIX):
        return model_id
    if model_id not in BUILDERS:
        raise ValueError(f"unknown embedded model {model_id!r}: known are {', '.join(sorted(BUILDERS))}")
    return str(BUILDERS[model_id]())
