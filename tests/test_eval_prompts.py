"""The scenarios build HELM's prompts exactly, lm-eval sends them unchanged, and the scoring rules hold."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from eval.adapters import Format, Instance, build_prompt, instructions_line, sample_train
from eval.open_scenarios import bigbench_task_specs
from eval.scenarios import FIXTURES, SCENARIOS
from eval.task_files import write_task
from eval.task_spec import MissingData
from eval.tasks import utils

# challenge.md §3's example, with a concrete evaluation question in place of its "…".
HELM_ANATOMY = (
    "The following are multiple choice questions (with answers) about anatomy.\n"
    "\n"
    "Question: The pleura\n"
    "A. have no sensory innervation.\n"
    "B. are separated by a 2 mm space.\n"
    "C. extend into the neck.\n"
    "D. are composed of respiratory epithelium.\n"
    "Answer: C\n"
    "\n"
    "Question: Which bone forms the point of the elbow?\n"
    "A. Radius\n"
    "B. Ulna\n"
    "C. Humerus\n"
    "D. Scapula\n"
    "Answer:"
)
PLEURA = {
    "question": "The pleura",
    "choices": ["have no sensory innervation.", "are separated by a 2 mm space.", "extend into the neck.",
                "are composed of respiratory epithelium."],
    "answer": 2,
}
ELBOW = {"question": "Which bone forms the point of the elbow?", "choices": ["Radius", "Ulna", "Humerus", "Scapula"],
         "answer": 1}


def load_lm_eval_task(spec, folder: Path):
    """Write the task, load it through lm-eval's task manager and build its requests."""
    from lm_eval.tasks import TaskManager

    write_task(spec, folder)
    task = TaskManager(include_path=str(folder), include_defaults=False).load_task_or_group([spec.name])[spec.name]
    task.build_all_requests(limit=None, rank=0, world_size=1)
    return task


