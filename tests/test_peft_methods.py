"""Every PEFT method of the recipe's [peft] table, for real on the tiny model: validated settings,
training on the 4-bit base (loss falls, the plan's parameter count is peft's), the checkpoint path
(an adapter reloads to the same logits), serving (weight methods merge; virtual-token methods are
served by a real server as a KV prefix, greedy equal to the PeftModel's own forward pass, batched
and through the prefix cache), and a budgeted CLI run that resumes."""
from __future__ import annotations

import tomllib
from concurrent.futures import ThreadPoolExecutor

import bitsandbytes as bnb
import peft
import pytest
import torch

from core.models import load_tokenizer, load_trained, save_adapter
from core.tiny import EMBEDDED_ID
from tests.helpers import Server, run_train, summary, write_recipe
from train.budget.plan import shape_of, trainable_params
from train.data.pipeline import make_batches
from train.model import load_model, make_optimizer, peft_config
from train.recipe import (
    CONFIG_DIR,
    LORA_FAMILY,
    PEFT_METHODS,
    VIRTUAL_TOKENS,
    RecipeError,
    dump_recipe,
    load_recipe,
    parse_recipe,
)
from train.run.checkpoint import read_newest_checkpoint, restore_weights, save_checkpoint
from train.run.loop import train_step

DATA = [{"kind": "generated", "name": "mc_largest", "max_examples": 32}]
HEAD = ("The following are questions (with answers) about numbers.\n\n"
        "Question: Which number is the largest?\nA. 12\nB. 47\nC. 3\nAnswer: B\n\n")
PROMPTS = [  # two share a long instruction and example: the prefix cache serves them
    HEAD + "Question: Which number is the largest?\nA. 5\nB. 1\nC. 88\nAnswer:",
    HEAD + "Question: Which number is the largest?\nA. 61\nB. 9\nC. 14\nAnswer:",
    "Q: What is 2 plus 2?\nA:",
    "Hello",
]


def method_train(method: str) -> dict:
    """The [train] settings a method needs: no packing for virtual tokens, no checkpointing for prefix tuning."""
    return {"packing": method not in VIRTUAL_TOKENS, "gradient_checkpointing": method != "prefix_tuning"}


def method_recipe(method: str, **peft_settings):
    return parse_recipe({"peft": {"method": method, **peft_settings}, "model": {"compute_dtype": "fp32"},
                         "train": {"max_seq_len": 64, "micro_batch_size": 4, **method_train(method)}, "data": DATA})


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return load_tokenizer(str(tiny_model))


# --- the recipe ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.toml")), ids=lambda path: path.name)
def test_existing_recipes_stay_lora(path):
    recipe = load_recipe(path)  # [lora], no [peft]
    config = peft_config(recipe)
    assert isinstance(config, peft.LoraConfig) and not config.use_dora and not config.use_rslora
    assert (config.r, config.lora_alpha, config.target_modules) == (recipe.lora.r, recipe.lora.alpha,
                                                                    set(recipe.lora.targets))


@pytest.mark.parametrize("method, kind, flags", [
    ("dora", peft.LoraConfig, {"use_dora": True, "use_rslora": False, "r": 4}),
    ("rslora", peft.LoraConfig, {"use_dora": False, "use_rslora": True, "r": 4}),
    ("ia3", peft.IA3Config, {"feedforward_modules": {"down_proj"}}),
    ("prompt_tuning", peft.PromptTuningConfig, {"num_virtual_tokens": 7}),
    ("p_tuning", peft.PromptEncoderConfig, {"num_virtual_tokens": 7, "encoder_hidden_size": 128}),
    ("prefix_tuning", peft.PrefixTuningConfig, {"num_virtual_tokens": 7, "prefix_projection": False}),
])
def test_each_method_becomes_its_peft_config(method, kind, flags):
    table = {"lora": {"r": 4}} if method in ("dora", "rslora") else {}
    if method in VIRTUAL_TOKENS:
        table["peft"] = {"num_virtual_tokens": 7}
    recipe = parse_recipe({**table, "peft": {"method": method, **table.get("peft", {})},
                           "train": method_train(method), "data": DATA})
    config = peft_config(recipe)
    assert type(config) is kind
    for key, value in flags.items():
        assert getattr(config, key) == value, key


