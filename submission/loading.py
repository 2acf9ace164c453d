"""Load the served model: a base model (HF id or local folder), an optional PEFT adapter, and the
quantization of the settings.

nf4 and int8 keep the adapter beside the quantized base (merging into quantized weights would
re-quantize it); bf16, fp16 and fp32 merge it into the base, so serving costs nothing extra.
"""

from __future__ import annotations

from pathlib import Path

import torch

from submission import attention
from submission.settings import Settings
from train.tiny import resolve_model_id


def resolve_quant(quant: str, device: torch.device) -> str:
    """`auto` is the fastest full-quality choice for the device."""
    if quant != "auto":
        return quant
    if device.type == "cuda":
        return "bf16" if gpu_half_dtype() == torch.bfloat16 else "fp16"
    return "fp32"


def gpu_half_dtype() -> torch.dtype:
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load(settings: Settings) -> tuple[torch.nn.Module, object, str]:
    """Return (model in eval mode, tokenizer, the quantization used)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    quant = resolve_quant(settings.quant, device)
    model_id = resolve_model_id(settings.model)
    if settings.adapter is not None and not (Path(settings.adapter) / "adapter_config.json").is_file():
        raise ValueError(
            f"adapter {settings.adapter!r} is not a PEFT adapter folder (no adapter_config.json)"
        )

    kwargs: dict = {"attn_implementation": attention.NAME}
    if quant == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            # CPU kernels compute best in fp32; GPUs in half precision.
            bnb_4bit_compute_dtype=torch.float32 if device.type == "cpu" else gpu_half_dtype(),
        )
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else {"": "cpu"}
    elif quant == "int8":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else {"": "cpu"}
    else:
        kwargs["dtype"] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[quant]

    tokenizer = AutoTokenizer.from_pretrained(model_id)
    model = AutoModelForCausalLM.from_pretrained(model_id, **kwargs)
    if "quantization_config" not in kwargs:
        model.to(device)
    if settings.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, settings.adapter)
        if quant not in ("nf4", "int8"):
            model = model.merge_and_unload()
    model.eval()
    return model, tokenizer, quant
