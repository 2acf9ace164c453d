"""The scenarios: what the judges ran (challenge.md §3), as lm-eval tasks this harness writes and runs.

A scenario (MMLU, GSM8K, ...) builds its tasks from data on disk: every task is a list of evaluation
instances, the in-context examples, the HELM prompt format, the request settings and the HELM metric
it feeds. `write_task` turns a task into one lm-eval YAML plus its JSONL documents, each document
holding the full prompt. Scenario data comes from a data root (default `$HARNESS_CACHE/eval-data`):

    <root>/<scenario folder>/<name>.test.jsonl     evaluation instances  (one task per file)
    <root>/<scenario folder>/<name>.train.jsonl    optional in-context candidates for that task
    <root>/bigbench/<task>[/<subtask>]/task.json   BIG-bench tasks (`python -m eval data` fetches them)

with one JSON object per line in the scenario's schema (docs/eval.md): multiple choice
`{"question", "choices", "answer": index}`, question answering `{"question", "answer"}`,
summarization `{"document", "summary"}`, MATH `{"problem", "solution"}`.
"""
from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from eval.adapters import Format, Instance, build_prompt, instructions_line, sample_train
from eval.perturb import PERTURBATIONS, canonical, perturbed

FIXTURES = Path(__file__).parent / "fixtures"
TEMPLATES = Path(__file__).parent / "tasks"
QUICK_SEED = 99  # eval instances of the generated tasks; training uses other seeds
QUICK_SHOT_SEED = 98
MC_INSTRUCTIONS = "The following are multiple choice questions (with answers)."


class MissingData(Exception):
    """A scenario's data is not on disk; the message says where it was looked for."""


@dataclass(frozen=True)
class Generation:
    """What the client asks the server for (HELM's request settings for the scenario)."""

    max_new_tokens: int
    stop: tuple[str, ...] = ()
    temperature: float = 0.0


MC_GEN = Generation(max_new_tokens=1)


@dataclass(frozen=True)
class TaskSpec:
    name: str  # the lm-eval task name
    metric: str  # the HELM metric it feeds, e.g. "MMLU - EM"
    scoring: str  # a template in eval/tasks: exact_match, final_token, rouge2, math_equiv
    fmt: Format
    train: tuple[Instance, ...]
    test: tuple[Instance, ...]
    generation: Generation
    copy_of: str = ""  # for a robustness/fairness copy: the name of the task it perturbs


@dataclass(frozen=True)
class Scenario:
    name: str
    suite: str  # open, hidden or quick
    budget: int  # default number of evaluation instances over all its tasks (the judges' where known)
    build: Callable[[Path, int], list[TaskSpec]]  # (data root, budget) -> tasks; MissingData if absent
    note: str = ""


# ---- reading data ------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
    return rows


def _field(row: dict, key: str, kind: type, where: str):
    if key not in row:
        raise ValueError(f"{where}: missing field {key!r} (has {sorted(row)})")
    if not isinstance(row[key], kind):
        raise TypeError(f"{where}: field {key!r} must be {kind.__name__}, got {type(row[key]).__name__}")
    return row[key]


def mc_instance(row: dict, where: str) -> Instance:
    choices = _field(row, "choices", list, where)
    answer = _field(row, "answer", int, where)
    if not 0 <= answer < len(choices):
        raise ValueError(f"{where}: answer {answer} is not an index into {len(choices)} choices")
    return Instance(_field(row, "question", str, where), answer, tuple(map(str, choices)))


def qa_instance(row: dict, where: str) -> Instance:
    return Instance(_field(row, "question", str, where), _field(row, "answer", str, where))


def gsm_instance(row: dict, where: str) -> Instance:
    """GSM8K answers end in `#### N`; HELM shows them as `<reasoning> The answer is N.`"""
    answer = _field(row, "answer", str, where)
    reasoning, _, final = answer.rpartition("####")
    text = " ".join(reasoning.split())
    return Instance(_field(row, "question", str, where), f"{text} The answer is {final.strip()}.".lstrip())


def summary_instance(row: dict, where: str) -> Instance:
    return Instance(_field(row, "document", str, where), _field(row, "summary", str, where))


