"""`python -m eval data`: fetch the BIG-bench and BBQ-lite task files without a dataset hub.

The task files ship inside the `bigbench` source distribution on PyPI (about 360 MB). pip downloads
it; only the `task.json` files the scenarios need are kept, under `<dest>/bigbench/<task>/…`, and
everything else is deleted. pip cannot finish its own download of this package (the sdist declares a
direct-URL dependency, which pip refuses after unpacking it), so pip is run with `--no-clean` in a
private temporary folder and the files are taken from the tree it unpacked; a tarball given with
`--sdist` (or one pip did save) is read directly instead.

Where a dataset hub is reachable, `--hub mmlu,gsm8k,...` exports those datasets into the judges' file
formats, labelled as exports (eval/hub.py); `--hub` alone skips the BIG-bench download.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from eval.open_scenarios import BIGBENCH_TASKS
from eval.perturb import word_list_status

PACKAGE = "bigbench"
TASKS_DIR = "bigbench/benchmark_tasks/"
BBQ_LITE = "bbq_lite_json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dest", metavar="DIR", help="data root (default $HARNESS_CACHE/eval-data)")
    parser.add_argument("--sdist", metavar="FILE", help="use this bigbench-*.tar.gz instead of downloading it")
    parser.add_argument("--hub", metavar="A,B",
                        help="export these scenarios' datasets from the dataset hub (mmlu, truthful_qa, gsm8k, "
                             "sam_sum, math, summarization_cnndm) instead of fetching BIG-bench")


def wanted(relative: str) -> bool:
    """Whether `<task>[/<subtask>]/task.json` (relative to benchmark_tasks) is one the scenarios read."""
    entry, _, name = relative.rpartition("/")
    if name != "task.json":
        return False
    return entry in BIGBENCH_TASKS or (entry.startswith(BBQ_LITE + "/") and entry.count("/") == 1)


def from_tree(root: Path, dest: Path) -> list[str]:
    tasks = next(root.rglob("benchmark_tasks"), None)
    if tasks is None:
        raise FileNotFoundError(f"no bigbench/benchmark_tasks folder under {root}")
    copied = []
    for path in sorted(tasks.rglob("task.json")):
        relative = path.relative_to(tasks).as_posix()
        if wanted(relative):
            (dest / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest / relative)
            copied.append(relative)
    return copied


def from_tarball(sdist: Path, dest: Path) -> list[str]:
    copied = []
    with tarfile.open(sdist) as tar:
        for member in tar:
            _, found, relative = member.name.partition(TASKS_DIR)
            if found and member.isfile() and wanted(relative):
                (dest / relative).parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(dest / relative, "wb") as out:
                    shutil.copyfileobj(src, out)
                copied.append(relative)
    return sorted(copied)


def download(work: Path) -> list[str] | Path:
    """Run pip; the sdist it saved, or the folder holding the tree it unpacked."""
    saved, build = work / "saved", work / "build"
    build.mkdir(parents=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-clean",
           "--dest", str(saved), PACKAGE]
    print(f"running: {' '.join(cmd)}  (about 360 MB; unpacking needs about 2 GB in {work})", flush=True)
    proc = subprocess.run(cmd, env={**os.environ, "TMPDIR": str(build)}, capture_output=True, text=True, check=False)
    tarballs = sorted(saved.glob(f"{PACKAGE}-*.tar.gz"))
    if tarballs:
        return tarballs[0]
    if next(build.rglob("benchmark_tasks"), None) is not None:
        print("pip stopped after unpacking (expected: the sdist declares a direct-URL dependency); "
              "taking the task files from its unpacked tree", flush=True)
        return build
    raise RuntimeError(f"pip download of {PACKAGE} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")


def main(args: argparse.Namespace) -> int:
    from core.cache import cache_root

    root = Path(args.dest) if args.dest else cache_root() / "eval-data"
    print(word_list_status(root))
    if args.hub:
        from eval.hub import export

        try:
            written = export([n.strip() for n in args.hub.split(",") if n.strip()], root)
        except ValueError as exc:
            print(f"error: {exc}")
            return 2
        for name, count in written.items():
            print(f"{name}: wrote {count} instances under {root / name}")
        return 0
    dest = root / "bigbench"
    start = time.perf_counter()
    if args.sdist:
        source: Path = Path(args.sdist)
        if not source.is_file():
            print(f"error: {source}: no such file")
            return 2
        copied = from_tarball(source, dest)
    else:
        with tempfile.TemporaryDirectory(prefix="bigbench-", dir=root.parent if root.parent.exists() else None) as tmp:
            try:
                source = download(Path(tmp))
            except RuntimeError as exc:
                print(f"error: {exc}")
                return 1
            copied = from_tarball(source, dest) if source.is_file() else from_tree(source, dest)
    missing = [e for e in BIGBENCH_TASKS if f"{e}/task.json" not in copied]
    size = sum((dest / c).stat().st_size for c in copied)
    bbq = sum(c.startswith(BBQ_LITE) for c in copied)
    print(f"wrote {len(copied)} task files ({size / 1e6:.1f} MB) to {dest} in {time.perf_counter() - start:.0f} s: "
          f"{len(copied) - bbq} BIG-bench entries, {bbq} BBQ-lite subtasks; the download was deleted")
    if missing:
        print(f"error: not in the package: {', '.join(missing)}")
        return 1
    return 0
