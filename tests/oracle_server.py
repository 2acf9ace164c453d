"""A test server of the competition API that knows the answers: `python tests/oracle_server.py --port P`.

It answers POST /process with the completion the answers file gives for the prompt's evaluation
instance (the last `Z<n>Z` marker in the prompt; markers survive HELM's perturbations), else with
`--default`; /tokenize counts whitespace-separated words. `--die-after N` makes the process exit at once
(no response) on the (N+1)-th /process request: a server that dies in the middle of an evaluation;
`--slow-after N` delays every answer after the N-th by a second: a run still busy when it is stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

import uvicorn
from fastapi import FastAPI

MARKER = re.compile(r"z(\d+)z", re.IGNORECASE)


def make_app(answers: dict[str, str], default: str, die_after: int | None, slow_after: int | None) -> FastAPI:
    app = FastAPI()
    served = [0]

    @app.post("/process")
    def process(body: dict) -> dict:
        if die_after is not None and served[0] >= die_after:
            os._exit(3)
        served[0] += 1
        if slow_after is not None and served[0] > slow_after:
            time.sleep(1.0)
        markers = MARKER.findall(body["prompt"])
        text = answers.get(markers[-1], default) if markers else default
        return {"text": text, "tokens": [{"text": text, "logprob": 0.0, "top_logprob": {text: 0.0}}],
                "logprob": 0.0, "request_time": 0.0}

    @app.get("/served")
    def served_count() -> dict:
        """How many /process requests have arrived (a test waits on it to act mid-run)."""
        return {"served": served[0]}

    @app.post("/tokenize")
    def tokenize(body: dict) -> dict:
        return {"tokens": list(range(len(body["text"].split()))), "request_time": 0.0}

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--answers", type=Path, help="JSON {marker number: completion}")
    parser.add_argument("--default", default=" A")
    parser.add_argument("--die-after", type=int)
    parser.add_argument("--slow-after", type=int)
    args = parser.parse_args()
    answers = json.loads(args.answers.read_text()) if args.answers else {}
    app = make_app(answers, args.default, args.die_after, args.slow_after)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()


class Oracle:
    """Start the oracle as a real process for a test: `with Oracle(tmp_path, answers) as url: ...`."""

    def __init__(self, folder: Path, answers: dict[str, str] | None = None, default: str = " A",
                 die_after: int | None = None, slow_after: int | None = None) -> None:
        from tests.helpers import free_port

        self.port = free_port()
        self.args = ["--port", str(self.port), "--default", default]
        if answers is not None:
            path = folder / "oracle_answers.json"
            path.write_text(json.dumps(answers))
            self.args += ["--answers", str(path)]
        if die_after is not None:
            self.args += ["--die-after", str(die_after)]
        if slow_after is not None:
            self.args += ["--slow-after", str(slow_after)]

    def __enter__(self) -> str:
        import subprocess
        import sys
        import time

        import httpx

        self.proc = subprocess.Popen([sys.executable, __file__, *self.args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"oracle exited with {self.proc.returncode}: {self.proc.stdout.read()[-2000:]}")
            try:
                httpx.post(f"{url}/tokenize", json={"text": "up?"}, timeout=2).raise_for_status()
                return url
            except httpx.TransportError:
                time.sleep(0.2)
        self.proc.kill()
        raise RuntimeError("oracle did not start within 60 s")

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=30)
