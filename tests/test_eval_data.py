"""`python -m eval data` keeps exactly the task files the scenarios read (on a small sdist built here;
the real 360 MB download is not part of the tests)."""
from __future__ import annotations

import io
import json
import tarfile

import pytest

from eval import data
from eval.__main__ import main as cli
from eval.open_scenarios import BIGBENCH_TASKS
from eval.scenarios import SCENARIOS


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
    specs = SCENARIOS["bigbench"].build(dest, None)
    assert len(specs) == len(BIGBENCH_TASKS) * 4
    # Without nyu-mll's BBQ files, BBQ falls back to BBQ-lite, and says so.
    bbq = SCENARIOS["bbq"].build(dest, None)
    assert {s.name for s in bbq} == {"bbq_lite_age_ambig", "bbq_lite_ses_disambig"}
    assert all("not the judges'" in s.source for s in bbq)


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


def test_hub_export_writes_the_judges_file_formats_labelled_as_exports(tmp_path, capsys):
    """The exporters on rows shaped like the hub datasets' (this machine has no hub) write the fork's file
    formats; the scenarios read them like the judges' files, and a run would print where they came from."""
    from eval.hub import export

    anatomy = {"subject": "anatomy", "choices": ["a", "b", "c", "d"]}
    hub = {
        ("cais/mmlu", "all", "dev"): [{**anatomy, "question": f"q{i}?", "answer": 2} for i in range(5)],
        ("cais/mmlu", "all", "validation"): [{**anatomy, "question": "v?", "answer": 0}],
        ("cais/mmlu", "all", "test"): [{**anatomy, "question": f"t{i}?", "answer": 1} for i in range(3)],
        ("truthful_qa", "generation", "validation"): [
            {"type": "Adversarial", "category": "Misc", "question": f"tq{i}?", "best_answer": "Right",
             "correct_answers": ["Right"], "incorrect_answers": ["Wrong", "Worse"], "source": "x"} for i in range(10)],
        ("gsm8k", "main", "train"): [{"question": "1+1?", "answer": "1+1=2\n#### 2"}] * 5,
        ("gsm8k", "main", "test"): [{"question": "2+2?", "answer": "2+2=4\n#### 4"}],
        ("samsum", None, "test"): [{"id": "s1", "dialogue": "A: hi\r\nB: hello", "summary": "They greet."}],
        **{("cnn_dailymail", "3.0.0", split): [{"id": "c", "article": "word " * n, "highlights": "Short.\nTwo."}]
           for split, n in (("train", 60), ("validation", 600), ("test", 10))},
    }
    counts = export(["mmlu", "truthful_qa", "gsm8k", "sam_sum", "summarization_cnndm"], tmp_path,
                    lambda d, c, s: hub[(d, c, s)])
    assert counts == {"mmlu": 9, "truthful_qa": 10, "gsm8k": 6, "sam_sum": 1, "summarization_cnndm": 3}
    assert (tmp_path / "mmlu" / "val" / "anatomy_val.csv").read_text() == "v?,a,b,c,d,A\n"
    (mmlu, *_copies) = [s for s in SCENARIOS["mmlu"].build(tmp_path, None) if s.name.startswith("mmlu_anatomy")]
    assert len(mmlu.train) == 5 and len(mmlu.test) == 4 and "exported from the dataset hub (cais/mmlu)" in mmlu.source
    (tqa, *_copies) = SCENARIOS["truthful_qa"].build(tmp_path, None)
    assert len(tqa.train) == 2 and len(tqa.test) == 8  # the fork's 20% in-context pool
    assert all(i.choices[int(i.output)] == "Right." for i in tqa.test)
    # incorrect answers then the best one, rotated left by ord("R") % 3 == 1
    assert tqa.test[0].choices == ("Worse.", "Right.", "Wrong.")
    (gsm,) = SCENARIOS["gsm8k"].build(tmp_path, None)
    assert gsm.test[0].target() == "2+2=4 The answer is 4."
    (sam,) = SCENARIOS["sam_sum"].build(tmp_path, None)
    assert sam.test[0].input == "A: hi\nB: hello" and "not the judges' file" in sam.source
    (cnn,) = SCENARIOS["summarization_cnndm"].build(tmp_path, None)
    assert len(cnn.train) == 1 and [len(i.input.split()) for i in cnn.test] == [512, 10]  # HELM's 512-word cut
    assert cnn.test[0].output == "Short. Two." and cnn.fmt.output_prefix == "Summarize the above article in 3 sentences.\n"


