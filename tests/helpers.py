"""Helpers shared by the tests (the one place for them: test modules import from here, never from each
other): a free local port, a server process, and running `python -m train` as a real process."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
from hypothesis import strategies as st

from eval.adapters import Instance

REPO = Path(__file__).resolve().parent.parent


def train_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "train", *args]


def run_train(*args: str, env: dict | None = None, timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    """Run the training CLI to the end; returns the process and its wall time seen from outside."""
    started = time.monotonic()
    proc = subprocess.run(train_cmd(*args), cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, **(env or {})})
    return proc, time.monotonic() - started


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def assert_loadable(adapter: Path, tiny_model: Path) -> None:
    """The adapter loads onto the base with PEFT and holds LoRA weights."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    model = PeftModel.from_pretrained(base, adapter)
    assert any("lora_" in n for n, _ in model.named_parameters())


def wait_until(condition: Callable[[], object], timeout: float, message: str) -> None:
    """Poll `condition` (an event: a file, a status, a state) until it holds; after `timeout` seconds
    the test fails with `message`."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.1)


def wait_for(condition: Callable[[], object], proc: subprocess.Popen, timeout: float = 120) -> None:
    """wait_until `condition` (a file, a checkpoint) while the process lives."""

    def holds() -> bool:
        if condition():
            return True
        assert proc.poll() is None, "the run ended early"
        return False

    wait_until(holds, timeout, "timed out")


def copy_run(run: Path, to: Path) -> Path:
    """A run folder copied whole (a shared reference run stays untouched by the test that resumes it)."""
    shutil.copytree(run, to, symlinks=True)
    return to


def write_recipe(path: Path, extra_train: str = "", extra: str = "") -> Path:
    """A small recipe on the embedded model: short rows, a constant rate, two generated tasks."""
    path.write_text(f"""
name = "test"
{extra}
[train]
max_seq_len = 128
micro_batch_size = 4
lr = 1e-3
warmup_frac = 0.0
schedule = "constant"
{extra_train}

[[data]]
kind = "generated"
name = "mc_largest"
max_examples = 200

[[data]]
kind = "generated"
name = "arith_qa"
max_examples = 200
""")
    return path


def free_port() -> int:
    """A free local port (for a server, or a launcher's store: the default 29500 may be taken)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process on a free local port; its log lands in a file shown when it fails to start."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, *command, "--port", str(self.port)],
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def launch_cmd(processes: int, *args: str, config: str = "cpu-gloo.yaml", track: str = "cpu") -> list[str]:
    """`accelerate launch` of the training CLI on `processes` processes (by default CPU ones talking
    over gloo), as the README says."""
    return [str(Path(sys.executable).parent / "accelerate"), "launch",
            "--config_file", str(REPO / "configs" / "accelerate" / config),
            "--num_processes", str(processes), "--main_process_port", str(free_port()),
            "-m", "train", "--track", track, *args]


def site_hook(folder: Path, code: str) -> dict:
    """Environment for a child process (or each rank of a launch) that runs `code` as it starts: a
    sitecustomize.py on the child's PYTHONPATH only, so production code carries no test hook. Hooks
    written to one folder add up."""
    folder.mkdir(parents=True, exist_ok=True)
    site = folder / "sitecustomize.py"
    site.write_text((site.read_text() if site.exists() else "") + textwrap.dedent(code))
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}


PATCH_ON_IMPORT = """
import importlib.abc, importlib.machinery, sys

class PatchOnImport(importlib.abc.MetaPathFinder):
    def __init__(self, name, patch):
        self.name, self.patch = name, patch

    def find_spec(self, name, path=None, target=None):
        if name != self.name:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            self.patch(module)

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, PatchOnImport({module!r}, patch))
"""


def patch_on_import(folder: Path, module: str, patch: str) -> dict:
    """site_hook environment in which `patch`, the source of a function `patch(module)`, runs on
    `module` as soon as it has loaded, before any other module takes a name from it (one patch per module)."""
    return site_hook(folder, textwrap.dedent(patch) + PATCH_ON_IMPORT.format(module=module))


HANG = """
import time

def patch(module, calls=[]):
    real = module.{function}

    def hung(*args, **kwargs):
        calls.append(None)
        if len(calls) == {call}:
            open({marker!r}, "w").close()
            while True:
                time.sleep(3600)
        return real(*args, **kwargs)

    module.{function} = hung
"""


def hang_call(folder: Path, module: str, function: str, call: int) -> dict:
    """Environment in which call number `call` of `module.function` never returns, like a kernel or a
    read that hangs. `folder`/hung appears when the call begins to hang."""
    return patch_on_import(folder, module, HANG.format(function=function, call=call, marker=str(folder / "hung")))


def hanging_renames(folder: Path, trigger: Path) -> dict:
    """Environment for a child whose os.replace and os.rename hang for good once `trigger` exists,
    like a write to a filesystem that stopped answering."""
    return site_hook(folder, f"""
import os, time
def _hang_when_triggered(real):
    def call(*args, **kwargs):
        while os.path.exists({str(trigger)!r}):
            time.sleep(3600)
        return real(*args, **kwargs)
    return call
os.replace, os.rename = _hang_when_triggered(os.replace), _hang_when_triggered(os.rename)
""")


def hang_at_step(folder: Path, step: int) -> dict:
    """The optimizer step `step` of the run never ends."""
    return hang_call(folder, "train.run.loop", "train_step", step)


