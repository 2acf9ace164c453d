"""Training's model: LoRA on the 4-bit NF4 base that core.models loads, and the optimizer over it."""
from __future__ import annotations

import torch

from core.models import attention_implementation, compute_dtype, load_base, nf4_config
from train.recipe import Recipe


def load_model(recipe: Recipe, sharded: bool = False):
    """Base model in NF4 (double quantization, the compute dtype of the rule), prepared for k-bit
    training with gradient checkpointing, with LoRA on the recipe's target projections.

    `sharded` (FSDP) follows the published FSDP+QLoRA recipe: FSDP flattens each wrapped block's
    parameters into one tensor of one dtype, so the packed 4-bit weights are stored in the compute
    dtype, nothing is upcast to fp32 (no prepare_model_for_kbit_training) and LoRA is cast to it."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    m, t = recipe.model, recipe.train
    dtype = compute_dtype(m.compute_dtype)
    quantization = None
    if m.quantization == "nf4":
        quantization = nf4_config(dtype, m.double_quant, storage=dtype if sharded else torch.uint8)
    model = load_base(m.base, dtype, attention_implementation(m.attention), quantization)
    model.config.use_cache = False
    ckpt_kwargs = {"use_reentrant": False}
    if m.quantization == "nf4" and not sharded:
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
    if sharded:
        for param in model.parameters():
            if param.requires_grad:
                param.data = param.data.to(dtype)
    return model


def make_optimizer(recipe: Recipe, model) -> torch.optim.Optimizer:
    import bitsandbytes as bnb

    params = [p for p in model.parameters() if p.requires_grad]
    t = recipe.train
    kind = {"paged_adamw_8bit": bnb.optim.PagedAdamW8bit, "adamw_8bit": bnb.optim.AdamW8bit,
            "adamw": torch.optim.AdamW}[t.optimizer]
    return kind(params, lr=t.lr, weight_decay=t.weight_decay)