# ---- the judges' file formats: a malformed file is refused with its path, line and field ------------------

BAD_FILES = [
    ("ethics_justice", "justice_hard.csv", "label,scenario\n1,fine\nmaybe,I took it\n", r"justice_hard\.csv:3: field 'label'"),
    ("ethics_deontology", "deontology.csv", "label,scenario,excuse\n0,a,b\n1,only two\n",
     r"deontology\.csv:3: field 'excuse': expected 3 columns"),
    ("ethics_virtue", "virtue.csv", 'label,scenario\n1,"kind, no separator"\n', r"virtue\.csv:2: field 'scenario'"),
    ("ethics_utilitarianism", "util.csv", "a,b,label\nx,y,2\n", r"util\.csv:2: field 'label': expected 0\.\.1"),
    ("corr2cause", "corr2cause.csv", 'label,input\n0,"Premise: two\nlines"\n1\n', r"corr2cause\.csv:4: field 'input'"),
    ("sam_sum", "samsum.tsv", "id\tdialogue\n1\thi\n", r"samsum\.tsv:1: field 'summary'"),
    ("truthful_qa", "TruthfulQA.csv", "h\nAdversarial,Misc,Q?,,x,y,z\n", r"TruthfulQA\.csv:2: field 'Best Answer'"),
    ("gsm8k", "gsm_data_train", '{"question": "q", "answer": "a"}\n{"question": "q"}\n',
     r"gsm_data_train:2: field 'answer': missing"),
    ("bbq", "Age.jsonl", '{"context": "c", "question": "q", "ans0": "a", "ans1": "b", "ans2": "c", "label": 3}\n',
     r"Age\.jsonl:1: field 'label'"),
    ("mmlu", "test/anatomy_test.csv", "q,a,b,c,d,A\nq,a,b,c,d,F\n", r"anatomy_test\.csv:2: field 'answer'"),
    # a pickle that names a function would run it when loaded: refused unread
    ("summarization_cnndm", "cnndm.pk", "cos\nsystem\n(S'true'\ntR.", r"cnndm\.pk:1: field '\(pickle\)'"),
    ("summarization_cnndm", "cnndm.pk", "(dp0\nS'train'\n(lp1\n(dp2\nS'article'\nS'a'\nsas.", r"cnndm\.pk:1: field 'highlights'"),
]


@pytest.mark.parametrize(("scenario", "name", "text", "message"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_a_malformed_data_file_is_refused_with_path_line_and_field(tmp_path, scenario, name, text, message):
    from eval.sources import DataError

    path = tmp_path / scenario / name
    path.parent.mkdir(parents=True)
    path.write_text(text, encoding="utf-8")
    if scenario == "gsm8k":
        (tmp_path / "gsm8k" / "gsm_data_test").write_text("")
    with pytest.raises(DataError, match=message):
        SCENARIOS[scenario].build(tmp_path, None)


def test_run_refuses_a_malformed_file_before_any_request_and_records_nothing(tmp_path, capsys):
    """The run reads every chosen scenario's data first: a bad file ends it with exit 2 and the file, line
    and field, before the target is even loaded (the model path here does not exist) and with no database."""
    (tmp_path / "data" / "ethics_justice").mkdir(parents=True)
    (tmp_path / "data" / "ethics_justice" / "justice_hard.csv").write_text("label,scenario\n7,x\n")
    db = tmp_path / "results.sqlite"
    code = cli(["run", "--model", str(tmp_path / "no-model"), "--name", "e", "--suite", "hidden",
                "--data", str(tmp_path / "data"), "--db", str(db), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "justice_hard.csv:2: field 'label': expected 0..1, got 7" in capsys.readouterr().out
    assert not db.exists() and not (tmp_path / "out").exists()
