"""Training's model: the recipe's PEFT method (LoRA by default) on the 4-bit NF4 base that core.models
loads, and the optimizer over it."""
from __future__ import annotations

import torch

from core.embedded import resolve_model_id
from core.models import attention_implementation, compute_dtype, load_base, nf4_config
from train.recipe import LORA_FAMILY, Recipe, RecipeError


def peft_config(recipe: Recipe):
    """The recipe's PEFT method as peft's config: the one place a [peft] or [lora] key becomes peft's."""
    import peft

    p, lora = recipe.peft, recipe.lora
    if p.method in LORA_FAMILY:
        return peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.targets,
                               use_dora=p.method == "dora", use_rslora=p.method == "rslora", task_type="CAUSAL_LM")
    if p.method == "ia3":
        return peft.IA3Config(target_modules=p.targets, feedforward_modules=p.feedforward, task_type="CAUSAL_LM")
    if p.method == "prompt_tuning":
        init = {"prompt_tuning_init": "TEXT", "prompt_tuning_init_text": p.init_text,
                "tokenizer_name_or_path": resolve_model_id(recipe.model.base)} if p.init_text else {}
        return peft.PromptTuningConfig(num_virtual_tokens=p.num_virtual_tokens, task_type="CAUSAL_LM", **init)
    if p.method == "p_tuning":
        return peft.PromptEncoderConfig(num_virtual_tokens=p.num_virtual_tokens,
                                        encoder_hidden_size=p.encoder_hidden_size, task_type="CAUSAL_LM")
    return peft.PrefixTuningConfig(num_virtual_tokens=p.num_virtual_tokens, encoder_hidden_size=p.encoder_hidden_size,
                                   prefix_projection=p.prefix_projection, task_type="CAUSAL_LM")


def load_model(recipe: Recipe, sharded: bool = False):
    """Base model in NF4 (double quantization, the compute dtype of the rule), prepared for k-bit
    training with gradient checkpointing, with the recipe's PEFT method (peft_config) on it.

    `sharded` (FSDP) follows the published FSDP+QLoRA recipe: FSDP flattens each wrapped block's
    parameters into one tensor of one dtype, so the packed 4-bit weights are stored in the compute
    dtype and the frozen weights stay in it (no prepare_model_for_kbit_training). LoRA stays in
    peft's fp32: peft's wrap policy gives every LoRA layer a unit of its own, so its flat parameter,
    gradient and AdamW state are fp32, the master copy that keeps updates of lr 2e-5, which bf16
    weights of LoRA's init scale round away (what accelerate's fp32 upcast of trainable flat
    parameters does under mixed precision, which the recipe's autocast replaces here). Gradient
    checkpointing is reentrant there, as in peft's FSDP-QLoRA recipe: the non-reentrant kind checks
    recomputed tensors against saved ones, which nested FSDP units (resharded after the forward)
    can fail with a CheckpointError."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    m, t = recipe.model, recipe.train
    if sharded and recipe.peft.method not in LORA_FAMILY:
        raise RecipeError(f"peft.method = {recipe.peft.method!r} trains in one process only: FSDP is set up "
                          f"for the LoRA family ({', '.join(LORA_FAMILY)})")
    dtype = compute_dtype(m.compute_dtype)
    quantization = None
    if m.quantization == "nf4":
        quantization = nf4_config(dtype, m.double_quant, storage=dtype if sharded else torch.uint8)
    model = load_base(m.base, dtype, attention_implementation(m.attention), quantization)
    model.config.use_cache = False
    ckpt_kwargs = {"use_reentrant": sharded}
    if m.quantization == "nf4" and not sharded:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=t.gradient_checkpointing, gradient_checkpointing_kwargs=ckpt_kwargs)
    elif t.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
        model.enable_input_require_grads()
    model = get_peft_model(model, peft_config(recipe))
    if t.neftune_alpha > 0:
        add_neftune(model, t.neftune_alpha)
    return model


def example_lengths(position_ids: torch.Tensor) -> torch.Tensor:
    """Each token's example length in packed rows, whose positions restart at 0 with each example
    (and at each row's start): the same in a [B, W] batch and in its flattened [1, B*W] row."""
    starts = position_ids == 0
    starts[:, 0] = True
    segment = starts.flatten().cumsum(0) - 1
    return torch.bincount(segment)[segment].reshape(position_ids.shape)


def add_neftune(model, alpha: float) -> None:
    """NEFTune: uniform noise of scale alpha / sqrt(L * d) on the input embeddings while training.
    transformers' hook takes L as the row's length (`output.size(1)`), which the flattened row of
    the flash-attention path makes B times longer than a packed row of the SDPA path: its noise
    would be sqrt(B) times weaker there. Here L is each token's own example length, read from the
    position ids the model is called with (the row's length when there are none: padded rows)."""
    called_with: dict = {}

    def note_positions(module, args, kwargs) -> None:
        called_with["position_ids"] = kwargs.get("position_ids")

    def add_noise(module, inputs, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        positions = called_with.get("position_ids")
        if positions is None or positions.shape != output.shape[:2]:
            lengths = torch.full(output.shape[:2], output.size(1), device=output.device)
        else:
            lengths = example_lengths(positions.to(output.device))
        scale = alpha / torch.sqrt(lengths.unsqueeze(-1).to(output.dtype) * output.size(2))
        return output + (torch.rand_like(output) * 2 - 1) * scale

    model.register_forward_pre_hook(note_positions, with_kwargs=True)
    model.get_input_embeddings().register_forward_hook(add_noise)


def make_optimizer(recipe: Recipe, model) -> torch.optim.Optimizer:
    import bitsandbytes as bnb

    params = [p for p in model.parameters() if p.requires_grad]
    t = recipe.train
    kind = {"paged_adamw_8bit": bnb.optim.PagedAdamW8bit, "adamw_8bit": bnb.optim.AdamW8bit,
            "adamw": torch.optim.AdamW}[t.optimizer]
    return kind(params, lr=t.lr, weight_decay=t.weight_decay)
