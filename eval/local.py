"""Target (b): evaluate a local Hugging Face model (plus an optional PEFT adapter) in-process.

The model is loaded here, the way the server loads it (core.models.load_trained: a QLoRA adapter
merged into the weights it was trained on), and handed to lm-eval's HFLM as an object: with
transformers 5.x, lm-eval's own `load_in_4bit` model argument no longer works. Greedy requests stay
greedy (HFLM does not sample at temperature 0); unlike the HTTP path, HFLM cuts completions at the
stop sequences itself.
"""
from __future__ import annotations

from pathlib import Path


def load_local(model: str, adapter: str | Path | None = None, batch_size: int = 8):
    """An lm-eval HFLM over `model` (a folder, a hub id, or embedded:tiny-llama) with `adapter` merged."""
    from lm_eval.models.huggingface import HFLM

    from core.models import device, load_trained
    from core.rules import load_rules

    net, tokenizer, _ = load_trained(model, adapter, "auto", "sdpa")
    return HFLM(pretrained=net, tokenizer=tokenizer, batch_size=batch_size, device=str(device()),
                max_length=load_rules().max_total_tokens)