def write_mmlu(root: Path, subject: str, dev: list[dict], test: list[dict]) -> None:
    """MMLU's CSV layout: <split>/<subject>_<split>.csv, rows of question, options, correct letter."""
    for split, rows in (("dev", dev), ("test", test)):
        (root / "mmlu" / split).mkdir(parents=True, exist_ok=True)
        with open(root / "mmlu" / split / f"{subject}_{split}.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([r["question"], *r["choices"], "ABCD"[r["answer"]]] for r in rows)


def test_mmlu_task_prompt_equals_helm_example_character_for_character(tmp_path):
    write_mmlu(tmp_path / "data", "anatomy", [PLEURA], [ELBOW])
    base = next(s for s in SCENARIOS["mmlu"].build(tmp_path / "data", None) if s.name == "mmlu_anatomy")

    task = load_lm_eval_task(base, tmp_path / "tasks")
    (request,) = task.instances
    assert request.args[0] == HELM_ANATOMY
    assert request.args[1]["max_gen_toks"] == 1 and request.args[1]["until"] == []
    assert request.args[1]["temperature"] == 0.0
    assert task.doc_to_target(request.doc) == "B"


def test_perturbed_copies_change_only_the_evaluation_block(tmp_path):
    write_mmlu(tmp_path, "anatomy", [PLEURA],
               [{**ELBOW, "question": "He told John the bone that forms the point of the elbow is the"}])
    specs = {s.name: s for s in SCENARIOS["mmlu"].build(tmp_path, None)}
    assert {s.metric for s in specs.values()} == {"MMLU - EM", "MMLU - EM (Robustness)", "MMLU - EM (Fairness)"}
    # HELM's gender pattern needs a character before the pronoun: a sentence-initial "He" stays, no copy.
    assert specs["mmlu_anatomy_gender"].test == ()
    prompts = {}
    for name in ("mmlu_anatomy", "mmlu_anatomy_mild_mix", "mmlu_anatomy_person_name"):
        (request,) = load_lm_eval_task(specs[name], tmp_path / "tasks" / name).instances
        prompts[name] = request.args[0]
    clean, robust, fair = prompts.values()
    shared = HELM_ANATOMY[: HELM_ANATOMY.index("Question: Which")]
    assert all(p.startswith(shared) for p in (clean, robust, fair))
    robust_block = robust[len(shared):]
    assert robust_block != clean[len(shared):]
    # mild_mix perturbs the question only, never the options.
    assert robust_block.startswith("Question: ") and robust_block.endswith("\nA. Radius\nB. Ulna\nC. Humerus\nD. Scapula\nAnswer:")
    assert robust_block.splitlines()[0].removeprefix("Question: ").islower()
    assert "He told John" in clean and "He told John" not in fair and fair.count("He told ") == 1


def test_helm_in_context_sampling_prefers_frequent_labels_and_is_seeded():
    pool = [Instance(f"q{i}", label) for i, label in enumerate(["x", "x", "x", "y", "z"])]
    first = sample_train(list(pool), 2)
    assert first == sample_train(list(pool), 2)
    # "x" has the most candidates, so it is drawn first; the second pick is one of the rarer labels.
    assert first[0].output == "x" and first[1].output in {"y", "z"}
    assert len(sample_train(list(pool), 10)) == 5 and sample_train(list(pool), 0) == []


def test_gsm8k_prompt_and_final_token_scoring():
    specs = SCENARIOS["fixture_gsm8k"].build(Path("/unused"), 4)
    (spec,) = specs
    prompt = build_prompt(spec.fmt, list(spec.train), spec.test[0]).text
    blocks = prompt.split("\n\n")
    assert len(blocks) == 6 and blocks[-1].startswith("Q: ") and blocks[-1].endswith("\nA:")
    assert all(b.startswith("Q: ") and "\nA: " in b and b.endswith(".") for b in blocks[:-1])
    assert spec.generation.stop == ("\n\n",) and spec.generation.max_new_tokens == 400
    gold = spec.test[0].target()
    assert gold.endswith("The answer is 27.")
    assert utils.final_token_match({"gold": gold}, [" 12 + 15 = 27. The answer is 27."])["em"] == 1.0
    assert utils.final_token_match({"gold": gold}, [" The answer is 26."])["em"] == 0.0
    assert utils.final_token_match({"gold": gold}, [""])["em"] == 0.0


def test_bigbench_task_json_multiple_choice_and_generative_prompts():
    mc = bigbench_task_specs(FIXTURES / "bigbench/fixture_mc/task.json", "fixture_mc", "BIG-bench", 2)
    gen = bigbench_task_specs(FIXTURES / "bigbench/fixture_gen/task.json", "fixture_gen", "BIG-bench", 2)
    assert [s.name for s in mc] == [f"bigbench_fixture_mc_{k}shot" for k in range(4)]
    assert [len(s.train) for s in mc] == [0, 1, 2, 3]
    one_shot = build_prompt(mc[1].fmt, list(mc[1].train), mc[1].test[0]).text
    # task_prefix, then each block: example_input_prefix + input, the options, example_output_prefix + letter
    assert one_shot.startswith("Choose the animal that fits the clue.\n\n\nClue: ")
    assert one_shot.count("\nAnimal: ") == 1 and one_shot.endswith("\nAnimal:")
    assert mc[0].generation.max_new_tokens == 64 and mc[0].generation.stop == ()
    assert gen[0].generation.max_new_tokens == 64 and gen[0].generation.stop == ("\n",)
    zero = build_prompt(gen[0].fmt, [], gen[0].test[0]).text
    assert zero.startswith("\nQ: Write '") and zero.endswith("backwards.\n\nA:")


def test_missing_data_names_the_place_and_the_fetch_command(tmp_path):
    with pytest.raises(MissingData, match=r"python -m eval data"):
        SCENARIOS["bigbench"].build(tmp_path, 1096)
    with pytest.raises(MissingData, match=str(tmp_path / "gsm8k")):
        SCENARIOS["gsm8k"].build(tmp_path, 61)


def test_scoring_rules():
    assert utils.exact_match({"golds": ["C"]}, [" C"])["em"] == 1.0
    assert utils.exact_match({"golds": ["C"]}, [" C\n\nQuestion"])["em"] == 0.0  # the client never cuts
    assert utils.exact_match({"golds": ["olleh", "hello"]}, ["hello "])["em"] == 1.0
    summary = "Omar will bring the snacks to the match tonight."
    assert utils.rouge2({"gold": summary, "golds": [summary]}, [summary])["rouge2"] == pytest.approx(1.0)
    assert utils.rouge2({"gold": summary, "golds": [summary]}, ["Completely unrelated words here."])["rouge2"] == 0.0
    solution = "So the sum is $\\boxed{\\dfrac{1}{2}}$."
    # The gold is the whole solution, as the MATH documents carry it (HELM's chain-of-thought reference).
    assert utils.math_equiv({"gold": solution}, ["thus \\boxed{\\frac{1}{2}}."])["equiv"] == 1.0
    assert utils.math_equiv({"gold": solution}, ["the answer is 1/2"])["equiv"] == 0.0  # nothing boxed
    assert utils.last_boxed("\\boxed{a{b}c} then \\boxed{d}") == "d"


def test_quick_suite_uses_generated_tasks_with_an_eval_seed_and_training_format():
    from core.generated import TASKS

    specs = {s.name: s for s in SCENARIOS["held_out"].build(Path("/unused"), 40)}
    assert set(specs) == {"quick_mc_smallest", "quick_mult_qa"}
    assert all(TASKS[n.removeprefix("quick_")].held_out for n in specs)
    record = TASKS["mc_smallest"].make(20, seed=99)[0]
    first = specs["quick_mc_smallest"].test[0]
    assert build_prompt(specs["quick_mc_smallest"].fmt, [], first).text == record["prompt"]
    assert first.target() == record["completion"].strip()


def test_written_documents_carry_prompt_blocks_for_context_fitting(tmp_path):
    spec = SCENARIOS["fixture_mmlu"].build(Path("/unused"), 8)[0]
    write_task(spec, tmp_path)
    doc = json.loads((tmp_path / f"{spec.name}.jsonl").read_text().splitlines()[0])
    parts = json.loads(doc["prompt_parts"])
    assert len(parts["train"]) == 5
    assert parts["instance_prefix"].join([parts["instructions"], *parts["train"], parts["eval"]]) == doc["prompt"]
    assert Format().instructions == "" and instructions_line("x") == "x\n"


def test_bigbench_split_follows_helm_sizes():
    from eval.open_scenarios import bigbench_split

    def sizes(n: int) -> tuple[int, int]:
        split = bigbench_split([Instance(str(i), str(i)) for i in range(n)])
        pool, test = split.train, split.eval
        assert sorted(int(i.input) for i in pool + test) == list(range(n))  # a shuffle, nothing lost
        return len(pool), len(test)

    # test and validation: 20% each, at least 16; the in-context pool is what remains
    assert sizes(100) == (60, 40) and sizes(34) == (2, 32) and sizes(10) == (0, 10)
