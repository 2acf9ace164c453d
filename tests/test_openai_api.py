"""The OpenAI-compatible API of the submission server (a real uvicorn process serving the tiny model,
shared with the other server tests): answers checked against the model computed here with
transformers, against the competition API of the same server, and against the API's rules."""

from __future__ import annotations

import re

import httpx
import pytest
import torch


@pytest.fixture(scope="module")
def client(default_server):
    with default_server.client() as c:
        yield c


@pytest.fixture(scope="module")
def reference(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model).eval(), AutoTokenizer.from_pretrained(tiny_model)


def ok(client: httpx.Client, path: str, body: dict) -> dict:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def model_logprobs(reference, ids: list[int]) -> torch.Tensor:
    """Row t: log-probabilities of the token after ids[t]."""
    model, _ = reference
    with torch.inference_mode():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)


def test_echo_lines_up_with_the_token_ids_and_matches_the_model(client, reference):
    """lm-eval's loglikelihood request: token-id prompts, several at once, echo, max_tokens 1, logprobs 1."""
    _, tokenizer = reference
    prompts = [tokenizer("Question: What is 2 plus 2?\nAnswer: 4").input_ids[1:],  # no BOS, as lm-eval sends
               tokenizer("The capital of France is Paris").input_ids]  # with BOS
    body = ok(client, "/v1/completions", {"model": "embedded:tiny-llama", "prompt": prompts, "max_tokens": 1,
                                          "temperature": 0, "logprobs": 1, "echo": True, "seed": 1234})
    assert [c["index"] for c in body["choices"]] == [0, 1]
    for ids, choice in zip(prompts, body["choices"]):
        logprobs = choice["logprobs"]
        assert len(logprobs["token_logprobs"]) == len(ids) + 1  # every prompt token, then the generated one
        assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
        expected = model_logprobs(reference, ids)
        want = [float(expected[t - 1, ids[t]]) for t in range(1, len(ids))]
        assert logprobs["token_logprobs"][1 : len(ids)] == pytest.approx(want, abs=1e-4)
        for t in range(1, len(ids) + 1):  # each top entry is the model's best next token
            (best,) = logprobs["top_logprobs"][t].values()
            assert best == pytest.approx(float(expected[t - 1].max()), abs=1e-4)
        assert logprobs["text_offset"][-1] == len(choice["text"]) - len(logprobs["tokens"][-1])
        assert choice["text"].startswith(tokenizer.decode(ids, skip_special_tokens=True))
    assert body["usage"]["prompt_tokens"] == sum(map(len, prompts))


def test_a_generated_eos_is_a_token(client, reference):
    """After BOS alone the tiny model's greedy choice is EOS: the list must still hold the generated
    token (lm-eval drops the last entry), and the choice says it stopped."""
    _, tokenizer = reference
    expected = model_logprobs(reference, [tokenizer.bos_token_id])
    assert int(expected[0].argmax()) == tokenizer.eos_token_id  # the premise
    body = ok(client, "/v1/completions", {"prompt": [tokenizer.bos_token_id], "max_tokens": 3, "temperature": 0,
                                          "logprobs": 1, "echo": True})
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "stop" and len(choice["logprobs"]["token_logprobs"]) == 2
    assert choice["logprobs"]["token_logprobs"][1] == pytest.approx(float(expected[0].max()), abs=1e-4)


def test_greedy_text_equals_the_competition_api_and_does_not_depend_on_batching(client):
    prompts = ["Q: What is 3 plus 4?\nA:", "Once upon a time", "The following are questions", "x"]
    alone = [ok(client, "/process", {"prompt": p, "max_new_tokens": 6, "temperature": 1e-7})["text"] for p in prompts]
    batched = ok(client, "/v1/completions", {"prompt": prompts, "max_tokens": 6, "temperature": 0})
    assert [c["text"] for c in batched["choices"]] == alone
    assert {c["finish_reason"] for c in batched["choices"]} <= {"length", "stop"}
    echoed = ok(client, "/v1/completions", {"prompt": prompts[0], "max_tokens": 6, "temperature": 0, "echo": True})
    assert echoed["choices"][0]["text"] == prompts[0] + alone[0]
    nothing = ok(client, "/v1/completions", {"prompt": prompts[0], "max_tokens": 0, "echo": True, "logprobs": 0})
    assert nothing["choices"][0]["text"] == prompts[0] and nothing["usage"]["completion_tokens"] == 0