# ---- the engine's worker, held ---------------------------------------------------------------------------


def hold_worker(monkeypatch, engine) -> tuple[threading.Event, threading.Event]:
    """(reached, release): the worker stops before its next decoding step until `release`."""
    reached, release = threading.Event(), threading.Event()
    step = engine._step

    def held() -> None:
        reached.set()
        assert release.wait(60)
        step()

    monkeypatch.setattr(engine, "_step", held)
    return reached, release


# ---- a fake challenge server (tests/test_eval_client.py's `server`) and lm-eval's requests ----------------


GOOD = {"text": " C", "tokens": [{"text": " C", "logprob": -0.1, "top_logprob": {" C": -0.1}}],
        "logprob": -0.1, "request_time": 0.01}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_POST(self) -> None:
        state = self.server.state
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with state["lock"]:
            state["calls"].append((self.path, body))
            state["in_flight"] += 1
            state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
        try:
            time.sleep(state["delay"])
            if self.path == "/tokenize":  # one token per character: easy to reason about
                tokens = list(range(len(body["text"])))
                answer = {"tokens": tokens[: body["max_length"]] if body["truncation"] else tokens}
            elif self.path == "/decode":
                answer = {"text": "d" * len(body["tokens"])}
            elif callable(state["process"]):
                answer = state["process"](body)
            else:  # the prompt "ok" always gets a good answer: errors must name the request that failed
                answer = GOOD if body["prompt"] == "ok" else state["process"]
        finally:  # before the answer leaves: a client may send its next request as soon as it has read this one
            with state["lock"]:
                state["in_flight"] -= 1
        raw = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


SCENARIOS = "quick_mc,quick_qa"  # two quick-suite scenarios: the eval CLI runs that compare two ways of serving


def partial_entry(db: Path, name: str) -> dict[str, tuple[float, int]]:
    """An entry's partial results (eval/store.py keeps a --limit run apart from the ranked ones):
    metric -> (value, instances)."""
    import sqlite3

    with sqlite3.connect(db) as conn:
        # --limit: a partial run, recorded apart from the ranked results (eval/store.py)
        found = conn.execute("SELECT metric, value, instances FROM partial_results WHERE entry = ?", (name,))
        return {metric: (value, n) for metric, value, n in found}


def completions(out: Path, scenario: str) -> dict[tuple[str, int], str]:
    """(task, doc_id) -> the completion a run wrote in its samples file."""
    lines = (out / f"{scenario}_samples.jsonl").read_text().splitlines()
    return {(s["task"], s["doc_id"]): s["resps"][0][0] for s in map(json.loads, lines)}


def request(prompt: str, doc_id: int = 0, doc: dict | None = None, **gen):
    """An lm-eval generate_until request (lm_eval's Instance, not eval.adapters')."""
    from lm_eval.api.instance import Instance

    kwargs = {"until": ["\n\n"], "max_gen_toks": 400, "temperature": 0.0, "do_sample": False, **gen}
    return Instance("generate_until", doc or {}, (prompt, kwargs), doc_id, ("gsm8k_main", doc_id, 1))


# ---- property-based fuzz from the OpenAPI schema ---------------------------------------------------------

JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70).filter(lambda n: not 0 <= n <= 2048),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.lists(st.integers(min_value=-3, max_value=3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def value_strategy(prop: dict) -> st.SearchStrategy:
    """Small valid-looking values of a schema property (small numbers keep generation short),
    mixed with values of every other JSON type."""
    kinds = [p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"]
    valid = []
    for kind in kinds:
        low = kind.get("minimum", kind.get("exclusiveMinimum", -2))
        if kind.get("type") == "integer":
            valid.append(st.integers(min_value=int(low) - 1, max_value=int(low) + 6))
        elif kind.get("type") == "number":
            valid.append(st.floats(min_value=low - 0.5, max_value=kind.get("maximum", 5.0) + 0.5))
        elif kind.get("type") == "string":
            valid.append(st.text(max_size=60))
        elif kind.get("type") == "boolean":
            valid.append(st.booleans())
        elif kind.get("type") == "array" and kind["items"].get("type") == "string":
            valid.append(st.lists(st.text(max_size=4), max_size=3))
        elif kind.get("type") == "array":
            valid.append(st.lists(st.integers(min_value=-2, max_value=1030), max_size=12))
    return st.one_of(*valid, JUNK)


def body_strategy(schema: dict, name: str) -> st.SearchStrategy:
    model = schema[name]
    properties = {key: value_strategy(prop) for key, prop in model["properties"].items()}
    required = {key: properties.pop(key) for key in model.get("required", [])}
    required = {key: st.one_of(s, st.just(None)) for key, s in required.items()}  # None: key left out
    bodies = st.fixed_dictionaries(required, optional=properties).map(
        lambda body: {k: v for k, v in body.items() if v is not None or k not in model.get("required", [])}
    )
    return st.one_of(bodies, JUNK)


# ---- the perturbation golden's inputs (tests/fixtures/helm/perturb) ---------------------------------------

GOLDEN = Path(__file__).parent / "fixtures" / "helm" / "perturb"


def inputs() -> list[Instance]:
    rows = [json.loads(line) for line in (GOLDEN / "inputs.jsonl").read_text().splitlines()]
    return [Instance(r["question"], r["answer"], tuple(r["choices"]), id=f"id{n}") for n, r in enumerate(rows)]
