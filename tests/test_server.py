"""The submission server through real uvicorn processes on 127.0.0.1, serving the tiny model.

Answers are checked against the model itself (greedy decoding and log-probabilities computed
here with transformers), against the same request served alone, and against the API's rules.
"""

from __future__ import annotations

import json
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from hypothesis import HealthCheck, given, settings

from core.generated import TASKS
from tests.helpers import body_strategy

JUDGE_KEYS = (
    "prompt",
    "temperature",
    "num_return_sequences",
    "max_new_tokens",
    "top_p",
    "echo_prompt",
    "top_k_per_token",
    "stop_sequences",
)


@pytest.fixture(scope="session")
def servers(default_server, nf4_server):
    """Two servers (tests/conftest.py): `python -m submission` with every default (the embedded tiny
    model, fp32 on a CPU), and `uvicorn submission.main:app` serving the same model in 4-bit NF4."""
    return {"default": default_server, "nf4": nf4_server}


@pytest.fixture(scope="session")
def client(servers):
    with servers["default"].client() as c:
        yield c


@pytest.fixture(scope="session")
def nf4_client(servers):
    with servers["nf4"].client() as c:
        yield c


@pytest.fixture(scope="session")
def reference(tiny_model):
    """The served model, loaded here: the ground truth for greedy answers and log-probabilities."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model).eval(), AutoTokenizer.from_pretrained(tiny_model)


def helm_prompts(per_task: int, seed: int = 7) -> list[str]:
    """HELM-shaped prompts: per task an instruction and five worked examples, then a question."""
    prompts = []
    for name, task in TASKS.items():
        records = task.make(5 + per_task, seed)
        head = f"The following are questions (with answers) about {name.replace('_', ' ')}.\n\n"
        head += "".join(r["prompt"] + r["completion"] + "\n\n" for r in records[:5])
        prompts += [head + r["prompt"] for r in records[5:]]
    return prompts


def judge_request(prompt: str, max_new_tokens: int, stop: list[str], top_k_per_token: int = 1) -> dict:
    """Exactly the keys and values the organizers' HELM client sends."""
    return {
        "prompt": prompt,
        "temperature": 1e-7,
        "num_return_sequences": 1,
        "max_new_tokens": max_new_tokens,
        "top_p": 1,
        "echo_prompt": False,
        "top_k_per_token": top_k_per_token,
        "stop_sequences": stop,
    }


def check_shape(body: dict, top_k_per_token: int | None = None) -> None:
    """The invariants the judges' client relies on."""
    assert set(body) == {"text", "tokens", "logprob", "request_time"}
    assert "".join(t["text"] for t in body["tokens"]) == body["text"]
    assert math.isclose(body["logprob"], sum(t["logprob"] for t in body["tokens"]), abs_tol=1e-6)
    assert isinstance(body["request_time"], float) and body["request_time"] >= 0
    for token in body["tokens"]:
        assert token["logprob"] <= 0
        if top_k_per_token is not None:
            assert len(token["top_logprob"]) == top_k_per_token
            assert max(token["top_logprob"].values()) >= token["logprob"] - 1e-5


def greedy_reference(reference, prompt: str, max_new_tokens: int) -> tuple[str, list[float]]:
    """Greedy text and per-token log-probabilities from transformers' own generate()."""
    model, tokenizer = reference
    ids = tokenizer(prompt, return_tensors="pt", split_special_tokens=True).input_ids
    with torch.inference_mode():
        out = model.generate(
            ids,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    new = out.sequences[0, ids.shape[1] :].tolist()
    logprobs = [float(torch.log_softmax(step[0].float(), -1)[t]) for step, t in zip(out.logits, new)]
    if new and new[-1] == tokenizer.eos_token_id:
        new, logprobs = new[:-1], logprobs[:-1]
    return tokenizer.decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False), logprobs


def post(client: httpx.Client, path: str, body) -> dict:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


# ---- the API, field by field ---------------------------------------------------------------


