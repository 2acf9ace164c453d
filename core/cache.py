"""Where built artefacts live: embedded models, evaluation data, anything built once per machine."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$HARNESS_CACHE, else ~/.cache/llm-harness."""
    return Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "llm-harness"))
