"""Target (b): evaluate a local Hugging Face model (plus an optional PEFT adapter) in-process.

The model is loaded here and handed to lm-eval's HFLM as an object: with transformers 5.x, lm-eval's
own `load_in_4bit` model argument no longer works, and loading ourselves also lets an adapter be
merged first. Greedy requests stay greedy (HFLM does not sample at temperature 0); unlike the HTTP
path, HFLM cuts completions at the stop sequences itself.
"""
from __future__ import annotations

from pathlib import Path

CONTEXT_WINDOW = 2048  # the competition: prompt + completion fit in 2048 tokens


def load_local(model: str, adapter: str | Path | None = None, batch_size: int = 8):
    """An lm-eval HFLM over `model` (a folder, a hub id, or embedded:tiny-llama) with `adapter` merged."""
    import torch
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.tiny import resolve_model_id

    path = resolve_model_id(model)
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    net = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if adapter is not None:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").exists():
            raise FileNotFoundError(f"{adapter}: not a PEFT adapter folder (no adapter_config.json)")
        net = PeftModel.from_pretrained(net, str(adapter)).merge_and_unload()
    device = "cuda" if cuda else "cpu"
    net.to(device).eval()
    return HFLM(pretrained=net, tokenizer=tokenizer, batch_size=batch_size, device=device,
                max_length=CONTEXT_WINDOW)
