"""`python -m eval data` keeps exactly the task files the scenarios read (on a small sdist built here;
the real 360 MB download is not part of the tests)."""
from __future__ import annotations

import io
import json
import tarfile

from eval import data
from eval.__main__ import main as cli
from eval.scenarios import BIGBENCH_TASKS, SCENARIOS


def task_json(name: str, mc: bool) -> bytes:
    example = {"input": "in", "target_scores": {"yes": 1, "no": 0}} if mc else {"input": "in", "target": "out"}
    metrics = ["multiple_choice_grade"] if mc else ["exact_str_match"]
    return json.dumps({"name": name, "metrics": metrics, "examples": [example] * 8}).encode()


def make_sdist(path, entries: list[str]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for entry in entries:
            payload = task_json(entry, mc=True)
            info = tarfile.TarInfo(f"bigbench-1.0.0/bigbench/benchmark_tasks/{entry}/task.json")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def test_extracts_only_the_needed_task_files(tmp_path, capsys):
    sdist = tmp_path / "bigbench-1.0.0.tar.gz"
    extra = ["bbq_lite_json/age_ambig", "bbq_lite_json/ses_disambig", "bbq_lite_json",
             "conceptual_combinations", "unrelated_task", "logical_deduction/three_objects/nested"]
    make_sdist(sdist, BIGBENCH_TASKS + extra)
    dest = tmp_path / "root"
    assert cli(["data", "--sdist", str(sdist), "--dest", str(dest)]) == 0
    kept = sorted(p.relative_to(dest / "bigbench").parent.as_posix() for p in dest.rglob("task.json"))
    assert kept == sorted(BIGBENCH_TASKS + ["bbq_lite_json/age_ambig", "bbq_lite_json/ses_disambig"])
    out = capsys.readouterr().out
    assert f"wrote {len(kept)} task files" in out and "2 BBQ-lite subtasks" in out
    # The scenarios read what was written.
    specs = SCENARIOS["bigbench"].build(dest, 1096)
    assert len(specs) == len(BIGBENCH_TASKS) * 4
    assert {s.name for s in SCENARIOS["bbq"].build(dest, 61)} == {"bbq_age_ambig", "bbq_ses_disambig"}


def test_reports_entries_missing_from_the_package(tmp_path, capsys):
    sdist = tmp_path / "bigbench-1.0.0.tar.gz"
    make_sdist(sdist, BIGBENCH_TASKS[:3])
    assert cli(["data", "--sdist", str(sdist), "--dest", str(tmp_path / "root")]) == 1
    assert BIGBENCH_TASKS[3] in capsys.readouterr().out


def test_reads_a_tree_pip_unpacked(tmp_path):
    tasks = tmp_path / "pip-download-x" / "bigbench_123" / "bigbench" / "benchmark_tasks"
    for entry in ("emoji_movie", "bbq_lite_json/age_ambig", "unrelated"):
        (tasks / entry).mkdir(parents=True)
        (tasks / entry / "task.json").write_bytes(task_json(entry, mc=False))
    copied = data.from_tree(tmp_path, tmp_path / "out")
    assert copied == ["bbq_lite_json/age_ambig/task.json", "emoji_movie/task.json"]
    assert (tmp_path / "out" / "emoji_movie" / "task.json").read_bytes() == task_json("emoji_movie", mc=False)


def test_hub_export_writes_the_scenarios_local_schema(tmp_path):
    """The exporters on rows shaped like the hub datasets' (this machine has no hub); the scenarios
    then build their tasks from what was written."""
    from eval.hub import export

    hub = {
        ("cais/mmlu", "all", "dev"): [{"subject": "anatomy", "question": "q?", "choices": ["a", "b", "c", "d"],
                                       "answer": 2}] * 5,
        ("cais/mmlu", "all", "test"): [{"subject": "anatomy", "question": "t?", "choices": ["a", "b", "c", "d"],
                                        "answer": 1}] * 3,
        ("truthful_qa", "multiple_choice", "validation"): [
            {"question": f"tq{i}?", "mc1_targets": {"choices": ["right", "wrong", "worse"], "labels": [1, 0, 0]}}
            for i in range(8)],
        ("gsm8k", "main", "train"): [{"question": "1+1?", "answer": "1+1=2\n#### 2"}] * 5,
        ("gsm8k", "main", "test"): [{"question": "2+2?", "answer": "2+2=4\n#### 4"}],
    }
    counts = export(["mmlu", "truthful_qa", "gsm8k"], tmp_path, lambda d, c, s: hub[(d, c, s)])
    assert counts == {"mmlu": 8, "truthful_qa": 8, "gsm8k": 6}
    (mmlu,) = [s for s in SCENARIOS["mmlu"].build(tmp_path, 721) if s.name == "mmlu_anatomy"]
    assert len(mmlu.train) == 5 and len(mmlu.test) == 3 and mmlu.test[0].target() == "B"
    tqa = SCENARIOS["truthful_qa"].build(tmp_path, 61)[0]
    assert len(tqa.test) == 3
    assert all(i.choices[int(i.output)] == "right" for i in tqa.test)
    assert {int(i.output) for i in tqa.train + tqa.test} != {0}  # shuffled: the gold is not always A
    (gsm,) = SCENARIOS["gsm8k"].build(tmp_path, 61)
    assert gsm.test[0].target() == "2+2=4 The answer is 4."
