"""lm-eval's loglikelihood tasks against the submission server (a real uvicorn process serving the tiny
model): lm-eval's own `local-completions` client on /v1/completions, with a local and with the
server's tokenizer and 4 prompts per request, and this project's clients (challenge-api over the
competition API, openai-api over /v1), each compared per document with lm-eval's `hf` model run here on
the same weights. Tolerance: 1e-4 in each loglikelihood (fp32 on a CPU, measured differences about
5e-6), and the same greedy flags and accuracies."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import lm_eval
import pytest
from lm_eval.tasks import TaskManager

TOLERANCE = 1e-4
TEMPLATES = Path(__file__).resolve().parents[1] / "eval" / "tasks"


@pytest.fixture(scope="module")
def task_folder(tmp_path_factory) -> Path:
    """A 12-document multiple-choice task (4 options each) from a local JSONL file; a third of the
    contexts end in a space, which lm-eval moves to the continuation."""
    folder = tmp_path_factory.mktemp("lm-eval-task")
    docs = []
    for i in range(12):
        a, b = i + 2, 2 * i + 1
        docs.append({"prompt": f"Question: What is {a} plus {b}?\nAnswer:" + (" " if i % 3 == 0 else ""),
                     "choices": [f" {a + b}", f" {a + b + 1}", f" {a * b}", " I do not know"], "answer": i % 4})
    (folder / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    config = {"include": str(TEMPLATES / "helm_base.yaml"), "task": "tiny_mc",
              "dataset_kwargs": {"path": str(folder / "docs.jsonl")}, "output_type": "multiple_choice",
              "doc_to_text": "prompt", "doc_to_choice": "choices", "doc_to_target": "answer",
              "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]}
    (folder / "tiny_mc.yaml").write_text(json.dumps(config), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def task_manager(task_folder) -> TaskManager:
    return TaskManager(include_path=str(task_folder), include_defaults=False)


def evaluate(task_manager: TaskManager, model, model_args: dict | None = None) -> tuple[dict, list]:
    """lm-eval's accuracies and, per document, each option's (loglikelihood, is_greedy)."""
    output = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=["tiny_mc"],
                                     task_manager=task_manager, log_samples=True, bootstrap_iters=0)
    rows = sorted(output["samples"]["tiny_mc"], key=lambda row: row["doc_id"])
    results = output["results"]["tiny_mc"]
    return {k: results[k] for k in ("acc,none", "acc_norm,none")}, [[tuple(r[0]) for r in row["resps"]] for row in rows]


def assert_same(got: tuple[dict, list], want: tuple[dict, list]) -> None:
    assert got[0] == want[0]
    assert len(got[1]) == len(want[1]) == 12
    for options, expected in zip(got[1], want[1]):
        assert [ll for ll, _ in options] == pytest.approx([ll for ll, _ in expected], abs=TOLERANCE)
        assert [greedy for _, greedy in options] == [greedy for _, greedy in expected]


@pytest.fixture(scope="module")
def hf_without_bos(task_manager, tiny_model):
    """lm-eval's API clients send the tokens of context + continuation without BOS: so does this `hf`."""
    args = {"pretrained": str(tiny_model), "add_bos_token": False, "dtype": "float32", "device": "cpu",
            "batch_size": 4}
    return evaluate(task_manager, "hf", args)


@pytest.fixture(scope="module")
def hf_local(task_manager):
    """`python -m eval run --model`'s model (eval/local.py: HFLM with the tokenizer's BOS)."""
    from eval.local import load_local

    return evaluate(task_manager, load_local("embedded:tiny-llama", batch_size=4))


@pytest.mark.parametrize("tokenizer", ["local", "server"])
def test_lm_evals_local_completions_matches_hf(default_server, task_manager, tiny_model, hf_without_bos, tokenizer):
    from lm_eval.utils import check_remote_tokenizer_support

    url = default_server.url + "/v1/completions"
    assert check_remote_tokenizer_support(url)  # what lm-eval's tokenizer_backend=auto picks
    args = {"base_url": url, "model": "embedded:tiny-llama", "batch_size": 4, "max_retries": 1}
    if tokenizer == "local":
        args |= {"tokenizer_backend": "huggingface", "tokenizer": str(tiny_model)}
    else:
        args |= {"tokenizer_backend": "remote"}
    assert_same(evaluate(task_manager, "local-completions", args), hf_without_bos)


def test_challenge_api_loglikelihood_matches_in_process(default_server, task_manager, hf_local):
    from eval.client import ChallengeAPI

    lm = ChallengeAPI(base_url=default_server.url, concurrency=4, progress=False)
    assert_same(evaluate(task_manager, lm), hf_local)


def test_openai_client_loglikelihood_matches_in_process(default_server, task_manager, hf_local):
    from eval.openai_client import OpenAICompletionsAPI

    lm = OpenAICompletionsAPI(base_url=default_server.url + "/v1", concurrency=4, progress=False)
    assert_same(evaluate(task_manager, lm), hf_local)


def test_eval_run_over_the_openai_api_records_the_competition_apis_results(default_server, tmp_path):
    """`python -m eval run --api openai`: the judges' scenarios through /v1/completions give the same
    completions and metrics as through /process (both greedy, both cut at the stop sequences)."""
    from eval.__main__ import main as cli
    from tests.helpers import SCENARIOS, completions, partial_entry

    def served(route: str) -> float:  # requests the server answered on a route (its /metrics)
        text = httpx.get(default_server.url + "/metrics").text
        key = f'harness_requests_total{{method="POST",route="{route}",status="200"}} '
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(key))

    db = tmp_path / "results.sqlite"
    for name, api, route in (("challenge", [], "/process"), ("openai", ["--api", "openai"], "/v1/completions")):
        before = served(route)
        assert cli(["run", "--server", default_server.url, *api, "--name", name, "--scenarios", SCENARIOS,
                    "--limit", "3", "--db", str(db), "--out", str(tmp_path / name)]) == 0
        assert served(route) > before  # the run spoke the API it was told to
    assert partial_entry(db, "openai") == partial_entry(db, "challenge") and partial_entry(db, "openai")
    for scenario in SCENARIOS.split(","):
        assert completions(tmp_path / "openai", scenario) == completions(tmp_path / "challenge", scenario)


def test_eval_run_tasks_scores_lm_eval_tasks_through_the_competition_api(default_server, task_folder, hf_local,
                                                                          tmp_path):
    """`python -m eval run --server URL --tasks T --include-path DIR`: lm-eval's loglikelihood task."""
    from eval.__main__ import main as cli

    assert cli(["run", "--server", default_server.url, "--name", "tasks", "--tasks", "tiny_mc",
                "--include-path", str(task_folder), "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "lm-eval.json").read_text())["results"]["tiny_mc"]
    rows = [json.loads(line) for line in (tmp_path / "lm-eval_samples.jsonl").read_text().splitlines()]
    rows.sort(key=lambda row: row["doc_id"])
    got = {k: results[k] for k in ("acc,none", "acc_norm,none")}, [[tuple(r[0]) for r in row["resps"]] for row in rows]
    assert_same(got, hf_local)
    assert cli(["run", "--server", default_server.url, "--name", "tasks", "--tasks", "no_such_task",
                "--include-path", str(task_folder), "--out", str(tmp_path)]) == 2