def test_organizers_health_check_body_alone(client):
    body = post(client, "/process", {"prompt": "The capital of France is "})
    check_shape(body)
    check_shape(
        post(client, "/process", {"prompt": "x", "echo_prompt": None, "stop_sequences": None, "seed": None})
    )
    assert len(body["tokens"]) <= 50  # the default max_new_tokens (sampled: EOS may come first)
    assert not body["text"].startswith("The capital")


def test_health_and_docs(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["quantization"] == "fp32" and health["context"] == 2048
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()["components"]["schemas"]["ProcessRequest"]
    assert schema["required"] == ["prompt"]
    for key in JUDGE_KEYS + ("num_samples", "top_k", "seed"):
        assert key in schema["properties"]


@pytest.mark.parametrize(("max_new_tokens", "stop"), [(1, []), (1, ["\n\n"]), (64, ["\n\n"]), (400, [])])
def test_judges_request_matches_the_models_greedy_answer(client, reference, max_new_tokens, stop):
    prompt = helm_prompts(1)[3]
    body = post(client, "/process", judge_request(prompt, max_new_tokens, stop, top_k_per_token=3))
    check_shape(body, top_k_per_token=3)
    text, logprobs = greedy_reference(reference, prompt, max_new_tokens)
    if stop and stop[0] in text:
        text = text[: text.index(stop[0])]
    assert body["text"] == text
    kept = len(body["tokens"])
    assert kept <= max_new_tokens
    assert [t["logprob"] for t in body["tokens"]] == pytest.approx(logprobs[:kept], abs=1e-4)
    # The chosen token is the most likely one under greedy decoding.
    for token in body["tokens"]:
        assert max(token["top_logprob"].values()) == pytest.approx(token["logprob"], abs=1e-5)


def test_stop_sequence_cuts_text_where_it_begins_even_inside_a_token(client):
    # A seeded sample: varied text (a random model's greedy text repeats itself), reproducible.
    request = {"prompt": helm_prompts(2)[10], "max_new_tokens": 48, "temperature": 1.0, "seed": 3, "top_k": 0}
    full = post(client, "/process", request)
    pieces, text = [t["text"] for t in full["tokens"]], full["text"]
    starts = [len("".join(pieces[:i])) for i in range(len(pieces))]
    # A stop sequence that starts one character into a multi-character token, found nowhere earlier.
    at, stop = next(
        (starts[i] + 1, text[starts[i] + 1 : starts[i] + 4])
        for i in range(2, len(pieces))
        if len(pieces[i]) >= 2 and text.index(text[starts[i] + 1 : starts[i] + 4]) == starts[i] + 1
    )
    body = post(client, "/process", {**request, "stop_sequences": ["never-generated-zzz", stop]})
    check_shape(body)
    assert body["text"] == text[:at]
    kept = body["tokens"]
    assert [t["text"] for t in kept[:-1]] == pieces[: len(kept) - 1]
    assert kept[-1]["text"] == pieces[len(kept) - 1][:1]  # the last token trimmed to the cut
    assert body["logprob"] == pytest.approx(sum(t["logprob"] for t in full["tokens"][: len(kept)]), abs=1e-5)
    # The earliest of several stop sequences wins, whatever their order.
    later = text[at + 4 : at + 7]
    cut = min(at, text.index(later))
    assert post(client, "/process", {**request, "stop_sequences": [later, stop]})["text"] == text[:cut]
    # A stop sequence at the very start leaves nothing.
    assert post(client, "/process", {**request, "stop_sequences": [text[:2]]})["text"] == ""


def test_echo_prompt_returns_prompt_tokens_with_their_logprobs(client, reference):
    prompt = "Q: What is 3 plus 4?\nA:"
    body = post(
        client, "/process", {**judge_request(prompt, 5, []), "echo_prompt": True, "top_k_per_token": 2}
    )
    check_shape(body)
    model, tokenizer = reference
    ids = tokenizer(prompt, return_tensors="pt").input_ids  # BOS, then the prompt's tokens
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(ids).logits[0].float(), -1)
    expected = [float(logprobs[t - 1, ids[0, t]]) for t in range(1, ids.shape[1])]
    echoed = body["tokens"][: len(expected)]
    assert "".join(t["text"] for t in echoed) == prompt  # no BOS text
    assert [t["logprob"] for t in echoed] == pytest.approx(expected, abs=1e-4)
    assert all(len(t["top_logprob"]) == 2 for t in echoed)
    completion = post(client, "/process", judge_request(prompt, 5, []))
    assert body["text"] == prompt + completion["text"]
    only_prompt = post(client, "/process", {**judge_request(prompt, 0, []), "echo_prompt": True})
    assert only_prompt["text"] == prompt and len(only_prompt["tokens"]) == len(expected)


