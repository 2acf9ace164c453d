"""The HTTP client against a real local HTTP server whose answers each test chooses (good, slow, broken)."""
from __future__ import annotations

import json
import threading
from http.server import ThreadingHTTPServer

import pytest

from eval.adapters import Prompt
from eval.client import ChallengeAPI, ServerError
from tests.helpers import GOOD, Handler, request


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.state = {"lock": threading.Lock(), "calls": [], "in_flight": 0, "max_in_flight": 0, "delay": 0.0,
                   "process": GOOD}
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def url(httpd) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}"


def process_bodies(httpd) -> list[dict]:
    return [body for path, body in httpd.state["calls"] if path == "/process"]


def test_sends_exactly_the_judges_request_body_and_returns_text_uncut(server):
    lm = ChallengeAPI(url(server), progress=False)
    server.state["process"] = {**GOOD, "text": " 42\n\nQ: more"}
    assert lm.generate_until([request("Q: 6 times 7?\nA:")]) == [" 42\n\nQ: more"]
    (body,) = process_bodies(server)
    assert body == {"prompt": "Q: 6 times 7?\nA:", "temperature": 1e-7, "num_return_sequences": 1,
                    "max_new_tokens": 400, "top_p": 1, "echo_prompt": False, "top_k_per_token": 1,
                    "stop_sequences": ["\n\n"]}
    lm.generate_until([request("x", temperature=0.3, until=[], max_gen_toks=1)])
    assert process_bodies(server)[-1]["temperature"] == 0.3 and process_bodies(server)[-1]["stop_sequences"] == []
    # HELM counts the prompt with the server's tokenizer before each request.
    assert ("/tokenize", {"text": "x", "truncation": False, "max_length": 2048}) in server.state["calls"]


def test_unreachable_server_names_the_request(server):
    port = server.server_address[1]
    server.shutdown()
    server.server_close()
    lm = ChallengeAPI(f"http://127.0.0.1:{port}", progress=False, timeout_s=5)
    with pytest.raises(ServerError, match=r"request 0 \(task gsm8k_main, document 3\).*unreachable"):
        lm.generate_until([request("hello", doc_id=3)])


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"<html>oops</html>", r"/process answered malformed JSON"),
        ({k: v for k, v in GOOD.items() if k != "logprob"}, r"without the field 'logprob'"),
        ({**GOOD, "text": None}, r"field 'text' of type NoneType"),
        ({**GOOD, "tokens": [{"text": " C", "logprob": -0.1}]}, r"tokens\[0\] answered JSON without the field 'top_logprob'"),
        ([1, 2], r"not an object"),
    ],
)
def test_malformed_answers_name_request_and_field(server, answer, message):
    server.state["process"] = answer
    lm = ChallengeAPI(url(server), progress=False)
    with pytest.raises(ServerError, match=r"request 1 \(task gsm8k_main, document 7\): POST .*" + message):
        lm.generate_until([request("ok", doc_id=6), request("b", doc_id=7)], disable_tqdm=True)


def test_drops_in_context_examples_like_helm_until_the_prompt_fits(server):
    prompt = Prompt("", ("a" * 900, "b" * 900, "c" * 900), "Question: q\nAnswer:", "\n")
    doc = {"prompt": prompt.text, "prompt_parts": json.dumps(
        {"instructions": "", "train": list(prompt.train), "eval": prompt.eval, "instance_prefix": "\n"})}
    lm = ChallengeAPI(url(server), progress=False)
    lm.generate_until([request(prompt.text, doc=doc, max_gen_toks=100)])
    # 2048 - 100 tokens allowed: three blocks (2721 characters) do not fit, two (1821) do.
    assert process_bodies(server)[-1]["prompt"] == prompt.with_train(2)
    # Without blocks to drop, the prompt is cut with /tokenize (truncation) and /decode, as HELM does.
    lm.generate_until([request("z" * 3000, max_gen_toks=48)])
    assert process_bodies(server)[-1]["prompt"] == "d" * 2000


def test_concurrency_is_bounded_by_the_setting(server):
    server.state["delay"] = 0.05
    for concurrency, expected in ((1, 1), (4, 4)):
        server.state["max_in_flight"] = 0
        lm = ChallengeAPI(url(server), concurrency=concurrency, progress=False)
        out = lm.generate_until([request(f"p{i}", doc_id=i) for i in range(12)])
        assert out == [" C"] * 12
        assert 1 <= server.state["max_in_flight"] <= expected
        if expected > 1:
            assert server.state["max_in_flight"] > 1
    with pytest.raises(ValueError, match="concurrency"):
        ChallengeAPI(url(server), concurrency=0)


def test_registered_for_lm_eval_by_name(server, tmp_path):
    """lm-eval builds the model from its registry name and argument string, as its own CLI would."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from eval.scenarios import SCENARIOS
    from eval.task_files import write_task

    spec = SCENARIOS["quick_mc"].build(tmp_path, 3)[0]
    write_task(spec, tmp_path / "tasks")
    out = lm_eval.simple_evaluate(
        model="challenge-api", model_args=f"base_url={url(server)},concurrency=2,progress=False",
        tasks=[spec.name], task_manager=TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False),
        limit=1, batch_size=4, bootstrap_iters=0,
    )
    assert out["results"][spec.name]["em,none"] == float(spec.test[0].target() == "C")
    assert [b["prompt"] for b in process_bodies(server)] == [spec.test[0].input]


def test_rolling_loglikelihood_is_refused_with_a_reason(server):
    # Loglikelihood itself is served (echo through /process): tests/test_lm_eval_client.py.
    with pytest.raises(NotImplementedError, match="no rolling loglikelihood"):
        ChallengeAPI(url(server), progress=False).loglikelihood_rolling([])


def test_run_keeps_finished_scenarios_when_a_later_one_fails(server, tmp_path, capsys):
    """Multiple-choice prompts get good answers, question-answering ones a broken body: the run records
    Quick MC, then stops at Quick QA naming the request and the field."""
    import sqlite3

    from eval.__main__ import main as cli

    server.state["process"] = lambda body: GOOD if body["prompt"].startswith("Question:") else {"text": "7"}
    db = tmp_path / "results.sqlite"
    code = cli(["run", "--server", url(server), "--name", "partial", "--scenarios", "quick_mc,quick_qa,held_out",
                "--limit", "2", "--db", str(db), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 1
    assert "error: scenario quick_qa: ServerError: request 0 (task quick_" in out
    assert "answered JSON without the field 'tokens'" in out
    with sqlite3.connect(db) as conn:
        # --limit: a partial run, recorded apart from the ranked results (eval/store.py)
        recorded = conn.execute("SELECT metric, value, instances FROM partial_results WHERE entry = 'partial'").fetchall()
    # The server always answered " C": each task scores the share of its first two golds that are C.
    from eval.scenarios import SCENARIOS

    specs = SCENARIOS["quick_mc"].build(tmp_path, 60)
    expected = sum(sum(i.target() == "C" for i in s.test[:2]) / 2 for s in specs) / len(specs)
    assert recorded == [("Quick MC - EM", pytest.approx(expected), 6)]
