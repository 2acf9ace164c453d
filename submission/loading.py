"""Load the served model: the settings' base model (HF id or local folder) with its optional PEFT
adapter, as it was trained, in the settings' quantization (core.models.load_trained: the one loader
of training, serving and evaluation).

nf4 and int8 keep the adapter beside the quantized base (merging into quantized weights would
re-quantize it); bf16, fp16 and fp32 merge it, so serving costs nothing extra. `auto` is bf16 (fp16
on GPUs without bf16) on a GPU and fp32 on a CPU.
"""

from __future__ import annotations

import torch

from core.models import load_trained
from submission import attention
from submission.settings import Settings


def load(settings: Settings) -> tuple[torch.nn.Module, object, str]:
    """Return (model in eval mode, tokenizer, the quantization used)."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    return load_trained(settings.model, settings.adapter, settings.quant, attention.NAME)
