"""Deterministic perturbations behind the "EM (Robustness)" and "EM (Fairness)" metrics.

HELM scores a model a second and third time on perturbed copies of each evaluation instance (the
in-context examples stay clean): robustness perturbations change the surface (typos, lower case),
fairness perturbations change who the text is about or how it is written (dialect, pronouns, first
names). These are this project's own small versions of the same ideas. Every perturbation is seeded
by the text it perturbs, so a copy is the same on every run and machine.
"""
from __future__ import annotations

import hashlib
import random
import re

# Neighbouring keys on a QWERTY keyboard: a typo swaps a letter for one of them.
KEY_NEIGHBOURS = {
    "a": "qwsz", "b": "vghn", "c": "xdfv", "d": "serfcx", "e": "wsdr", "f": "drtgvc", "g": "ftyhbv",
    "h": "gyujnb", "i": "ujko", "j": "huikmn", "k": "jiolm", "l": "kop", "m": "njk", "n": "bhjm",
    "o": "iklp", "p": "ol", "q": "wa", "r": "edft", "s": "awedxz", "t": "rfgy", "u": "yhji",
    "v": "cfgb", "w": "qase", "x": "zsdc", "y": "tghu", "z": "asx",
}
TYPO_RATE = 0.05

# A few common spellings of African-American English, in the spirit of HELM's dialect perturbation.
DIALECT = {
    "the": "da", "this": "dis", "that": "dat", "these": "dese", "those": "dose", "they": "dey",
    "them": "dem", "their": "they", "with": "wit", "going to": "gonna", "want to": "wanna",
    "nothing": "nothin", "something": "somethin", "about": "bout", "because": "cuz",
}
PRONOUNS = {
    "he": "she", "she": "he", "him": "her", "his": "her", "her": "his", "himself": "herself",
    "herself": "himself", "man": "woman", "woman": "man", "men": "women", "women": "men",
    "boy": "girl", "girl": "boy", "father": "mother", "mother": "father", "son": "daughter",
    "daughter": "son", "brother": "sister", "sister": "brother", "husband": "wife", "wife": "husband",
}
# First names swapped between two lists of equal length (position i maps to position i).
NAMES_A = ["John", "Michael", "David", "James", "Robert", "Mary", "Susan", "Linda", "Emily", "Sarah"]
NAMES_B = ["Jamal", "Darnell", "Tyrone", "Malik", "DeShawn", "Aaliyah", "Latoya", "Imani", "Keisha", "Ebony"]
NAMES = {**dict(zip(NAMES_A, NAMES_B)), **dict(zip(NAMES_B, NAMES_A))}


def _rng(text: str, salt: str) -> random.Random:
    digest = hashlib.sha256(f"{salt}:{text}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def typos(text: str) -> str:
    rng = _rng(text, "typos")
    out = []
    for ch in text:
        near = KEY_NEIGHBOURS.get(ch.lower())
        if near and rng.random() < TYPO_RATE:
            swap = rng.choice(near)
            ch = swap.upper() if ch.isupper() else swap
        out.append(ch)
    return "".join(out)


def lowercase(text: str) -> str:
    return text.lower()


def _swap_words(text: str, table: dict[str, str], case_sensitive: bool = False) -> str:
    keys = sorted(table, key=len, reverse=True)
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, keys)) + r")\b", 0 if case_sensitive else re.IGNORECASE)

    def replace(match: re.Match[str]) -> str:
        word = match.group(0)
        new = table[word if case_sensitive else word.lower()]
        return new[0].upper() + new[1:] if word[0].isupper() else new

    return pattern.sub(replace, text)


def dialect(text: str) -> str:
    return _swap_words(text, DIALECT)


def pronouns(text: str) -> str:
    return _swap_words(text, PRONOUNS)


def names(text: str) -> str:
    return _swap_words(text, NAMES, case_sensitive=True)


def robustness(text: str) -> str:
    """Typos, then lower case (HELM's robustness copy also mixes several surface perturbations)."""
    return lowercase(typos(text))


def fairness(text: str) -> str:
    """Dialect, then gender (pronouns and gendered nouns), then first names."""
    return names(pronouns(dialect(text)))


PERTURBATIONS = {"robustness": robustness, "fairness": fairness}
