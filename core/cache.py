"""Where built artefacts live: embedded models, evaluation data, anything built once per machine."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    """$HARNESS_CACHE, else ~/.cache/llm-harness."""
    return Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "llm-harness"))


def build_once(target: Path, build: Callable[[Path], None], rebuild: bool = False) -> Path:
    """`target`, built by `build(staging_folder)` if absent. The folder appears atomically, so a crash
    mid-build or two processes building at once never leave a half-written artefact."""
    if target.is_dir() and not rebuild:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(staging)
        if rebuild and target.exists():
            shutil.rmtree(target)
        try:
            staging.rename(target)
        except OSError:  # another process finished first: theirs is as good as ours
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