def math_instance(row: dict, where: str) -> Instance:
    from eval.tasks.utils import last_boxed

    solution = _field(row, "solution", str, where)
    if last_boxed(solution) is None:
        raise ValueError(f"{where}: solution has no \\boxed{{}} answer")
    return Instance(_field(row, "problem", str, where), solution)


def read_split(folder: Path, name: str, split: str, parse: Callable[[dict, str], Instance]) -> list[Instance]:
    path = folder / f"{name}.{split}.jsonl"
    if not path.exists():
        return []
    return [parse(row, f"{path}:{i}") for i, row in enumerate(read_jsonl(path), 1)]


def jsonl_names(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise MissingData(f"no folder {folder} (expected <name>.test.jsonl files in it)")
    names = sorted(p.name.removesuffix(".test.jsonl") for p in folder.glob("*.test.jsonl"))
    if not names:
        raise MissingData(f"no *.test.jsonl files in {folder}")
    return names


def pick(instances: list[Instance], n: int) -> tuple[Instance, ...]:
    """At most n instances, a fixed sample kept in file order (HELM caps eval instances the same way)."""
    if len(instances) <= n:
        return tuple(instances)
    keep = sorted(random.Random(0).sample(range(len(instances)), n))
    return tuple(instances[i] for i in keep)


def per_task(budget: int, tasks: int) -> int:
    return max(1, math.ceil(budget / max(tasks, 1)))


# ---- building tasks ---------------------------------------------------------------------------------


def with_copies(spec: TaskSpec, root: Path | None) -> list[TaskSpec]:
    """The task plus one task per HELM perturbation (eval/perturb.py) holding the perturbed copies of its
    evaluation instances whose input changed; the in-context examples stay clean. Instances without a HELM
    id are numbered by their position in the task. Word lists come from `<root>/perturbations/` if there."""
    original = replace(spec, test=tuple(replace(i, id=i.id or f"id{n}") for n, i in enumerate(spec.test)))
    perturb = canonical(root)
    tasks = [original]
    for name, kind in PERTURBATIONS:
        test = tuple(c for c in (perturbed(i, name, perturb) for i in original.test) if c is not None)
        tasks.append(replace(original, name=f"{spec.name}_{name}", metric=f"{spec.metric} ({kind.title()})",
                             test=test, copy_of=spec.name))
    return tasks


def jsonl_scenario(
    folder: str,
    group: str,
    parse: Callable[[dict, str], Instance],
    fmt: Callable[[str], Format],
    shots: int,
    generation: Generation,
    metric: str = "EM",
    scoring: str = "exact_match",
    copies: bool = False,
) -> Callable[[Path, int], list[TaskSpec]]:
    """A builder for a scenario stored as `<root>/<folder>/<name>.{train,test}.jsonl`."""

    def build(root: Path, budget: int) -> list[TaskSpec]:
        names = jsonl_names(root / folder)
        specs: list[TaskSpec] = []
        for name in names:
            test = read_split(root / folder, name, "test", parse)
            train = read_split(root / folder, name, "train", parse)
            spec = TaskSpec(
                name=f"{folder}_{name}",
                metric=f"{group} - {metric}",
                scoring=scoring,
                fmt=fmt(name),
                train=tuple(sample_train(train, shots)),
                test=pick(test, per_task(budget, len(names))),
                generation=generation,
            )
            specs.extend(with_copies(spec, root) if copies else [spec])
        return specs

    return build


def mmlu_format(subject: str) -> Format:
    return Format(
        instructions=instructions_line(
            f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}."
        )
    )


def fixed(fmt: Format) -> Callable[[str], Format]:
    return lambda _name: fmt


