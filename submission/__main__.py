"""`python -m submission`: serve the competition API (the embedded tiny model unless told otherwise).

Flags override the HARNESS_* environment variables; both are read by the app at start-up.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import fields

import uvicorn

from submission.settings import Settings, env_name


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m submission", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (the container binds 0.0.0.0)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--log-level", default="info")
    for field in fields(Settings):
        kind = type(field.default) if field.default is not None else str
        parser.add_argument(
            "--" + field.name.replace("_", "-"),
            type=kind,
            help=f"default: ${env_name(field.name)} or {field.default!r}",
        )
    args = parser.parse_args(argv)
    for field in fields(Settings):
        value = getattr(args, field.name)
        if value is not None:
            os.environ[env_name(field.name)] = str(value)
    Settings.from_env()  # fail here, with the flag's name, rather than inside the server
    uvicorn.run("submission.main:app", host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
