"""HELM's prompt adapters, rebuilt: how one scenario instance becomes the exact prompt text the judges sent.

HELM assembles a prompt from blocks: an optional instructions block, k in-context ("train") blocks and
the evaluation block, joined by the instance prefix (a newline, so blocks end up separated by a blank
line). Each block is `input_prefix + input + input_suffix`, then for multiple-choice-joint the options
`A. …` one per line, then `output_prefix + output + output_suffix`; the evaluation block stops at the
output prefix with its trailing whitespace removed (`Answer:`). See challenge.md §3.
"""
from __future__ import annotations

import random
import string
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import cycle


@dataclass(frozen=True)
class Format:
    """The text around instances (HELM's AdapterSpec, the fields that shape the prompt)."""

    instructions: str = ""
    input_prefix: str = "Question: "
    input_suffix: str = "\n"
    output_prefix: str = "Answer: "
    output_suffix: str = "\n"
    instance_prefix: str = "\n"


def instructions_line(text: str) -> str:
    """HELM's common specs end a non-empty instruction with a newline (giving the blank line after it)."""
    return text + "\n" if text else ""


@dataclass(frozen=True)
class Instance:
    """One example: an input, the options for multiple choice (empty for generation), and the gold output
    (for multiple choice, the index of the correct option)."""

    input: str
    output: str | int
    choices: tuple[str, ...] = ()
    golds: tuple[str, ...] = field(default=())  # other accepted outputs (generation tasks)
    id: str = ""  # HELM's instance id, `id<k>` (k: position in the scenario); it seeds the perturbations

    @property
    def is_mc(self) -> bool:
        return bool(self.choices)

    def target(self) -> str:
        """What follows the output prefix in an in-context block, and what exact match compares against."""
        if self.is_mc:
            return string.ascii_uppercase[int(self.output)]
        return str(self.output)

    def label(self) -> str:
        """HELM groups in-context candidates by the text of their correct reference."""
        return self.choices[int(self.output)] if self.is_mc else str(self.output)


def block(fmt: Format, inst: Instance, with_output: bool) -> str:
    text = fmt.input_prefix + inst.input + fmt.input_suffix
    for letter, choice in zip(string.ascii_uppercase, inst.choices):
        text += f"{letter}. {choice}\n"
    if with_output:
        return text + fmt.output_prefix + inst.target() + fmt.output_suffix
    return text + fmt.output_prefix.rstrip()


@dataclass(frozen=True)
class Prompt:
    """A prompt kept in its blocks, so a client can drop in-context blocks to fit a context window the
    way HELM does (the last block first)."""

    instructions: str
    train: tuple[str, ...]
    eval: str
    instance_prefix: str

    @property
    def text(self) -> str:
        return self.with_train(len(self.train))

    def with_train(self, k: int) -> str:
        blocks = ([self.instructions] if self.instructions else []) + list(self.train[:k]) + [self.eval]
        return self.instance_prefix.join(blocks)


def build_prompt(fmt: Format, train: list[Instance], inst: Instance) -> Prompt:
    return Prompt(
        instructions=fmt.instructions,
        train=tuple(block(fmt, t, with_output=True) for t in train),
        eval=block(fmt, inst, with_output=False),
        instance_prefix=fmt.instance_prefix,
    )


def sample_train(pool: list[Instance], k: int, seed: int = 0) -> list[Instance]:
    """HELM's choice of in-context examples: labels ordered by how many candidates carry them (ties
    shuffled), then one candidate per label in turn, drawn at random, until k are chosen."""
    rng = random.Random(seed)
    by_label: dict[str, list[Instance]] = defaultdict(list)
    for inst in pool:
        by_label[inst.label()].append(inst)
    by_count: dict[int, list[str]] = defaultdict(list)
    for label, members in sorted(by_label.items()):
        by_count[len(members)].append(label)
    ordered: list[str] = []
    for count in sorted(by_count, reverse=True):
        labels = by_count[count]
        rng.shuffle(labels)
        ordered.extend(labels)
    chosen: list[Instance] = []
    remaining = min(k, len(pool))
    for label in cycle(ordered):
        if remaining == 0:
            break
        members = by_label[label]
        if members:
            chosen.append(members.pop(rng.randrange(len(members))))
            remaining -= 1
    return chosen