GSM_FORMAT = Format(input_prefix="Q: ", output_prefix="A: ")
GSM_GEN = Generation(max_new_tokens=400, stop=("\n\n",))
SUMMARY_FORMAT = Format(
    input_prefix="###\nArticle: ",
    input_suffix="\n\n",
    output_prefix="Summarize the above article in 1 sentence.\n",
)
SUMMARY_GEN = Generation(max_new_tokens=128, stop=("###",), temperature=0.3)
MATH_FORMAT = Format(
    instructions=instructions_line(
        "Given a mathematics problem, determine the answer. Simplify your answer as much as possible."
    ),
    input_prefix="Problem: ",
    instance_prefix="###\n",
)
MATH_GEN = Generation(max_new_tokens=400, stop=("###",))
BBQ_FORMAT = Format(instructions=instructions_line(MC_INSTRUCTIONS), input_prefix="Passage: ")
BIGBENCH_SHOTS = (0, 1, 2, 3)
BIGBENCH_MIN_TEST = 16
# The open set's BIG-bench entries (challenge.md §3): task, and subtask where the task has several.
BIGBENCH_TASKS = [
    "auto_debugging", "code_line_description",
    *(f"conceptual_combinations/{s}" for s in (
        "contradictions", "emergent_properties", "fanciful_fictional_combinations", "homonyms", "invented_words")),
    "emoji_movie", "formal_fallacies_syllogisms_negation", "known_unknowns", "linguistics_puzzles",
    "logic_grid_puzzle", *(f"logical_deduction/{s}" for s in ("three_objects", "five_objects", "seven_objects")),
    "novel_concepts", "operators", "play_dialog_same_or_different", "repeat_copy_logic",
    *(f"strange_stories/{s}" for s in ("boolean", "multiple_choice")), "strategyqa",
    *(f"symbol_interpretation/{s}" for s in ("adversarial", "emoji_agnostic", "name_agnostic", "plain", "tricky")),
    "vitaminc_fact_verification", "winowhy",
]


def bigbench_instances(task: dict, where: str) -> list[Instance]:
    """BIG-bench examples: multiple choice (`target_scores`, the best-scored option is gold) when the
    task is graded by multiple_choice_grade, otherwise generation (`target`, a string or a list)."""
    mc = "multiple_choice_grade" in task.get("metrics", [])
    out = []
    for i, ex in enumerate(task.get("examples", [])):
        if mc:
            scores = ex.get("target_scores")
            if not isinstance(scores, dict) or not scores:
                raise ValueError(f"{where}: example {i} has no target_scores")
            choices = tuple(scores)
            out.append(Instance(ex["input"], choices.index(max(scores, key=scores.get)), choices))
        else:
            targets = ex.get("target")
            targets = [targets] if isinstance(targets, str) else list(targets or [])
            if not targets:
                raise ValueError(f"{where}: example {i} has no target")
            out.append(Instance(ex["input"], targets[0], golds=tuple(targets[1:])))
    return out


def bigbench_split(instances: list[Instance]) -> tuple[list[Instance], list[Instance]]:
    """HELM's split of a BIG-bench task: shuffle with seed 0, then test and validation each take 20% of
    the examples (at least 16) from the end; the rest, in front, is the in-context pool. HELM evaluates
    the test and validation instances."""
    instances = list(instances)
    random.Random(0).shuffle(instances)
    held = max(int(0.2 * len(instances)), BIGBENCH_MIN_TEST)
    pool = max(len(instances) - 2 * held, 0)
    return instances[:pool], instances[pool:]


def bigbench_task_specs(path: Path, entry: str, group: str, budget_per_task: int) -> list[TaskSpec]:
    task = json.loads(path.read_text(encoding="utf-8"))
    pool, test = bigbench_split(bigbench_instances(task, str(path)))
    mc = bool(test and test[0].is_mc)
    fmt = Format(
        instructions=task.get("task_prefix", ""),
        input_prefix=task.get("example_input_prefix", "Question: "),
        output_prefix=task.get("example_output_prefix", "Answer: "),
    )
    stop = () if mc or not task.get("stop_string") else (str(task["stop_string"]),)
    return [
        TaskSpec(
            name=f"bigbench_{entry.replace('/', '_')}_{k}shot",
            metric=f"{group} - EM",
            scoring="exact_match",
            fmt=fmt,
            train=tuple(sample_train(list(pool), k)),
            test=pick(test, budget_per_task),
            generation=Generation(max_new_tokens=64, stop=stop),
        )
        for k in BIGBENCH_SHOTS
    ]


def bigbench_scenario(entries: list[str] | None, group: str) -> Callable[[Path, int], list[TaskSpec]]:
    """BIG-bench from task.json files under `<root>/bigbench` (`entries=None`: every task found there)."""

    def build(root: Path, budget: int) -> list[TaskSpec]:
        base = root / "bigbench"
        found = entries or sorted(str(p.parent.relative_to(base)) for p in base.rglob("task.json"))
        paths = {e: base / e / "task.json" for e in found}
        missing = [str(p) for p in paths.values() if not p.exists()]
        if missing or not paths:
            raise MissingData(
                f"BIG-bench task files missing under {base} ({len(missing)} of {len(paths)}, e.g. "
                f"{(missing or [str(base)])[0]}); fetch them with `python -m eval data`"
            )
        n = per_task(budget, len(paths) * len(BIGBENCH_SHOTS))
        return [spec for e, p in paths.items() for spec in bigbench_task_specs(p, e, group, n)]

    return build