@pytest.mark.parametrize("table, message", [
    ({"peft": {"method": "adapterx"}}, "peft.method = 'adapterx': choose one of lora, dora"),
    ({"peft": {"method": "ia3", "rank": 4}}, "unknown key(s) in [peft]: rank"),
    ({"peft": {"method": "ia3", "num_virtual_tokens": 4}}, "peft.num_virtual_tokens applies to method"),
    ({"peft": {"method": "p_tuning", "prefix_projection": True}, "train": {"packing": False}},
     "peft.prefix_projection applies to method prefix_tuning, not to peft.method = 'p_tuning'"),
    ({"peft": {"method": "ia3"}, "lora": {"r": 4}}, "peft.method = 'ia3' does not use them"),
    ({"peft": {"method": "prompt_tuning"}}, "needs train.packing = false"),
    ({"peft": {"method": "prefix_tuning"}, "train": {"packing": False}}, "needs train.gradient_checkpointing = false"),
    ({"peft": {"method": "prompt_tuning", "num_virtual_tokens": 0}, "train": {"packing": False}},
     "peft.num_virtual_tokens and peft.encoder_hidden_size must be positive"),
    ({"peft": {"method": "prompt_tuning", "num_virtual_tokens": 300}, "train": {"packing": False}},
     "leaves no room in train.max_seq_len"),
    ({"peft": {"method": "ia3", "feedforward": ["up_proj"]}}, "peft.feedforward: up_proj not in peft.targets"),
    ({"peft": {"method": "ia3", "targets": "k_proj"}}, "peft.targets: expected a list"),
])
def test_bad_peft_settings_are_refused_naming_the_key(table, message):
    with pytest.raises(RecipeError) as error:
        parse_recipe({**table, "data": DATA})
    assert message in str(error.value)


def test_a_resolved_recipe_reads_back_for_every_method():
    """A run folder's recipe.toml lists every key, those of other methods at their defaults."""
    for method in PEFT_METHODS:
        recipe = method_recipe(method)
        assert parse_recipe(tomllib.loads(dump_recipe(recipe))).peft == recipe.peft


# --- training, the checkpoint path, merging ------------------------------------------------------


def logits_of(model, batch) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=batch["input_ids"], attention_mask=torch.ones_like(batch["input_ids"])).logits


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_method_trains_on_the_4bit_base_and_its_adapter_reloads(method, tiny_model, tokenizer, tmp_path):
    recipe = method_recipe(method)
    torch.manual_seed(0)
    model = load_model(recipe)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == trainable_params(shape_of(EMBEDDED_ID), recipe)  # the dry run's count is peft's
    optimizer = make_optimizer(recipe, model)
    batch = next(make_batches(recipe, tokenizer).from_position(0))
    batch.pop("num_tokens")
    lr = 3e-3 if method in LORA_FAMILY else 3e-2  # few parameters move slowly
    losses = [train_step(model, optimizer, [batch], lr, 1.0) for _ in range(8)]
    assert losses[-1] < 0.9 * losses[0], losses
    model.eval()
    expected = logits_of(model, batch)
    save_checkpoint(tmp_path, model, optimizer.state_dict(), {"step": 6})  # publishes tmp_path/adapter too

    torch.manual_seed(1)  # a fresh model's adapter starts elsewhere: restoring must bring it back
    fresh = load_model(recipe).eval()
    restore_weights(fresh, read_newest_checkpoint(tmp_path))
    torch.testing.assert_close(logits_of(fresh, batch), expected, atol=1e-4, rtol=1e-4)

    if method in VIRTUAL_TOKENS:  # nothing to merge: only a loader that serves virtual tokens takes it
        with pytest.raises(ValueError, match=f"is {method.upper()} .*cannot be merged"):
            load_trained(str(tiny_model), tmp_path / "adapter", "fp32", "sdpa")
    else:  # merged into the dequantized NF4 weights it was trained on
        merged, _, _ = load_trained(str(tiny_model), tmp_path / "adapter", "fp32", "sdpa")
        assert not hasattr(merged, "peft_config")
        assert (logits_of(merged, batch) - expected).abs().max().item() < 1e-3


