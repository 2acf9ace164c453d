"""Per-request text handling: incremental detokenization, stop sequences, token choice and the
response's token list.

Log-probabilities are those of the model's own distribution (log-softmax of the logits at
temperature 1, before temperature, top-k or top-p reshape it for sampling), both for the chosen
token and for `top_logprob`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

GREEDY_BELOW = 1e-4  # the judges send temperature 1e-7 for "greedy"; dividing by it overflows
DETOKENIZE_CONTEXT = 4  # prompt tokens decoded with the first generated ones, for their leading space


def decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


class Detokenizer:
    """Turns token ids into text pieces one token at a time; the pieces join to the decoded text.

    A token ending inside a multi-byte character yields "" and its bytes come out with the token
    that completes the character. Decoding a window that starts a few tokens back keeps
    tokenizers that drop a leading space at the start of a text (SentencePiece) right.
    """

    def __init__(self, tokenizer, context: list[int]):
        self.tokenizer = tokenizer
        self.ids = list(context[-DETOKENIZE_CONTEXT:])
        self.start = 0  # the decoding window begins here
        self.read = len(self.ids)  # ids before this index have been emitted

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        done = decode(self.tokenizer, self.ids[self.start : self.read])
        now = decode(self.tokenizer, self.ids[self.start :])
        if len(now) > len(done) and not now.endswith("\ufffd"):
            self.start, self.read = self.read, len(self.ids)
            return now[len(done) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the end)."""
        done = decode(self.tokenizer, self.ids[self.start : self.read])
        now = decode(self.tokenizer, self.ids[self.start :])
        self.start = self.read = len(self.ids)
        return now[len(done) :]


@dataclass
class Completion:
    """The growing answer of one request: token pieces, their log-probabilities, stop handling."""

    detokenizer: Detokenizer
    stop_sequences: list[str]
    texts: list[str] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    tops: list[dict[str, float]] = field(default_factory=list)
    text: str = ""
    stopped: bool = False  # a stop sequence was found; text is cut where it begins

    def add(self, token_id: int, logprob: float, top: dict[str, float]) -> bool:
        """Append a generated token; True when a stop sequence now ends the completion."""
        piece = self.detokenizer.push(token_id)
        self.texts.append(piece)
        self.logprobs.append(logprob)
        self.tops.append(top)
        return self._extend(piece)

    def finish(self) -> None:
        """End of generation (EOS, token limit): emit held-back bytes, then look for stops once more."""
        if self.texts and not self.stopped:
            piece = self.detokenizer.flush()
            self.texts[-1] += piece
            self._extend(piece)

    def _extend(self, piece: str) -> bool:
        if not piece:
            return False
        old = len(self.text)
        self.text += piece
        longest = max((len(s) for s in self.stop_sequences), default=0)
        start = max(0, old - longest + 1)  # earlier text was already searched
        hits = [i for i in (self.text.find(s, start) for s in self.stop_sequences) if i >= 0]
        if hits:
            self._cut(min(hits))
        return self.stopped

    def _cut(self, at: int) -> None:
        """Keep the tokens that begin before `at`; trim the last of them to end there."""
        kept, begin = 0, 0
        for i, piece in enumerate(self.texts):
            if begin >= at:
                break
            kept = i + 1
            if begin + len(piece) > at:
                self.texts[i] = piece[: at - begin]
            begin += len(piece)
        del self.texts[kept:], self.logprobs[kept:], self.tops[kept:]
        self.text = self.text[:at]
        self.stopped = True


@dataclass
class Sampler:
    """How one request picks its next token: greedy, or sampling with its own seeded generator
    (so a seeded answer does not depend on which other requests share the batch)."""

    temperature: float
    top_k: int
    top_p: float
    seed: int | None

    def __post_init__(self) -> None:
        self.greedy = self.temperature <= GREEDY_BELOW
        if self.greedy:
            return
        warpers = [TemperatureLogitsWarper(self.temperature)]
        if self.top_k > 0:
            warpers.append(TopKLogitsWarper(self.top_k))
        if self.top_p < 1.0:
            warpers.append(TopPLogitsWarper(self.top_p))
        self.warpers = LogitsProcessorList(warpers)
        self.generator = torch.Generator()
        if self.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(self.seed)

    def choose(self, logits: torch.Tensor) -> int:
        """A sampled next token from one row of float32 logits (on the CPU). Greedy requests
        need no sampler call: the engine takes one argmax over the whole batch."""
        scores = self.warpers(None, logits.unsqueeze(0))
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


class TokenTexts:
    """`top_logprob` keys: each token decoded alone; where two tokens decode alike (bytes of one
    character, or text without the raw token's marks), the raw token string keeps keys apart."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.texts: dict[int, str] = {}

    def top(self, ids: list[int], logprobs: list[float]) -> dict[str, float]:
        out: dict[str, float] = {}
        for token_id, logprob in zip(ids, logprobs):
            key = self.text(token_id)
            if key in out:
                key = self.tokenizer.convert_ids_to_tokens(token_id) or f"<{token_id}>"
            if key in out:
                key = f"<{token_id}>"
            out[key] = logprob
        return out

    def text(self, token_id: int) -> str:
        if token_id not in self.texts:
            self.texts[token_id] = self.tokenizer.decode([token_id], clean_up_tokenization_spaces=False)
        return self.texts[token_id]
