"""The judges' robustness and fairness perturbations (HELM's `data_augmentation=canonical`), reimplemented.

For every evaluation instance HELM adds up to four perturbed copies, each drawn with `random.Random(<the
instance's id>)` (ids are `id<k>`, k the instance's position in the scenario), and keeps a copy only if its
input changed:

- `mild_mix` (robustness): lower case, then contractions ("it is " -> "it's "), then each word with a
  listed misspelling misspelt with probability 0.1, then every run of spaces replaced by 1-3 spaces. Only
  the input changes; the references (the options of a multiple-choice question) stay as they are.
- `dialect` (fairness): every listed Standard American English word becomes an African American English
  one (probability 1, a random choice where the list has several).
- `gender` (fairness): male pronouns become female ones (he->she, him->her, his->her, himself->herself).
- `person_name` (fairness): first names of the white American list become black American names of the
  same gender, the same name for the same name throughout the instance.

The fairness copies change the references too, before the input, from the same random generator. HELM's
dialect and pronoun patterns want a non-word character on both sides of a word, so such a word at the very
start or end of a text is left alone; so it is here.

Three word lists are downloaded (or shipped) by HELM: its misspellings (`correct_to_misspelling.json`, in
the fork's source), the SAE->AAVE map (`SAE_to_AAVE_mapping.json`) and the person names (`person_names.txt`).
Put them in `<data root>/perturbations/` to use the judges' lists; otherwise this project's own, smaller
lists in eval/wordlists/ are used, and every run says which (`WordLists.describe`).
"""
from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from eval.adapters import Instance

FALLBACK_DIR = Path(__file__).parent / "wordlists"
DATA_DIR = "perturbations"  # under the data root
MISSPELLINGS, DIALECT, NAMES = "correct_to_misspelling.json", "SAE_to_AAVE_mapping.json", "person_names.txt"
HELM_LISTS = "https://storage.googleapis.com/crfm-helm-public/source_datasets/augmentations"
# Where the judges' copy of each list comes from.
ORIGINS = {
    MISSPELLINGS: "the fork's src/helm/benchmark/augmentations/correct_to_misspelling.json",
    DIALECT: f"{HELM_LISTS}/dialect_perturbation/SAE_to_AAVE_mapping.json",
    NAMES: f"{HELM_LISTS}/person_name_perturbation/person_names.txt",
}

# (perturbation, what it measures) in HELM's order.
PERTURBATIONS = (("mild_mix", "robustness"), ("dialect", "fairness"), ("gender", "fairness"),
                 ("person_name", "fairness"))

MISSPELLING_PROB = 0.1
MAX_SPACES = 3
SOURCE_NAMES, TARGET_NAMES = "white_american", "black_american"

# Contractions HELM knows, as (contraction, expansion). mild_mix replaces an expansion followed by a space
# with its contraction; where two contractions share an expansion the later one wins ("is not" -> "isn't").
CONTRACTIONS = [
    ("ain't", "is not"), ("aren't", "are not"), ("can't", "cannot"), ("can't've", "cannot have"),
    ("could've", "could have"), ("couldn't", "could not"), ("didn't", "did not"), ("doesn't", "does not"),
    ("don't", "do not"), ("hadn't", "had not"), ("hasn't", "has not"), ("haven't", "have not"),
    ("he'd", "he would"), ("he'd've", "he would have"), ("he'll", "he will"), ("he's", "he is"),
    ("how'd", "how did"), ("how'd'y", "how do you"), ("how'll", "how will"), ("how's", "how is"),
    ("I'd", "I would"), ("I'll", "I will"), ("I'm", "I am"), ("I've", "I have"), ("i'd", "i would"),
    ("i'll", "i will"), ("i'm", "i am"), ("i've", "i have"), ("isn't", "is not"), ("it'd", "it would"),
    ("it'll", "it will"), ("it's", "it is"), ("ma'am", "madam"), ("might've", "might have"),
    ("mightn't", "might not"), ("must've", "must have"), ("mustn't", "must not"), ("needn't", "need not"),
    ("oughtn't", "ought not"), ("shan't", "shall not"), ("she'd", "she would"), ("she'll", "she will"),
    ("she's", "she is"), ("should've", "should have"), ("shouldn't", "should not"), ("that'd", "that would"),
    ("that's", "that is"), ("there'd", "there would"), ("there's", "there is"), ("they'd", "they would"),
    ("they'll", "they will"), ("they're", "they are"), ("they've", "they have"), ("wasn't", "was not"),
    ("we'd", "we would"), ("we'll", "we will"), ("we're", "we are"), ("we've", "we have"),
    ("weren't", "were not"), ("what're", "what are"), ("what's", "what is"), ("when's", "when is"),
    ("where'd", "where did"), ("where's", "where is"), ("where've", "where have"), ("who'll", "who will"),
    ("who's", "who is"), ("who've", "who have"), ("why's", "why is"), ("won't", "will not"),
    ("would've", "would have"), ("wouldn't", "would not"), ("you'd", "you would"),
    ("you'd've", "you would have"), ("you'll", "you will"), ("you're", "you are"), ("you've", "you have"),
]
# Male -> female pronouns, applied one pair after the other ("his" twice: the second pair finds none left).
PRONOUNS = [("he", "she"), ("him", "her"), ("his", "her"), ("his", "hers"), ("himself", "herself")]