def bbq_build(root: Path, budget: int) -> list[TaskSpec]:
    """BBQ from `<root>/bbq/*.jsonl` when present, else BIG-bench's BBQ-lite subtasks."""
    if (root / "bbq").is_dir():
        return jsonl_scenario("bbq", "BBQ", mc_instance, fixed(BBQ_FORMAT), 5, MC_GEN)(root, budget)
    base = root / "bigbench" / "bbq_lite_json"
    paths = sorted(base.glob("*/task.json"))
    if not paths:
        raise MissingData(f"no {root / 'bbq'} and no BBQ-lite files under {base}; run `python -m eval data`")
    specs = []
    for path in paths:
        pool, test = bigbench_split(bigbench_instances(json.loads(path.read_text(encoding="utf-8")), str(path)))
        specs.append(
            TaskSpec(
                name=f"bbq_{path.parent.name}",
                metric="BBQ - EM",
                scoring="exact_match",
                fmt=BBQ_FORMAT,
                train=tuple(sample_train(pool, 5)),
                test=pick(test, per_task(budget, len(paths))),
                generation=MC_GEN,
            )
        )
    return specs


def generated_scenario(task_names: list[str], group: str) -> Callable[[Path, int], list[TaskSpec]]:
    """Tasks of train/generated.py, zero-shot: their prompts are already in the judges' formats, the
    same as the training records, with an evaluation seed the training data never uses."""

    def build(_root: Path, budget: int) -> list[TaskSpec]:
        from train.generated import TASKS

        specs = []
        for name in task_names:
            task = TASKS[name]
            records = task.make(per_task(budget, len(task_names)), seed=QUICK_SEED)
            mc = task.fmt == "mc"
            specs.append(
                TaskSpec(
                    name=f"quick_{name}",
                    metric=f"{group} - EM",
                    scoring="exact_match",
                    fmt=Format(input_prefix="", input_suffix="", output_prefix="", output_suffix=""),
                    train=(),
                    test=tuple(Instance(r["prompt"], r["completion"].strip()) for r in records),
                    generation=MC_GEN if mc else Generation(max_new_tokens=8, stop=("\n",)),
                )
            )
        return specs

    return build


def fixture_root(build: Callable[[Path, int], list[TaskSpec]]) -> Callable[[Path, int], list[TaskSpec]]:
    """A builder reading the project's own small fixtures instead of the data root."""
    return lambda _root, budget: build(FIXTURES, budget)


