"""Serving a virtual-token adapter (prompt tuning, P-tuning, prefix tuning) as a fixed KV prefix.

Such an adapter changes no weight: it puts N trained virtual tokens before every sequence, so the
model sees [virtual tokens][prompt] with the prompt at positions N, N+1, ... peft does this by
prepending embeddings (prompt and P-tuning) or a past_key_values cache (prefix tuning) to every
forward pass, which the engine's own batching and prefix cache cannot take. Here the virtual
tokens become what they are to every later token: keys and values, the same for every row.
Prompt and P-tuning's virtual embeddings run through the model once, at load, for their states;
prefix tuning's states are peft's prefix itself. Then two hooks on the base model:

- the attention (submission.attention) puts those keys and values before every row's own, with
  mask columns every query attends to;
- every forward pass's position ids move up by N.

The engine's states, its batch layout and its prefix cache then hold the prompt tokens only, each
computed after the virtual tokens, as `generate` on the PeftModel computes them: nothing else in
the engine knows. The cost: each layer concatenates N columns to the keys and values it attends
over, and the N states stay on the device.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from core.models import virtual_token_method

VIRTUAL_KV = "virtual_kv"  # the attention module's attribute: this layer's (keys, values), [1, heads, N, dim]


def unwrap(model, adapter: str | None):
    """The model to serve: a virtual-token PeftModel becomes its base model with the virtual
    tokens' states installed; any other model is served as it is."""
    if adapter is None or virtual_token_method(adapter) is None:
        return model
    with torch.inference_mode():
        states = virtual_states(model)
    base = model.get_base_model()
    install(base, states)
    return base


def virtual_states(peft_model) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's keys and values of the N virtual tokens, as `generate` on the PeftModel sees them."""
    config = peft_model.active_peft_config
    base = peft_model.get_base_model()
    dtype = base.get_input_embeddings().weight.dtype
    if config.peft_type == "PREFIX_TUNING":
        cache = peft_model.get_prompt(batch_size=1)
    else:
        embeds = peft_model.get_prompt(batch_size=1).to(dtype)
        cache = DynamicCache()
        base.model(inputs_embeds=embeds, past_key_values=cache, use_cache=True)
    return [(layer.keys.to(dtype), layer.values.to(dtype)) for layer in cache.layers]


def install(base, states: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Give each attention layer its virtual states and shift every forward pass's positions."""
    layers = [module for module in base.modules() if hasattr(module, "layer_idx") and hasattr(module, "o_proj")]
    if len(layers) != len(states):
        raise ValueError(f"the adapter's prefix has {len(states)} layers, the model {len(layers)} attention layers")
    for module in layers:
        setattr(module, VIRTUAL_KV, states[module.layer_idx])
    count = states[0][0].shape[2]

    def shift_positions(module, args, kwargs):
        if kwargs.get("position_ids") is None:
            raise ValueError("a model with a virtual-token prefix needs explicit position_ids")
        kwargs["position_ids"] = kwargs["position_ids"] + count
        return args, kwargs

    base.register_forward_pre_hook(shift_positions, with_kwargs=True)


def with_prefix(module, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None):
    """Keys, values and additive mask [rows, 1, queries, columns] with the layer's virtual columns
    first (every query attends to them); unchanged for a layer without any."""
    prefix = getattr(module, VIRTUAL_KV, None)
    if prefix is None:
        return key, value, mask
    if mask is None:
        raise ValueError("a model with a virtual-token prefix needs the engine's attention mask")
    k, v = prefix
    rows = key.shape[0]
    key = torch.cat([k.expand(rows, -1, -1, -1), key], dim=2)
    value = torch.cat([v.expand(rows, -1, -1, -1), value], dim=2)
    open_columns = mask.new_zeros(*mask.shape[:3], k.shape[2])
    return key, value, torch.cat([open_columns, mask], dim=3)
