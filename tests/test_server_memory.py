"""The server's memory bound in bytes: the sizing for real 7B models on the judges' cards, computed
from their configurations (written here: no hub on this machine), and the out-of-memory path on
the real tiny model and engine (the error raised from the model's forward, as CUDA would)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, MistralConfig

from submission.api import ProcessRequest
from submission.engine import Engine
from submission.loading import load
from submission.memory import GIB, kv_bytes_per_token, plan
from submission.settings import Settings
from tests.helpers import hold_worker

# mistralai/Mistral-7B-v0.1 and meta-llama/Llama-2-7b-hf, as their config.json files give them.
MISTRAL_7B = MistralConfig(
    hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, vocab_size=32000, max_position_embeddings=32768,
)  # fmt: skip
LLAMA_2_7B = LlamaConfig(
    hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096,
)  # fmt: skip
PARAMETERS = {"mistral-7b": (MISTRAL_7B, 7_241_732_096), "llama-2-7b": (LLAMA_2_7B, 6_738_415_616)}
CARDS = {"rtx4090-24gb": 24 * GIB, "a100-40gb": 40 * GIB}
CUDA_CONTEXT = GIB // 2  # what the CUDA context and kernels take before any tensor


def free_after_weights(card: int, parameters: int) -> int:
    return card - CUDA_CONTEXT - 2 * parameters  # bf16 weights


def test_kv_bytes_per_token_from_the_configurations():
    assert kv_bytes_per_token(MISTRAL_7B, torch.bfloat16) == 128 * 1024  # 8 key/value heads
    assert kv_bytes_per_token(LLAMA_2_7B, torch.bfloat16) == 512 * 1024  # no grouped-query attention
    assert kv_bytes_per_token(LLAMA_2_7B, torch.float32) == 1024 * 1024


@pytest.mark.parametrize("family", ["mistral", "llama"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kv_bytes_per_token_is_what_a_real_cache_holds(family, dtype):
    """The formula against the cache transformers really fills: small models of both shapes (grouped-query
    attention, and one key/value head per head) run a prompt, and the key/value tensors' bytes per token
    are the formula's. Fails on a formula that counts attention heads instead of key/value heads, or
    forgets the values."""
    from transformers import AutoModelForCausalLM, DynamicCache

    shape = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 3, "num_attention_heads": 8,
             "vocab_size": 64}
    config = (MistralConfig(num_key_value_heads=2, **shape) if family == "mistral"
              else LlamaConfig(num_key_value_heads=8, **shape))
    model = AutoModelForCausalLM.from_config(config, torch_dtype=dtype).eval()
    cache, tokens = DynamicCache(), 11
    with torch.inference_mode():
        model(input_ids=torch.arange(tokens).unsqueeze(0), past_key_values=cache, use_cache=True)
    held = sum(t.nbytes for layer in cache.layers for t in (layer.keys, layer.values))
    assert held == tokens * kv_bytes_per_token(config, dtype)


@pytest.mark.parametrize("card", CARDS)
@pytest.mark.parametrize("model", PARAMETERS)
def test_sizing_fits_the_card_in_bf16(model, card):
    config, parameters = PARAMETERS[model]
    free = free_after_weights(CARDS[card], parameters)
    settings = Settings()
    sized = plan(free, config, torch.bfloat16, settings, context=2048)
    # Everything the server may hold at once fits the free memory, with the margin left over.
    assert sized.kv_bytes() + sized.workspace_bytes <= 0.9 * free
    assert sized.prefix_cache_tokens <= settings.prefix_cache_tokens
    assert sized.batch_tokens <= settings.max_batch * (2048 + 64)
    assert sized.prefill_tokens >= 2048  # a full-context prompt can always be computed
    # The old fixed defaults (4 GiB cache for Mistral, 32 x 2112 rows, twice) did not fit 24 GB.
    old = (settings.prefix_cache_tokens + 2 * 32 * 2112) * sized.kv_bytes_per_token
    if card == "rtx4090-24gb":
        assert old > free
        assert sized.prefix_cache_tokens < settings.prefix_cache_tokens
    # The judges' 30 clients with HELM prompts (about 600 tokens and a short answer) fit at once
    # with Mistral on either card; Llama-2's 512 KiB per token makes some of them wait.
    if model == "mistral-7b":
        assert sized.batch_tokens >= 30 * (600 + 64 + 64)
    else:
        assert 8 * (600 + 64 + 64) <= sized.batch_tokens < 30 * (600 + 64 + 64)
    assert "GiB free" in sized.describe()


def test_a_card_too_small_for_one_request_is_refused_with_the_reason():
    config, parameters = PARAMETERS["llama-2-7b"]
    with pytest.raises(ValueError, match="does not hold one 2048-token request"):
        plan(free_after_weights(16 * GIB, parameters), config, torch.bfloat16, Settings(), context=2048)


def test_out_of_memory_sheds_the_cache_and_computes_the_requests_again(tiny_model, monkeypatch):
    """A forward pass over several rows runs out of memory once: the prefix cache is dropped,
    the batch bound lowered, and every request in hand is served, as it would be alone."""
    model, tokenizer, _ = load(Settings(model=str(tiny_model)))
    head = "Answer each question with one word.\n\n" + "".join(
        f"Q: item {i}?\nA: thing {i}\n\n" for i in range(8)
    )
    requests = [
        ProcessRequest(prompt=f"{head}Q: item {i}x?\nA:", max_new_tokens=6, temperature=0) for i in range(5)
    ]
    long = ProcessRequest(prompt="word " * 10, max_new_tokens=30, temperature=0)
    with_settings = Settings(model="test", batch_wait_ms=0, prefill_budget=100_000)
    alone_engine = Engine(model, tokenizer, Settings(model="test", prefix_cache_tokens=0))
    try:
        expected = [alone_engine.submit(r).result(timeout=60)["text"] for r in [long, *requests]]
    finally:
        alone_engine.close()

    engine = Engine(model, tokenizer, with_settings)
    try:
        engine.submit(requests[0]).result(timeout=60)  # caches the shared head
        cached = list(engine.prefixes.entries.values())
        assert cached
        reached, release = hold_worker(monkeypatch, engine)
        forward = model.forward
        raised = []

        def short_of_memory(*args, **kwargs):
            if not raised and kwargs["input_ids"].shape[0] >= 3:
                raised.append(kwargs["input_ids"].shape)
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return forward(*args, **kwargs)

        monkeypatch.setattr(model, "forward", short_of_memory)
        bound = engine.batch_tokens
        running = engine.submit(long)
        assert reached.wait(60)
        futures = [engine.submit(r) for r in requests]
        release.set()
        texts = [f.result(timeout=60)["text"] for f in [running, *futures]]
        assert raised, "the forward pass never ran out of memory"
        assert texts == expected
        stats = engine.stats()
        assert stats["memory"]["out_of_memory"] == 1
        assert engine.batch_tokens < bound
        kept = engine.prefixes.entries.values()
        assert not any(entry is old for entry in kept for old in cached)  # the cache was dropped
    finally:
        engine.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_plan_reads_the_devices_free_memory(tiny_model):
    """On a GPU the plan starts from what the device reports free after the weights, and the
    engine serves within it."""
    model, tokenizer, _ = load(Settings(model=str(tiny_model)))
    engine = Engine(model, tokenizer, Settings(model="test"))
    try:
        total = torch.cuda.mem_get_info(engine.device)[1]
        assert engine.device.type == "cuda"
        assert 0 < engine.memory.free_bytes <= total
        assert engine.memory.kv_bytes() + engine.memory.workspace_bytes <= engine.memory.free_bytes
        body = engine.submit(
            ProcessRequest(prompt="The capital of France is", max_new_tokens=4, temperature=0)
        )
        assert len(body.result(timeout=120)["tokens"]) <= 4
    finally:
        engine.close()