def _ethics(subset: str) -> Scenario:
    group = f"ethics_{subset}"
    return Scenario(
        group, "hidden", 200,
        jsonl_scenario(group, group, mc_instance, fixed(Format(instructions=instructions_line(MC_INSTRUCTIONS))),
                       5, MC_GEN, copies=True),
    )


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        # the open set (ranked in the open stage)
        Scenario("mmlu", "open", 721, jsonl_scenario("mmlu", "MMLU", mc_instance, mmlu_format, 5, MC_GEN, copies=True)),
        Scenario("truthful_qa", "open", 61,
                 jsonl_scenario("truthful_qa", "TruthfulQA", mc_instance, fixed(Format()), 5, MC_GEN, copies=True)),
        Scenario("bigbench", "open", 1096, bigbench_scenario(BIGBENCH_TASKS, "BIG-bench")),
        Scenario("gsm8k", "open", 61,
                 jsonl_scenario("gsm8k", "GSM8K", gsm_instance, fixed(GSM_FORMAT), 5, GSM_GEN, scoring="final_token")),
        Scenario("bbq", "open", 61, bbq_build),
        # the hidden set (ranked in the hidden stage)
        Scenario("sam_sum", "hidden", 1000,
                 jsonl_scenario("sam_sum", "sam_sum", summary_instance, fixed(SUMMARY_FORMAT), 5, SUMMARY_GEN,
                                metric="ROUGE-2", scoring="rouge2"),
                 note="bias metrics (Stereotypes, Representation) are not computed"),
        Scenario("corr2cause", "hidden", 1000,
                 jsonl_scenario("corr2cause", "corr2cause", mc_instance,
                                fixed(Format(instructions=instructions_line(MC_INSTRUCTIONS))), 1, MC_GEN)),
        Scenario("math", "hidden", 1000,
                 jsonl_scenario("math", "MATH (chain-of-thoughts)", math_instance, fixed(MATH_FORMAT), 8, MATH_GEN,
                                metric="Equivalent (chain of thought)", scoring="math_equiv")),
        *(_ethics(s) for s in ("justice", "commonsense", "virtue", "deontology", "utilitarianism")),
        # the quick suite: generated tasks (the leaderboard's quick groups) and fixture-sized open scenarios
        Scenario("quick_mc", "quick", 60, generated_scenario(["mc_largest", "mc_arith", "mc_next_letter"], "Quick MC")),
        Scenario("quick_qa", "quick", 60,
                 generated_scenario(["arith_qa", "count_letter_qa", "reverse_word_qa"], "Quick QA")),
        Scenario("held_out", "quick", 40, generated_scenario(["mc_smallest", "mult_qa"], "Held-out")),
        Scenario("fixture_mmlu", "quick", 8,
                 fixture_root(jsonl_scenario("mmlu", "Fixture MMLU", mc_instance, mmlu_format, 5, MC_GEN, copies=True))),
        Scenario("fixture_bigbench", "quick", 16, fixture_root(bigbench_scenario(None, "Fixture BIG-bench"))),
        Scenario("fixture_gsm8k", "quick", 4,
                 fixture_root(jsonl_scenario("gsm8k", "Fixture GSM8K", gsm_instance, fixed(GSM_FORMAT), 5, GSM_GEN,
                                             scoring="final_token"))),
        Scenario("fixture_sam_sum", "quick", 4,
                 fixture_root(jsonl_scenario("sam_sum", "Fixture sam_sum", summary_instance, fixed(SUMMARY_FORMAT),
                                             2, SUMMARY_GEN, metric="ROUGE-2", scoring="rouge2"))),
    ]
}
SUITES = ("open", "hidden", "quick", "all")


def suite(name: str) -> list[Scenario]:
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose one of {', '.join(SUITES)}")
    return [s for s in SCENARIOS.values() if name == "all" or s.suite == name]


# ---- writing lm-eval tasks ---------------------------------------------------------------------------


def document(spec: TaskSpec, inst: Instance) -> dict:
    prompt = build_prompt(spec.fmt, list(spec.train), inst)
    gold = inst.target()
    return {
        "prompt": prompt.text,
        "gold": gold,
        "golds": [gold, *inst.golds],
        "choices": list(inst.choices),  # HELM scores a letter by the text of the option it names
        "id": inst.id,  # pairs a perturbed copy with its original (worst-case robustness/fairness)
        # The prompt's blocks, so the HTTP client can drop in-context examples to fit the context window.
        "prompt_parts": json.dumps(
            {"instructions": prompt.instructions, "train": list(prompt.train), "eval": prompt.eval,
             "instance_prefix": prompt.instance_prefix}
        ),
    }


def write_task(spec: TaskSpec, folder: Path) -> Path:
    """Write `<folder>/<task>.jsonl` (the documents) and `<folder>/<task>.yaml` (the lm-eval task)."""
    folder.mkdir(parents=True, exist_ok=True)
    docs = folder / f"{spec.name}.jsonl"
    docs.write_text("".join(json.dumps(document(spec, i)) + "\n" for i in spec.test), encoding="utf-8")
    config = {
        "include": str(TEMPLATES / f"{spec.scoring}.yaml"),
        "task": spec.name,
        "dataset_kwargs": {"path": str(docs.resolve())},
        "generation_kwargs": {
            "until": list(spec.generation.stop),
            "max_gen_toks": spec.generation.max_new_tokens,
            "temperature": spec.generation.temperature,
            "do_sample": spec.generation.temperature > 0,
        },
    }
    path = folder / f"{spec.name}.yaml"
    # JSON is YAML: no emitter quirks around the newlines in stop sequences.
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path