def test_stop_seed_and_n(client):
    prompt = "Q: What is 3 plus 4?\nA:"
    full = ok(client, "/v1/completions", {"prompt": prompt, "max_tokens": 12, "temperature": 0})["choices"][0]
    stop = full["text"][3:5]
    cut = ok(client, "/v1/completions", {"prompt": prompt, "max_tokens": 12, "temperature": 0, "stop": stop})
    assert cut["choices"][0]["text"] == full["text"][: full["text"].find(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"
    sampled = {"prompt": prompt, "max_tokens": 8, "temperature": 1.0, "n": 3, "seed": 5}
    first = [c["text"] for c in ok(client, "/v1/completions", sampled)["choices"]]
    assert first == [c["text"] for c in ok(client, "/v1/completions", sampled)["choices"]]
    assert len(set(first)) > 1  # each choice samples with its own seed


def test_chat_goes_through_the_template(client, reference):
    messages = [{"role": "user", "content": "What is 2 plus 2?"}]
    chat = ok(client, "/v1/chat/completions", {"messages": messages, "max_tokens": 5, "temperature": 0,
                                               "logprobs": True, "top_logprobs": 2})
    info = client.get("/tokenizer_info").json()
    assert info["eos_token"] == "</s>" and info["model_max_length"] == 2048
    # The tiny tokenizer has no template: the served one (PLAIN_CHAT_TEMPLATE) is rendered here by hand,
    # but for its BOS, which a text prompt gets from the tokenizer.
    templated = "user: What is 2 plus 2?\nassistant:"
    plain = ok(client, "/v1/completions", {"prompt": templated, "max_tokens": 5, "temperature": 0})
    (choice,) = chat["choices"]
    assert choice["message"] == {"role": "assistant", "content": plain["choices"][0]["text"]}
    assert all(len(t["top_logprobs"]) == 2 for t in choice["logprobs"]["content"])


def test_tokenize_speaks_both_shapes_and_models_lists_the_served_one(client, reference):
    _, tokenizer = reference
    competition = ok(client, "/tokenize", {"text": "hi </s>"})
    assert competition["tokens"] == tokenizer("hi </s>", split_special_tokens=True).input_ids  # text stays text
    vllm = ok(client, "/tokenize", {"prompt": "hi </s>", "add_special_tokens": False})
    assert vllm["tokens"] == tokenizer("hi </s>", add_special_tokens=False).input_ids  # vLLM reads </s> as EOS
    assert vllm["tokens"][-1] == tokenizer.eos_token_id and vllm["count"] == len(vllm["tokens"])
    assert ok(client, "/detokenize", {"tokens": vllm["tokens"]})["prompt"] == "hi "
    (model,) = client.get("/v1/models").json()["data"]
    assert model["id"] == "embedded:tiny-llama" and model["max_model_len"] == 2048


def test_long_prompt_logprobs_are_computed_in_chunks_alike(client, reference):
    """2000 prompt tokens cross several ECHO_CHUNK boundaries; every position matches the model."""
    ids = [(7 * i) % 1000 + 3 for i in range(2000)]
    body = ok(client, "/v1/completions", {"prompt": ids, "max_tokens": 0, "logprobs": 1, "echo": True})
    expected = model_logprobs(reference, ids)
    got = body["choices"][0]["logprobs"]["token_logprobs"]
    assert got[1:] == pytest.approx([float(expected[t - 1, ids[t]]) for t in range(1, len(ids))], abs=1e-3)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"prompt": "x", "max_tokens": "many"}, 400, "max_tokens"),
        ({"prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
        ({"prompt": "x", "max_tokens": 5000}, 400, "max_tokens"),
        ({"prompt": "x", "logprobs": 101}, 400, "logprobs"),
        ({"prompt": "x", "temperature": "hot"}, 400, "temperature"),
        ({"prompt": "x", "n": 0}, 400, "n"),
        ({"prompt": "x", "stream": True}, 400, "stream"),
        ({"prompt": "x", "stop": ["a"] * 65}, 400, "stop"),
        ({"prompt": [5, 1024]}, 400, "prompt"),
        ({"prompt": []}, 400, "prompt"),
        ({"prompt": [3] * 2049}, 400, "prompt"),
        ({"prompt": ["a"] * 200, "n": 2}, 400, "prompt"),  # more than max_queue (256) requests at once
        ({"prompt": "x", "model": "gpt-4"}, 400, "model"),
        ({"max_tokens": 1}, 400, "prompt"),
    ],
)
def test_bad_input_names_the_field(client, body, status, param):
    response = client.post("/v1/completions", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"].split(".")[0] == param
    assert ok(client, "/v1/completions", {"prompt": "still up?", "max_tokens": 1})["choices"]


def test_chat_bad_input(client):
    response = client.post("/v1/chat/completions", json={"messages": []})
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"
    response = client.post("/v1/chat/completions",
                           json={"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})
    assert response.status_code == 400 and response.json()["error"]["param"] == "top_logprobs"


def test_metrics_count_requests_and_show_the_engine(client):
    def scrape() -> dict[str, float]:
        response = client.get("/metrics")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        samples = {}
        for line in response.text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                samples[name] = float(value)
        return samples

    key = 'harness_requests_total{method="POST",route="/v1/completions",status="200"}'
    before = scrape().get(key, 0)
    ok(client, "/v1/completions", {"prompt": "count me", "max_tokens": 2})
    after = scrape()
    assert after[key] == before + 1
    assert after['harness_request_seconds_count{route="/v1/completions"}'] >= 1
    assert after["harness_engine_up"] == 1 and after["harness_generated_tokens_total"] >= 1
    for name in ("harness_queue_length", "harness_batch_rows", "harness_prefix_cache_tokens",
                 "harness_batch_tokens_bound"):
        assert name in after
    assert all(re.fullmatch(r"[a-z_]+(\{.*\})?", name) for name in after)