def test_sampling_follows_seed_temperature_top_k_and_top_p(client):
    prompt = helm_prompts(1)[0]
    sample = {"prompt": prompt, "max_new_tokens": 24, "temperature": 1.0, "top_k": 50, "seed": 11}
    first, again = (post(client, "/process", sample)["text"] for _ in range(2))
    assert first == again
    others = {post(client, "/process", {**sample, "seed": seed})["text"] for seed in range(12, 16)}
    assert len(others | {first}) > 1
    greedy = post(client, "/process", judge_request(prompt, 24, []))["text"]
    assert post(client, "/process", {**sample, "top_k": 1})["text"] == greedy
    assert post(client, "/process", {**sample, "top_p": 1e-6})["text"] == greedy
    assert post(client, "/process", {**sample, "temperature": 1e-5})["text"] == greedy
    hot = [post(client, "/process", {**sample, "temperature": 100.0, "seed": s})["text"] for s in range(3)]
    assert all(h != greedy for h in hot)


def test_tokenize_and_decode_round_trip_and_truncate(client, reference):
    _, tokenizer = reference
    for text in [
        "The capital of France is ",
        "  two  spaces\n\nand é, 😀, literal <s> and </s>",
        helm_prompts(1)[0],
    ]:
        tokens = post(client, "/tokenize", {"text": text, "truncation": False, "max_length": 2048})["tokens"]
        assert tokens[0] == tokenizer.bos_token_id
        decoded = post(client, "/decode", {"tokens": tokens})
        assert decoded["text"] == text and isinstance(decoded["request_time"], float)
    long = helm_prompts(1)[0]
    full = post(client, "/tokenize", {"text": long, "truncation": False, "max_length": 10})["tokens"]
    assert len(full) > 10
    cut = post(client, "/tokenize", {"text": long, "truncation": True, "max_length": 10})["tokens"]
    assert cut == full[:10]
    assert long.startswith(post(client, "/decode", {"tokens": cut})["text"])
    default = post(client, "/tokenize", {"text": long * 40})["tokens"]
    assert len(default) == 2048  # truncation is on, to 2048 tokens, by default


