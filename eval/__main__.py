"""`python -m eval <command>`: each command lives in its own module, which defines
`add_arguments(parser)` and `main(args) -> int`."""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "run": ("eval.runner", "evaluate an entry (a server or a local model) on a suite of scenarios"),
    "data": ("eval.data", "fetch offline task files (BIG-bench, BBQ-lite) into the cache"),
    "leaderboard": ("eval.leaderboard", "rank the entries with the organizers' rule"),
    "import": ("eval.importer", "import published results (the organizers' JSON format) as entries"),
    "instances": ("eval.instances", "write every data-backed scenario's test instances to a file (for decontamination)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Only the chosen command's module is imported (training runs `eval instances` before every run, and
    # `eval.report` alone pulls in matplotlib); help or an unknown command imports them all.
    chosen = [argv[0]] if argv and argv[0] in COMMANDS else list(COMMANDS)
    parser = argparse.ArgumentParser(prog="python -m eval", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, (module_name, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name in chosen:
            modules[name] = importlib.import_module(module_name)
            modules[name].add_arguments(command)
    args = parser.parse_args(argv)
    return modules[args.command].main(args)


if __name__ == "__main__":
    sys.exit(main())