# --- serving virtual tokens -----------------------------------------------------------------------


def forward_greedy(model, tokenizer, prompt: str, tokens: int) -> tuple[str, list[float]]:
    """Greedy continuation and its log-probabilities by the PeftModel's own forward pass over the
    whole sequence, every step: the virtual tokens exactly as training saw them. (peft's `generate`
    is not the reference: with transformers 5.24 its cached decoding of prompt and prefix tuning
    drifts from this forward pass.)"""
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    start, logprobs = ids.shape[1], []
    with torch.inference_mode():
        for _ in range(tokens):
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1].float()
            token = logits.argmax(-1, keepdim=True)
            if token.item() == tokenizer.eos_token_id:  # the server ends there too
                break
            logprobs.append(logits.log_softmax(-1)[0, token.item()].item())
            ids = torch.cat([ids, token], dim=1)
    return tokenizer.decode(ids[0, start:]), logprobs


@pytest.mark.slow  # a training run per method
@pytest.mark.parametrize("method", VIRTUAL_TOKENS)
def test_virtual_tokens_are_served_as_a_kv_prefix(method, tiny_model, tokenizer, tmp_path):
    torch.manual_seed(2)
    model = load_model(method_recipe(method, num_virtual_tokens=5))
    with torch.no_grad():  # as after training: far from the initial prompt, so a wrong prefix shows
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.5)
    adapter = tmp_path / "adapter"
    save_adapter(model, adapter)
    reference, _, _ = load_trained(str(tiny_model), adapter, "auto", "sdpa", keep_virtual=True)
    expected = [forward_greedy(reference, tokenizer, prompt, 8) for prompt in PROMPTS]
    base_answers = [forward_greedy(reference.get_base_model(), tokenizer, p, 8)[0] for p in PROMPTS]
    assert [text for text, _ in expected] != base_answers  # the adapter changes the answers

    server = Server(["-m", "submission", "--threads", "1", "--adapter", str(adapter)], {}, tmp_path / "log")
    try:
        server.wait_ready()
        with server.client() as client, ThreadPoolExecutor(len(PROMPTS)) as pool:
            def ask(prompt: str) -> tuple[str, list[float]]:
                body = {"prompt": prompt, "max_new_tokens": 8, "temperature": 0.0}
                answer = client.post("/process", json=body).raise_for_status().json()
                return answer["text"], [token["logprob"] for token in answer["tokens"]]

            for _ in range(2):  # the second round builds on the prefix cache the first filled
                for (text, logprobs), (want_text, want_logprobs) in zip(pool.map(ask, PROMPTS), expected):
                    assert text == want_text
                    assert logprobs == pytest.approx(want_logprobs, abs=1e-3)  # positions and states, not just argmax
            stats = client.get("/health").json()
    finally:
        server.stop()
    assert stats["mean_batch"] > 1 and stats["prefix_cache"]["hits"] > 0


# --- a budgeted run that resumes ------------------------------------------------------------------


@pytest.mark.slow  # real runs of the CLI
def test_prefix_tuning_runs_under_the_budget_and_resumes(tmp_path):
    recipe = write_recipe(tmp_path / "recipe.toml", extra_train="packing = false\ngradient_checkpointing = false",
                          extra='[peft]\nmethod = "prefix_tuning"\nnum_virtual_tokens = 4')
    run = tmp_path / "run"
    first, _ = run_train("--config", str(recipe), "--output-dir", str(run), "--budget", "5m", "--max-steps", "2")
    assert first.returncode == 0, first.stderr
    resumed, _ = run_train("--resume", str(run), "--max-steps", "3")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed     from step-0000002" in resumed.stderr
    assert summary(run)["steps"] == 3
    served, _, _ = load_trained(EMBEDDED_ID, run / "adapter", "auto", "sdpa", keep_virtual=True)
    assert served.active_peft_config.peft_type == "PREFIX_TUNING"
