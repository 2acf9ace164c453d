"""GGUF files as Hugging Face folders: any GGUF file a user points at, converted once per machine.

transformers reads a GGUF file (with the `gguf` package) and dequantizes it, but refuses to
`save_pretrained` the model it loaded that way; a model built from the same config, minus the GGUF's
quantization entry, and given its state dict saves as an ordinary safetensors folder. Everything
downstream then loads that folder like any hub model. The conversion takes about a minute for a
100M-parameter model on two cores, so it is cached under the file's sha256.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from core.cache import build_once, cache_root

INSTALL_GGUF = "pip install gguf"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert(gguf_file: Path, dest: Path) -> int:
    """Write `gguf_file` as a safetensors folder into `dest` (fp32 weights, its tokenizer and chat
    template); returns the model's parameter count."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401  transformers' GGUF reader
    except ImportError:
        raise RuntimeError(f"reading {gguf_file} needs the gguf package: {INSTALL_GGUF}") from None
    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the file's quantization, not the dequantized weights'
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return model.num_parameters()


def cached_folder(gguf_file: Path) -> Path:
    """The converted folder of `gguf_file`, converting it the first time."""
    gguf_file = Path(gguf_file).resolve()
    if not gguf_file.is_file():
        raise FileNotFoundError(f"no GGUF file at {gguf_file}")
    target = cache_root() / "gguf" / f"{gguf_file.stem}-{sha256(gguf_file)[:16]}"
    return build_once(target, lambda staging: convert(gguf_file, staging))
