"""The model under training: a 4-bit NF4 base (bitsandbytes) with LoRA adapters (peft)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from train.recipe import Recipe
from train.tiny import resolve_model_id


def device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def compute_dtype(setting: str) -> torch.dtype:
    """bf16 where the hardware runs it natively (CUDA Ampere+ or a CPU with bf16 support), else fp32."""
    if setting != "auto":
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[setting]
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if torch.backends.mkldnn.is_available() and _cpu_has_bf16() else torch.float32


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def attention_implementation(setting: str) -> str:
    """flash-attn 2 when it is installed and CUDA is there, else PyTorch SDPA."""
    if setting != "auto":
        return setting
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_tokenizer(model_id: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_id(model_id))
    if tokenizer.pad_token_id is None:  # Llama/Mistral ship none; pads are never labels or attended
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def load_base_config(model_id: str):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(resolve_model_id(model_id))


def load_model(recipe: Recipe):
    """Base model in NF4 (double quantization, bf16 compute where supported), prepared for k-bit
    training with gradient checkpointing, with LoRA on the recipe's target projections."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    m, t = recipe.model, recipe.train
    dtype = compute_dtype(m.compute_dtype)
    kwargs: dict = {"dtype": dtype, "attn_implementation": attention_implementation(m.attention),
                    "device_map": {"": device()}}
    if m.quantization == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=m.double_quant,
            bnb_4bit_compute_dtype=dtype,
        )
    model = AutoModelForCausalLM.from_pretrained(resolve_model_id(m.base), **kwargs)
    model.config.use_cache = False
    ckpt_kwargs = {"use_reentrant": False}
    if m.quantization == "nf4":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=t.gradient_checkpointing, gradient_checkpointing_kwargs=ckpt_kwargs)
    elif t.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
        model.enable_input_require_grads()
    lora = LoraConfig(r=recipe.lora.r, lora_alpha=recipe.lora.alpha, lora_dropout=recipe.lora.dropout,
                      target_modules=recipe.lora.targets, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    if t.neftune_alpha > 0:
        # NEFTune: uniform noise on the input embeddings while training, with transformers' own
        # hook. Its scale alpha/sqrt(L*d) takes L as the packed row's length, not each example's.
        from transformers.integrations.neftune import activate_neftune

        activate_neftune(model, t.neftune_alpha)
    return model


def make_optimizer(recipe: Recipe, model) -> torch.optim.Optimizer:
    import bitsandbytes as bnb

    params = [p for p in model.parameters() if p.requires_grad]
    t = recipe.train
    kind = {"paged_adamw_8bit": bnb.optim.PagedAdamW8bit, "adamw_8bit": bnb.optim.AdamW8bit,
            "adamw": torch.optim.AdamW}[t.optimizer]
    return kind(params, lr=t.lr, weight_decay=t.weight_decay)
