"""`python -m eval instances`: write every data-backed scenario's test instances to a file (core/instances.py's
format), so that a reader which must not import eval (training's decontamination) sees exactly the instances
eval's scenarios build.

A scenario is data-backed when its instances come from files: from the data root (built against an empty
root it raises MissingData, or fails reading) or from the project's fixtures (the `fixture_` scenarios).
Scenarios that generate their instances from code (the quick suite's generated tasks) are left out. Every
test instance counts, not the judges' sample (a budget no scenario reaches); the perturbed copies of an
instance (`TaskSpec.copy_of`) are left out, and an instance several tasks share (BIG-bench's k-shot tasks)
is written once. A data-backed scenario whose data is missing is listed with MissingData's message.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from core.instances import EvalInstance, InstanceSet, write_instances
from eval.scenarios import Scenario, suite
from eval.task_spec import MissingData

EVERY_INSTANCE = 10**9  # a budget no scenario reaches: all test instances, not the judges' sample


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="DIR", help="scenario data root (default $HARNESS_CACHE/eval-data)")
    parser.add_argument("--output", required=True, metavar="FILE", help="where to write the instances (JSON)")


def reads_data(scenario: Scenario, empty: Path) -> bool:
    """Whether a scenario's instances come from files: from the data root (it finds nothing in an empty
    one) or from the fixtures."""
    if scenario.name.startswith("fixture_"):
        return True
    try:
        scenario.build(empty, 1)
    except MissingData:
        return True
    except (OSError, ValueError):
        return True
    return False


def instance_sets(root: Path) -> tuple[list[InstanceSet], list[tuple[str, str]]]:
    """Every data-backed scenario's test instances, and (scenario, reason) for those without data."""
    sets, skipped = [], []
    with tempfile.TemporaryDirectory() as empty:
        for scenario in suite("all"):
            if not reads_data(scenario, Path(empty)):
                continue
            try:
                specs = scenario.build(root, EVERY_INSTANCE)
            except MissingData as err:
                skipped.append((scenario.name, str(err)))
                continue
            seen: set[tuple[str, str]] = set()
            instances = []
            for spec in specs:
                if spec.copy_of:  # perturbed copies of the same instances
                    continue
                for inst in spec.test:
                    key = (inst.input, str(inst.output))
                    if key in seen:  # BIG-bench's k-shot tasks share their test instances
                        continue
                    seen.add(key)
                    instances.append(EvalInstance(inst.input, None if inst.is_mc else str(inst.output)))
            sets.append(InstanceSet(scenario.name, scenario.suite, tuple(instances)))
    return sets, skipped


def main(args: argparse.Namespace) -> int:
    from core.cache import cache_root

    root = Path(args.data) if args.data else cache_root() / "eval-data"
    try:
        sets, skipped = instance_sets(root)
    except ValueError as exc:  # sources.DataError: the file, line and field
        print(f"error: {exc}")
        return 2
    path = write_instances(Path(args.output), sets, skipped, root)
    total = sum(len(s.instances) for s in sets)
    print(f"wrote {total} instances of {len(sets)} scenarios (data root {root}) to {path}")
    for name, reason in skipped:
        print(f"  no data for {name}: {reason}")
    return 0
