"""Models, loaded the one way: for training, serving and in-process evaluation alike.

One rule picks the compute dtype (`compute_dtype`), one the attention (`attention_implementation`),
one function loads a base model (`load_base`). Training (train/model.py) puts LoRA on a 4-bit NF4 base
and saves the adapter with the quantization its base weights had
(`save_adapter`: `base_quantization.json` beside peft's files). Serving and evaluation load the
model the adapter was trained as (`load_trained`): a QLoRA adapter learned on the NF4-dequantized
weights, so a full-precision model re-creates those weights (the same NF4 quantization, then
bitsandbytes' dequantization) and merges LoRA into them, not into the original weights; a 4-bit
model keeps the adapter beside the base, cast to the compute dtype. A virtual-token adapter (prompt,
P- or prefix tuning) changes no weight and has nothing to merge: only a caller that serves its
virtual tokens takes it (`keep_virtual`; the submission server, as a KV prefix).
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch

from core.embedded import resolve_model_id

BASE_QUANTIZATION = "base_quantization.json"  # in an adapter folder: the base weights' quantization
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
QUANTIZED = ("nf4", "int8")  # served quantizations; the others are DTYPES' names
VIRTUAL_TOKEN_TYPES = ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING")  # peft types that prefix every sequence


def device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def compute_dtype(setting: str) -> torch.dtype:
    """The one dtype rule. `auto`: bf16 on a GPU that runs it natively, fp16 on an older GPU, fp32
    on the CPU (bitsandbytes' CPU kernels and PyTorch's CPU matmuls are fastest there in fp32)."""
    if setting != "auto":
        return DTYPES[setting]
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, known in DTYPES.items() if known == dtype)


def attention_implementation(setting: str) -> str:
    """flash-attn 2 where transformers accepts it and it really imports (a wheel built against another
    torch fails only at import, with an undefined symbol), else PyTorch SDPA."""
    if setting != "auto":
        return setting
    from transformers.utils import is_flash_attn_2_available

    return "flash_attention_2" if is_flash_attn_2_available() and flash_attn_imports() else "sdpa"


def flash_attn_imports() -> bool:
    try:
        importlib.import_module("flash_attn")
    except (ImportError, OSError):  # OSError: a missing CUDA library
        return False
    return True


def nf4_config(dtype: torch.dtype, double_quant: bool = True, storage: torch.dtype = torch.uint8):
    """NF4 weights; `storage` is the dtype their packed bytes are held in (FSDP needs the model's)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
                              bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_storage=storage)


def load_tokenizer(model_id: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_id(model_id))
    if tokenizer.pad_token_id is None:  # Llama/Mistral ship none; pads are never labels or attended
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def load_base_config(model_id: str):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(resolve_model_id(model_id))


def load_base(model_id: str, dtype: torch.dtype, attention: str, quantization=None):
    """A base model (hub id, folder or the embedded id) on this machine's device, every weight that
    is not quantized in `dtype` (not the config's own dtype: Llama-2's says fp16)."""
    from transformers import AutoModelForCausalLM

    kwargs: dict = {"dtype": dtype, "attn_implementation": attention, "device_map": {"": device()}}
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    return AutoModelForCausalLM.from_pretrained(resolve_model_id(model_id), **kwargs)


# --- adapters: saved by training, loaded by serving and evaluation ---------------------------------


def save_adapter(model, folder: Path, state_dict: dict | None = None) -> None:
    """peft's adapter folder, plus the quantization of the base weights it was trained on.
    `state_dict`: the full model's, when the model itself holds only a shard (FSDP)."""
    model.save_pretrained(folder, state_dict=state_dict)
    quantization = getattr(model.config, "quantization_config", None)
    if quantization is not None:
        (Path(folder) / BASE_QUANTIZATION).write_text(quantization.to_json_string(use_diff=False))


def resolve_quant(quant: str) -> str:
    """`auto` serves in the compute dtype of the rule, the adapter merged."""
    return dtype_name(compute_dtype("auto")) if quant == "auto" else quant


def trained_quantization(adapter: str | Path):
    """The BitsAndBytesConfig of the base weights `adapter` was trained on; None for a full-precision
    base (or an adapter from elsewhere that does not say)."""
    from transformers import BitsAndBytesConfig

    if not (Path(adapter) / "adapter_config.json").is_file():
        raise ValueError(f"adapter {str(adapter)!r} is not a PEFT adapter folder (no adapter_config.json)")
    path = Path(adapter) / BASE_QUANTIZATION
    if not path.is_file():
        return None
    try:
        return BitsAndBytesConfig.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: not a bitsandbytes quantization config ({err})") from None


def virtual_token_method(adapter: str | Path) -> str | None:
    """The adapter's peft type when it is a virtual-token method (prompt, P- or prefix tuning: it
    changes every sequence's prefix, not the weights, so there is nothing to merge); else None."""
    peft_type = json.loads((Path(adapter) / "adapter_config.json").read_text()).get("peft_type")
    return peft_type if peft_type in VIRTUAL_TOKEN_TYPES else None


def load_trained(model_id: str, adapter: str | Path | None, quant: str, attention: str, keep_virtual: bool = False):
    """(model in eval mode, tokenizer, the quantization used): `model_id` with `adapter` as it was trained.

    quant: auto, nf4, int8 (adapter beside the quantized base) or bf16, fp16, fp32 (adapter merged:
    the LoRA family and IA3). A virtual-token adapter cannot be merged: it is refused unless the
    caller serves virtual tokens itself (`keep_virtual`: the PeftModel comes back, unmerged)."""
    quant = resolve_quant(quant)
    dtype = compute_dtype("auto" if quant in QUANTIZED else quant)
    trained_on = None if adapter is None else trained_quantization(adapter)
    virtual = None if adapter is None else virtual_token_method(adapter)
    if virtual and not keep_virtual:
        raise ValueError(f"adapter {str(adapter)!r} is {virtual} (virtual tokens before every prompt): it cannot be "
                         "merged into the weights; serve it with the submission server, which keeps them as a KV prefix")
    if quant == "nf4":
        quantization = trained_on or nf4_config(dtype)
        quantization.bnb_4bit_compute_dtype = dtype
        model = load_base(model_id, dtype, attention, quantization)
    elif quant == "int8":
        from transformers import BitsAndBytesConfig

        model = load_base(model_id, dtype, attention, BitsAndBytesConfig(load_in_8bit=True))
    elif trained_on is not None:
        # Quantize as training did (loaded in its dtype), then dequantize: the weights LoRA learned on.
        model = load_base(model_id, trained_on.bnb_4bit_compute_dtype, attention, trained_on)
        model = model.dequantize(dtype=dtype).to(dtype)
        model.is_loaded_in_4bit = False  # transformers leaves it set; peft's IA3 merge refuses a 4-bit model by it
    else:
        model = load_base(model_id, dtype, attention)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
        if virtual:  # nothing to merge or cast: the caller computes the virtual tokens' states
            return model.eval(), load_tokenizer(model_id), quant
        if quant in QUANTIZED:
            for name, param in model.named_parameters():
                if "lora_" in name:
                    param.data = param.data.to(dtype)  # peft keeps adapters in fp32: a second, slower matmul
        else:
            model = model.merge_and_unload()
    return model.eval(), load_tokenizer(model_id), quant
