"""Load the served model: the settings' base model (HF id or local folder) with its optional PEFT
adapter, as it was trained, in the settings' quantization (core.models.load_trained: the one loader
of training, serving and evaluation).

nf4 and int8 keep the adapter beside the quantized base (merging into quantized weights would
re-quantize it); bf16, fp16 and fp32 merge it, so serving costs nothing extra. `auto` is bf16 (fp16
on GPUs without bf16) on a GPU and fp32 on a CPU. A virtual-token adapter (prompt, P- or prefix
tuning) has nothing to merge: its tokens become a fixed KV prefix of every row (virtual_prefix.py).
"""

from __future__ import annotations

import torch

from core.models import load_trained
from submission import attention, virtual_prefix
from submission.settings import Settings


def load(settings: Settings) -> tuple[torch.nn.Module, object, str]:
    """Return (model in eval mode, tokenizer, the quantization used)."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    model, tokenizer, quant = load_trained(settings.model, settings.adapter, settings.quant, attention.NAME,
                                           keep_virtual=True)
    return virtual_prefix.unwrap(model, settings.adapter), tokenizer, quant