def match_case(source: str, target: str) -> str:
    """`target` in the case of `source`: all lower, all upper, capitalised, or as it is."""
    if all(c.islower() for c in source):
        return target.lower()
    if all(c.isupper() for c in source):
        return target.upper()
    if source and source[0].isupper():
        return target.capitalize()
    return target


# ---- word lists ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Names:
    """First names by race and by gender, from a `<name>,<name type>[,<category>,<value>]*` file."""

    by_race: dict[str, list[str]]
    by_gender: dict[str, list[str]]

    def gender(self, name: str) -> str | None:
        return next((g for g in ("female", "male", "neutral") if name in self.by_gender.get(g, [])), None)


@dataclass(frozen=True)
class WordLists:
    misspellings: dict[str, list[str]]
    dialect: dict[str, list[str]]
    names: Names
    sources: dict[str, str]  # file name -> the path it was read from

    def describe(self) -> str:
        """Which lists the perturbed copies were made with, for the run's output."""
        used = [f"{name} {'(project fallback)' if Path(path).parent == FALLBACK_DIR else 'from ' + path}"
                for name, path in self.sources.items()]
        return "perturbation word lists: " + ", ".join(used)


def read_names(path: Path) -> Names:
    table: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        name, *rest = line.split(",")
        if len(rest) < 1 or len(rest) % 2 != 1:
            raise ValueError(f"{path}:{number}: expected <name>,<name type>[,<category>,<value>]*, got {line!r}")
        name_type, pairs = rest[0], rest[1:]
        if name_type == "first_name":  # the judges' fairness copy swaps first names only
            for category, value in zip(pairs[::2], pairs[1::2]):
                table[category][value].append(name.strip().lower())
    return Names(by_race=dict(table["race"]), by_gender=dict(table["gender"]))


def read_mapping(path: Path) -> dict[str, list[str]]:
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from None
    if not isinstance(mapping, dict) or not all(
        isinstance(v, list) and v and all(isinstance(w, str) for w in v) for v in mapping.values()
    ):
        raise ValueError(f"{path}: expected a JSON object of word -> non-empty list of words")
    return mapping


def word_list_path(root: Path | None, name: str) -> Path:
    """The judges' list under `<root>/perturbations/` when it is there, else the project's own."""
    if root is not None and (root / DATA_DIR / name).is_file():
        return root / DATA_DIR / name
    return FALLBACK_DIR / name


def word_list_status(root: Path) -> str:
    """Where the judges' word lists go under a data root, and which are there (`python -m eval data`)."""
    lines = [f"perturbation word lists (robustness/fairness copies) go in {root / DATA_DIR}/:"]
    for name, origin in ORIGINS.items():
        state = "present" if (root / DATA_DIR / name).is_file() else "absent, the project fallback is used"
        lines.append(f"  {name}: {state} (judges' copy: {origin})")
    return "\n".join(lines)


@lru_cache(maxsize=4)
def load_word_lists(root: Path | None) -> WordLists:
    paths = {name: word_list_path(root, name) for name in (MISSPELLINGS, DIALECT, NAMES)}
    return WordLists(
        misspellings=read_mapping(paths[MISSPELLINGS]),
        dialect=read_mapping(paths[DIALECT]),
        names=read_names(paths[NAMES]),
        sources={name: str(path) for name, path in paths.items()},
    )


# ---- the perturbations --------------------------------------------------------------------------------


def _alternatives(words) -> str:
    return "|".join(re.escape(w) for w in words)


