"""`python -m eval instances` writes every data-backed scenario's test instances in core/instances.py's format:
run for real on the judges'-format data sets of tests/fixtures/helm/data (every scenario but BIG-bench) and
on the project's fixtures, the file reads back to exactly the instances eval's scenarios build; a file that
is not one gives a ValueError naming the file and the field."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core.instances import EvalInstance, InstanceSet, read_instances, write_instances
from eval.scenarios import SCENARIOS
from tests.helpers import REPO

DATA = REPO / "tests" / "fixtures" / "helm" / "data"
GENERATED = {"quick_mc", "quick_qa", "held_out"}  # instances made by code, not read from files


def eval_instances(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eval", "instances", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, check=False, env={**os.environ, **(env or {})})


def built(name: str, root: Path) -> list[EvalInstance]:
    """The scenario's test instances as its tasks hold them: every one (not the judges' sample), the
    perturbed copies left out, each (input, output) once."""
    out, seen = [], set()
    for spec in SCENARIOS[name].build(root, 10**9):
        for inst in () if spec.copy_of else spec.test:
            if (inst.input, str(inst.output)) not in seen:
                seen.add((inst.input, str(inst.output)))
                out.append(EvalInstance(inst.input, None if inst.is_mc else str(inst.output)))
    return out


def test_the_file_holds_the_instances_the_scenarios_build(tmp_path: Path) -> None:
    path = tmp_path / "out" / "instances.json"
    proc = eval_instances("--data", str(DATA), "--output", str(path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sets, skipped = read_instances(path)

    assert [s.scenario for s in sets] == [n for n in SCENARIOS if n not in GENERATED and n != "bigbench"]
    assert [name for name, _ in skipped] == ["bigbench"]  # no BIG-bench files in that data root
    assert "BIG-bench task files missing" in skipped[0][1]
    for s in sets:
        assert s.suite == SCENARIOS[s.scenario].suite
        assert list(s.instances) == built(s.scenario, DATA), s.scenario
        assert s.instances, s.scenario

    by_name = {s.scenario: s for s in sets}
    # Multiple choice: the input alone; generation: the reference output too.
    assert all(i.output is None for n in ("mmlu", "truthful_qa", "bbq", "ethics_justice", "fixture_mmlu")
               for i in by_name[n].instances)
    assert all(i.output for n in ("gsm8k", "sam_sum", "math", "summarization_cnndm", "fixture_gsm8k")
               for i in by_name[n].instances)
    # BIG-bench's four k-shot tasks share their test instances: written once.
    fixture_bigbench = SCENARIOS["fixture_bigbench"].build(DATA, 10**9)
    assert len(by_name["fixture_bigbench"].instances) == sum(len(t.test) for t in fixture_bigbench) // 4

    raw = json.loads(path.read_text(encoding="utf-8"))
    assert (raw["format"], raw["version"], raw["root"]) == ("eval-instances", 1, str(DATA))
    assert f"to {path}" in proc.stdout


def test_the_default_data_root_is_the_cache(tmp_path: Path) -> None:
    """Without --data: $HARNESS_CACHE/eval-data; an empty one leaves only the fixture scenarios."""
    path = tmp_path / "instances.json"
    proc = eval_instances("--output", str(path), env={"HARNESS_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sets, skipped = read_instances(path)
    assert [s.scenario for s in sets] == [n for n in SCENARIOS if n.startswith("fixture_")]
    assert {name for name, _ in skipped} == {n for n in SCENARIOS if n not in GENERATED and not n.startswith("fixture_")}
    assert all(str(tmp_path / "cache" / "eval-data") in reason for _, reason in skipped)


def test_write_and_read_round_trip(tmp_path: Path) -> None:
    sets = [InstanceSet("mmlu", "open", (EvalInstance("Which? ✓"), EvalInstance("Which?"))),
            InstanceSet("gsm8k", "open", (EvalInstance("2+2?", "4"),)), InstanceSet("math", "hidden", ())]
    skipped = [("bigbench", "no files")]
    path = write_instances(tmp_path / "a" / "i.json", sets, skipped, tmp_path)
    assert read_instances(path) == (sets, skipped)
    assert [p.name for p in path.parent.iterdir()] == ["i.json"]


GOOD = {"format": "eval-instances", "version": 1, "root": "/data",
        "sets": [{"scenario": "gsm8k", "suite": "open", "instances": [{"input": "q", "output": "a"}]}],
        "skipped": [{"scenario": "bigbench", "reason": "no files"}]}


@pytest.mark.parametrize(("change", "field"), [
    (lambda d: d.update(version=2), "version"),
    (lambda d: d.update(format="results"), "format"),
    (lambda d: d.pop("sets"), "sets"),
    (lambda d: d.update(skipped={}), "skipped"),
    (lambda d: d["sets"][0].pop("suite"), "sets[0].suite"),
    (lambda d: d["sets"][0].update(instances="q"), "sets[0].instances"),
    (lambda d: d["sets"][0]["instances"].append({"input": 3, "output": None}), "sets[0].instances[1].input"),
    (lambda d: d["sets"][0]["instances"][0].update(output=["a"]), "sets[0].instances[0].output"),
    (lambda d: d["sets"][0]["instances"].append("q"), "sets[0].instances[1]"),
    (lambda d: d["skipped"][0].update(reason=None), "skipped[0].reason"),
])
def test_a_malformed_file_names_the_file_and_the_field(tmp_path: Path, change, field: str) -> None:
    data = json.loads(json.dumps(GOOD))
    change(data)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match="^" + re.escape(f"{path}: {field}: ")):
        read_instances(path)


def test_a_file_that_is_not_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "instances.json"
    path.write_text('{"format": "eval-instances", ', encoding="utf-8")
    with pytest.raises(ValueError, match="^" + re.escape(f"{path}: not a readable eval-instances file")):
        read_instances(path)
    with pytest.raises(ValueError, match="missing.json: not a readable"):
        read_instances(tmp_path / "missing.json")
