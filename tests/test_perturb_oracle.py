"""An oracle server gets the worst-case EM (Robustness) / EM (Fairness) that HELM's own metric code computes
for the same completions (tests/fixtures/helm/perturb/oracle.json, from scripts/helm/perturb_golden.py).

The oracle knows every answer and says the right letter, except for a few perturbed copies (and one
original) that it answers wrongly; the task and its copies go through lm-eval and the HTTP client like any
scenario, and the runner reduces lm-eval's samples to the HELM metrics."""
from __future__ import annotations

import json
import string
import threading
from http.server import ThreadingHTTPServer

import pytest

from eval.adapters import Format, instructions_line
from eval.client import ChallengeAPI
from eval.runner import evaluate, helm_metrics
from eval.task_spec import MC_GEN, TaskSpec, with_copies
from tests.helpers import GOLDEN, GOOD, Handler, inputs

ORACLE = json.loads((GOLDEN / "oracle.json").read_text())
FMT = Format(instructions=instructions_line("The following are multiple choice questions (with answers)."))


def eval_block(request: dict) -> str:
    """How the request's evaluation block ends the prompt (Question, options, Answer:)."""
    options = "".join(f"{letter}. {ref}\n" for letter, ref in zip(string.ascii_uppercase, request["references"]))
    return f"Question: {request['input']}\n{options}Answer:"


@pytest.fixture
def oracle():
    blocks = sorted(((eval_block(r), r) for r in ORACLE["requests"]), key=lambda b: -len(b[0]))
    asked: list[tuple[str, str | None]] = []

    def answer(body: dict) -> dict:
        request = next(r for block, r in blocks if body["prompt"].endswith(block))
        asked.append((request["id"], request["perturbation"]))
        return {**GOOD, "text": request["completion"], "tokens": []}

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.state = {"lock": threading.Lock(), "calls": [], "in_flight": 0, "max_in_flight": 0, "delay": 0.0,
                   "process": answer}
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", asked
    httpd.shutdown()
    httpd.server_close()


def test_oracle_scores_exactly_what_helm_computes(oracle, tmp_path):
    url, asked = oracle
    spec = TaskSpec(name="oracle", metric="Oracle - EM", scoring="exact_match", fmt=FMT, train=(),
                    test=tuple(inputs()), generation=MC_GEN)
    specs = [s for s in with_copies(spec, None) if s.test]
    output = evaluate(ChallengeAPI(url, concurrency=4, progress=False), specs, tmp_path / "tasks", None)
    results = {r.metric: r for r in helm_metrics("oracle", specs, output, 1.0)}

    # Every request HELM's augmenter made was asked once, and nothing else.
    assert sorted(asked, key=str) == sorted(((r["id"], r["perturbation"]) for r in ORACLE["requests"]), key=str)
    expected = ORACLE["metrics"]
    assert set(results) == {f"Oracle - {m}" for m in expected}
    for metric, value in expected.items():
        assert results[f"Oracle - {metric}"].value == pytest.approx(value, abs=1e-12), metric
        assert results[f"Oracle - {metric}"].instances == len(spec.test)
    # The fixture is one where the three differ: the worst case is below EM, never above.
    assert expected["EM (Fairness)"] < expected["EM (Robustness)"] < expected["EM"]