class Canonical:
    """HELM's four canonical perturbations over one set of word lists (patterns compiled once)."""

    def __init__(self, lists: WordLists):
        self.lists = lists
        contract: dict[str, str] = {}
        for contraction, expansion in CONTRACTIONS:
            contract[expansion] = contraction
        self.contract = contract
        # An expansion is contracted only when a space follows it (not at the end of a sentence).
        self.expansion_pattern = re.compile(rf"\b({'|'.join(contract)})\b ", re.IGNORECASE | re.DOTALL)
        # The misspelt words are matched as they are (mild_mix lower-cases first), plain regex alternatives.
        self.misspelling_pattern = re.compile(rf"\b({'|'.join(lists.misspellings)})\b")
        # Dialect words need a neighbour on each side that is neither a word character nor a hyphen.
        self.dialect_pattern = re.compile(rf"[^\w-]({_alternatives(lists.dialect)})[^\w-]", re.IGNORECASE)
        self.pronoun_patterns = [(re.compile(rf"[^\w]({w})[^\w]", re.IGNORECASE), t) for w, t in PRONOUNS]
        self.source_names = lists.names.by_race.get(SOURCE_NAMES, [])
        self.target_names = lists.names.by_race.get(TARGET_NAMES, [])

    # -- robustness

    def mild_mix(self, text: str, rng: random.Random) -> str:
        text = text.lower()
        text = self.expansion_pattern.sub(self._contracted, text)
        text = self.misspelling_pattern.sub(lambda m: self._misspelt(m.group(1), rng), text)
        return re.sub(r" +", lambda _m: " " * rng.randint(1, MAX_SPACES), text)

    def _contracted(self, match: re.Match[str]) -> str:
        words = match.group(1)
        contraction = self.contract.get(words, self.contract.get(words.lower()))
        return match_case(words, contraction) + " "

    def _misspelt(self, word: str, rng: random.Random) -> str:
        if rng.random() < MISSPELLING_PROB:
            return match_case(word, str(rng.choice(self.lists.misspellings[word])))
        return word

    # -- fairness

    def dialect(self, text: str, rng: random.Random) -> str:
        def swap(m: re.Match[str]) -> str:
            word = m.group(1)
            rng.uniform(0, 1)  # HELM draws against its probability (1.0 for the judges) before choosing
            new = match_case(word, rng.choice(self.lists.dialect[word.lower()]))
            return m.group(0).replace(word, new)

        return self.dialect_pattern.sub(swap, text)

    def gender(self, text: str, rng: random.Random) -> str:
        for pattern, target in self.pronoun_patterns:
            def swap(m: re.Match[str], target: str = target) -> str:
                rng.uniform(0, 1)  # as in dialect: the draw happens, probability 1 always substitutes
                return m.group(0).replace(m.group(1), match_case(m.group(1), target))

            text = pattern.sub(swap, text)
        return text

    def person_names(self, texts: list[str], rng: random.Random) -> list[str]:
        """Swap first names in each text in turn, one substitute per name across all of them."""
        chosen: dict[str, str] = {}
        out = []
        for text in texts:
            tokens = re.split(r"([^\w])", text)
            for i, token in enumerate(tokens):
                lowered = token.lower()
                if lowered not in chosen and lowered in self.source_names:
                    rng.uniform(0, 1)  # probability 1: never skipped
                    name = self._substitute(lowered, rng)
                    if name:
                        chosen[lowered] = name
                if lowered in chosen:
                    tokens[i] = match_case(token, chosen[lowered])
            out.append("".join(tokens))
        return out

    def _substitute(self, name: str, rng: random.Random) -> str | None:
        """A target name of the same gender (any target name if the gender is unknown; none if no match)."""
        options = self.target_names
        gender = self.lists.names.gender(name)
        if gender:
            options = [n for n in self.target_names if n in self.lists.names.by_gender[gender]]
            if not options:
                return None
        return rng.choice(list(options))

    # -- one instance

    def apply(self, perturbation: str, instance_id: str, text: str, references: list[str]) -> tuple[str, list[str]]:
        """The perturbed input and references of one instance, drawn as HELM draws them."""
        rng = random.Random(instance_id)
        if perturbation == "mild_mix":
            return self.mild_mix(text, rng), references
        if perturbation == "person_name":
            *refs, new_text = self.person_names([*references, text], rng)
            return new_text, refs
        one: Callable[[str, random.Random], str] = {"dialect": self.dialect, "gender": self.gender}[perturbation]
        refs = [one(r, rng) for r in references]  # references first, from the same generator
        return one(text, rng), refs


@lru_cache(maxsize=4)
def canonical(root: Path | None) -> Canonical:
    return Canonical(load_word_lists(root))


def references(inst: Instance) -> list[str]:
    """What HELM calls the instance's references: the options, or the gold outputs of a generation task."""
    return list(inst.choices) if inst.is_mc else [str(inst.output), *inst.golds]


def perturbed(inst: Instance, perturbation: str, perturb: Canonical) -> Instance | None:
    """The instance's copy under a perturbation, or None where its input did not change (HELM drops those)."""
    text, refs = perturb.apply(perturbation, inst.id, inst.input, references(inst))
    if text == inst.input:
        return None
    if inst.is_mc:
        return replace(inst, input=text, choices=tuple(refs))
    return replace(inst, input=text, output=refs[0], golds=tuple(refs[1:]))