# ---- limits, bad input, load -------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/process", {}, "prompt"),
        ("/process", {"prompt": 5}, "prompt"),
        ("/process", {"prompt": "x", "temperature": -1}, "temperature"),
        ("/process", {"prompt": "x", "temperature": "hot"}, "temperature"),
        ("/process", {"prompt": "x", "max_new_tokens": -5}, "max_new_tokens"),
        ("/process", {"prompt": "x", "max_new_tokens": 10**9}, "max_new_tokens"),
        ("/process", {"prompt": "x", "top_k_per_token": 0}, "top_k_per_token"),
        ("/process", {"prompt": "x", "top_k_per_token": 100000}, "top_k_per_token"),
        ("/process", {"prompt": "x", "top_p": 0}, "top_p"),
        ("/process", {"prompt": "x", "top_k": -1}, "top_k"),
        ("/process", {"prompt": "x", "seed": -1}, "seed"),
        ("/process", {"prompt": "x", "stop_sequences": "abc"}, "stop_sequences"),
        ("/process", {"prompt": "x", "num_return_sequences": 0}, "num_return_sequences"),
        ("/process", {"prompt": "x", "echo_prompt": "maybe"}, "echo_prompt"),
        ("/process", {"prompt": "word " * 3000}, "prompt"),  # beyond the 2048-token context
        ("/tokenize", {"text": "x", "max_length": 0}, "max_length"),
        ("/tokenize", {"truncation": True}, "text"),
        ("/decode", {"tokens": [-1]}, "tokens"),
        ("/decode", {"tokens": [5, 10**9]}, "tokens"),
        ("/decode", {"tokens": ["a"]}, "tokens"),
        ("/decode", [1, 2], "body"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(client, path, body, field):
    response = client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert field in str(response.json()["detail"])
    assert client.post("/process", json={"prompt": "still up?", "max_new_tokens": 2}).status_code == 200


def post_status(client: httpx.Client, path: str, content) -> int:
    return client.post(path, content=content, headers={"content-type": "application/json"}).status_code


def test_malformed_and_oversized_bodies(client):
    response = client.post(
        "/process", content=b'{"prompt": "x",', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    response = client.post("/process", content=b"\xff\xfe{", headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500
    huge = {"prompt": "x" * (9 * 1024 * 1024)}
    assert client.post("/process", json=huge).status_code == 413

    def chunks():  # no content-length: the limit applies while reading
        for _ in range(10):
            yield b"x" * (1024 * 1024)

    assert client.post("/tokenize", content=chunks()).status_code == 413

    def small():  # chunked and within the limit: read and served
        yield b'{"text": "hel'
        yield b'lo"}'

    assert post_status(client, "/tokenize", small()) == 200
    assert client.get("/health").status_code == 200


def test_generation_ends_at_the_context(client, reference):
    """Documented truncation: a prompt that fits gets at most the tokens the context has left."""
    _, tokenizer = reference
    prompt = "word " * 660
    used = len(tokenizer(prompt).input_ids)
    assert 1950 < used < 2048
    body = post(client, "/process", judge_request(prompt, 2048 - used + 20, []))
    check_shape(body)
    assert len(body["tokens"]) <= 2048 - used


def test_event_loop_stays_free_during_long_generation(client, servers):
    slow = threading.Thread(
        target=post, args=(client, "/process", judge_request(helm_prompts(1)[1], 400, []))
    )
    slow.start()
    time.sleep(0.3)
    with servers["default"].client() as other:
        start = time.perf_counter()
        assert other.get("/health").status_code == 200
        assert other.post("/tokenize", json={"text": "hello"}).status_code == 200
        elapsed = time.perf_counter() - start
    slow.join()
    assert elapsed < 1.0


def test_30_concurrent_clients_get_the_sequential_answers(servers, client):
    prompts = helm_prompts(6)  # 8 scenarios x 6 questions, sharing each scenario's prefix
    requests = [
        judge_request(p, [1, 1, 1, 16, 64][i % 5], [] if i % 3 else ["\n\n"]) for i, p in enumerate(prompts)
    ]
    requests += [{**r, "top_k_per_token": 2} for r in requests[:12]]
    sequential = [post(client, "/process", r) for r in requests]
    before = client.get("/health").json()

    def run(chunk: list[dict]) -> list[dict]:
        with servers["default"].client() as own:
            bodies = []
            for r in chunk:
                bodies.append(post(own, "/process", r))
                # Truncating tokenizations in between must not leak into other requests' prompts.
                cut = post(own, "/tokenize", {"text": r["prompt"], "truncation": True, "max_length": 7})[
                    "tokens"
                ]
                assert len(cut) == 7
            return bodies

    order = list(range(len(requests)))[::-1]  # a different arrival order than the sequential run
    chunks = [order[i::30] for i in range(30)]
    with ThreadPoolExecutor(30) as pool:
        results = list(pool.map(lambda idx: run([requests[i] for i in idx]), chunks))
    concurrent = {i: body for idx, bodies in zip(chunks, results) for i, body in zip(idx, bodies)}
    for i, expected in enumerate(sequential):
        got = concurrent[i]
        check_shape(got)
        assert [t["text"] for t in got["tokens"]] == [t["text"] for t in expected["tokens"]], i
        assert got["logprob"] == pytest.approx(expected["logprob"], abs=1e-3)
    after = client.get("/health").json()
    assert after["prefix_cache"]["hits"] > before["prefix_cache"]["hits"]
    rows = after["mean_batch"] * after["decode_steps"] - before["mean_batch"] * before["decode_steps"]
    assert rows / (after["decode_steps"] - before["decode_steps"]) > 1.5  # requests were decoded together
    for way in ("in_place", "rebuilding"):  # both ways of joining the running batch were taken
        assert after["joins"][way] > before["joins"][way]


def test_cached_prefix_gives_the_uncached_answer(client, reference):
    """The second question of a new scenario reuses the first one's prefix states."""
    head = "A brand new instruction that no earlier test has sent, followed by worked examples.\n\n"
    head += "".join(r["prompt"] + r["completion"] + "\n\n" for r in TASKS["mult_qa"].make(5, 99))
    questions = [r["prompt"] for r in TASKS["arith_qa"].make(3, 5)]
    hits = client.get("/health").json()["prefix_cache"]["hits"]
    for question in questions:
        body = post(client, "/process", judge_request(head + question, 12, []))
        assert body["text"] == greedy_reference(reference, head + question, 12)[0]
    assert client.get("/health").json()["prefix_cache"]["hits"] >= hits + 2


def test_nf4_server_answers_alone_and_batched_alike(nf4_client, servers):
    assert nf4_client.get("/health").json()["quantization"] == "nf4"
    requests = [judge_request(p, n, []) for p in helm_prompts(1) for n in (1, 24)]
    sequential = [post(nf4_client, "/process", r) for r in requests]
    for body in sequential:
        check_shape(body, top_k_per_token=1)

    def one(request: dict) -> dict:
        with servers["nf4"].client() as own:
            return post(own, "/process", request)

    with ThreadPoolExecutor(len(requests)) as pool:
        concurrent = list(pool.map(one, requests))
    assert [b["text"] for b in concurrent] == [b["text"] for b in sequential]


# ---- property-based fuzz from the OpenAPI schema -----------------------------------------

@pytest.mark.parametrize(
    ("path", "name"),
    [("/process", "ProcessRequest"), ("/tokenize", "TokenizeRequest"), ("/decode", "DecodeRequest")],
)
def test_fuzz_endpoints_from_openapi_schema(client, path, name):
    schema = client.get("/openapi.json").json()["components"]["schemas"]

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=body_strategy(schema, name))
    def never_a_server_error(body):
        # json.dumps writes NaN and Infinity, which are not JSON: the server must refuse them too.
        response = client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
        assert response.status_code < 500, (body, response.text)
        if response.status_code == 200 and path == "/process":
            check_shape(response.json())
        if response.status_code == 200 and path == "/decode":
            assert "<s>" not in response.json()["text"]

    never_a_server_error()
    assert client.post("/process", json={"prompt": "alive?", "max_new_tokens": 3}).status_code == 200


# ---- loading: adapters and quantization ---------------------------------------------------


def test_adapter_is_merged_in_full_precision_and_kept_beside_nf4(tiny_model, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from submission.loading import load
    from submission.settings import Settings

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    torch.manual_seed(0)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, lora).eval()
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[0, 50, 60, 70, 80]])
    with torch.inference_mode():
        expected = peft_model(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_model)(ids).logits
    assert not torch.allclose(expected, plain, atol=1e-3)  # the adapter changes the model

    merged, _, quant = load(Settings(model=str(tiny_model), adapter=str(tmp_path / "adapter"), quant="fp32"))
    assert quant == "fp32" and not hasattr(merged, "peft_config")
    with torch.inference_mode():
        assert torch.allclose(merged(ids).logits, expected, atol=1e-4)
    quantized, _, quant = load(
        Settings(model=str(tiny_model), adapter=str(tmp_path / "adapter"), quant="nf4")
    )
    assert quant == "nf4" and hasattr(quantized, "peft_config")
    with torch.inference_mode():  # 4-bit rounding moves logits, far less than the adapter does
        assert (quantized(ids).logits - expected).abs().max() < 0.3 * (expected - plain).abs().max()
    with pytest.raises(ValueError, match="adapter_config.json"):
        load(Settings(model=str(tiny_model), adapter=str(tmp_path), quant="fp32"))
    with pytest.raises(ValueError, match="quant must be one of"):
        Settings.from_env({"HARNESS_QUANT": "int3"})
