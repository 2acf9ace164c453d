"""Embedded models: `embedded:<name>` ids that name a model built on this machine, not fetched from a hub.

Each id maps to a function that returns the model's folder in the cache, building it the first time;
everything downstream then loads that folder like any hub model. A path to a GGUF file is converted
once into the cache the same way (core/gguf.py). Any other id passes through unchanged.

`python -m core.embedded build [ID ...]` builds them ahead of time (scripts/setup-env does, so no
training run spends its budget building a model).
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from core import gguf, smollm2, tiny

PREFIX = "embedded:"
BUILDERS: dict[str, Callable[[], Path]] = {
    tiny.EMBEDDED_ID: tiny.tiny_model_path,
    smollm2.EMBEDDED_ID: smollm2.smollm2_path,
}


def resolve_model_id(model_id: str) -> str:
    """The folder of an embedded id or a GGUF file (built if needed); any other id unchanged."""
    if model_id.endswith(".gguf"):
        return str(gguf.cached_folder(Path(model_id).expanduser()))
    if not model_id.startswith(PREFIX):
        return model_id
    if model_id not in BUILDERS:
        raise ValueError(f"unknown embedded model {model_id!r}: known are {', '.join(sorted(BUILDERS))}")
    return str(BUILDERS[model_id]())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.embedded", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["build"])
    parser.add_argument("ids", nargs="*", metavar="ID", help=f"default: all ({', '.join(BUILDERS)})")
    args = parser.parse_args(argv)
    for model_id in args.ids or list(BUILDERS):
        started = time.monotonic()
        try:
            folder = resolve_model_id(model_id)
        except (RuntimeError, ValueError) as err:
            parser.exit(1, f"{model_id}: {err}\n")
        print(f"{model_id}: {folder} ({time.monotonic() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
