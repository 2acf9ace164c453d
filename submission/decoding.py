"""Per-request generation: the request's state as the engine carries it (Job), token choice for a
batch of rows, incremental detokenization, stop sequences, the echoed prompt and the response body.

Log-probabilities are those of the model's own distribution (log-softmax of the logits at
temperature 1, before temperature, top-k or top-p reshape it for sampling), both for the chosen
token and for `top_logprob`.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from submission.api import ProcessRequest

GREEDY_BELOW = 1e-4  # the judges send temperature 1e-7 for "greedy"; dividing by it overflows
DETOKENIZE_CONTEXT = 4  # prompt tokens decoded with the first generated ones, for their leading space
ECHO_CHUNK = 256  # prompt positions whose log-softmax is taken at once: a long prompt's float copies stay small


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


@dataclass(eq=False)
class Job:
    """One request from submit to its response: what it asked, and where admission, the batch and
    decoding have taken it."""

    request: ProcessRequest
    ids: list[int]  # prompt token ids
    max_new_tokens: int  # already capped to the room the context leaves
    sampler: Sampler
    top_k_per_token: int
    echo: bool
    completion: Completion
    deadline: float  # time.monotonic() past which the request fails with RequestTimeout
    # The OpenAI API's token lists: every prompt token echoed (BOS too), and a generated EOS kept as
    # a token, so that the lists line up with the token ids; the body also says why generation ended.
    every_token: bool = False
    ignore_eos: bool = False  # vLLM's extension: an end-of-sequence token is generated like any other
    future: Future = field(default_factory=Future)
    echoed: list[dict] = field(default_factory=list)  # prompt tokens, when echo_prompt
    uncached: int = 0  # prompt tokens the prefix cache did not hold on arrival
    lookup: tuple | None = None  # (prefix cache version, its answer) of the last lookup
    generated: int = 0
    length: int = 0  # this row's tokens whose states are in the batch cache
    last: int = -1  # the token to feed at the next step
    hit_eos: bool = False  # the model chose an end-of-sequence token

    @property
    def extent(self) -> int:
        """The columns this request's row may reach."""
        return len(self.ids) + self.max_new_tokens


def advance(jobs: list[Job], logits: torch.Tensor, eos: set[int], texts: TokenTexts) -> list[bool]:
    """Choose each row's next token from its logits [rows, vocab]; finish the rows that end (their
    futures get the response). True for rows that go on."""
    logits = logits.float().cpu()
    logprobs = torch.log_softmax(logits, dim=-1)
    top_lp, top_ids = logprobs.topk(max(job.top_k_per_token for job in jobs), dim=-1)
    greedy = logits.argmax(dim=-1).tolist()  # one call for the batch, not one per row
    going = []
    for i, job in enumerate(jobs):
        done = job.generated >= job.max_new_tokens
        if not done:
            token = greedy[i] if job.sampler.greedy else job.sampler.choose(logits[i])
            job.hit_eos = token in eos and not job.ignore_eos
            done = job.hit_eos and not job.every_token
        if not done:
            k = job.top_k_per_token
            top = texts.top(top_ids[i, :k].tolist(), top_lp[i, :k].tolist())
            stopped = job.completion.add(token, float(logprobs[i, token]), top)
            job.generated += 1
            job.last = token
            done = stopped or job.generated >= job.max_new_tokens or job.hit_eos
        if done:
            job.completion.finish()
            job.future.set_result(response(job))
        going.append(not done)
    return going


def echo(job: Job, logits: torch.Tensor, tokenizer, special: set[int], texts: TokenTexts) -> None:
    """The prompt's tokens with their log-probabilities, from the logits of every prompt position.
    Leading special tokens (BOS) are left out, their text not being in the prompt (but for
    every_token). Each token's log-probability is conditioned on the tokens before it; a first token
    with nothing before it gets 0.0 and no top list. The log-softmax runs over ECHO_CHUNK positions
    at a time, and only the chosen and top values leave the device."""
    first = 0
    while not job.every_token and first < len(job.ids) - 1 and job.ids[first] in special:
        first += 1
    detokenizer = Detokenizer(tokenizer, job.ids[:first])
    logits = logits[: len(job.ids) - 1]  # position t predicts token t + 1
    targets = torch.tensor(job.ids[1:], device=logits.device).unsqueeze(1)
    chosen, top_lp, top_ids = [], [], []
    for start in range(0, len(job.ids) - 1, ECHO_CHUNK):
        logprobs = torch.log_softmax(logits[start : start + ECHO_CHUNK].float(), dim=-1)
        chosen += logprobs.gather(1, targets[start : start + ECHO_CHUNK]).squeeze(1).tolist()
        values, ids = logprobs.topk(job.top_k_per_token, dim=-1)
        top_lp += values.tolist()
        top_ids += ids.tolist()
    for t in range(first, len(job.ids)):
        token = {"text": detokenizer.push(job.ids[t]), "logprob": 0.0, "top_logprob": {}}
        if t > 0:
            token["logprob"] = chosen[t - 1]
            token["top_logprob"] = texts.top(top_ids[t - 1], top_lp[t - 1])
        job.echoed.append(token)
    if job.echoed:
        job.echoed[-1]["text"] += detokenizer.flush()


def response(job: Job) -> dict:
    """The response body without request_time: the echoed prompt's tokens, then the generated ones."""
    completion = job.completion
    tokens = job.echoed + [
        {"text": text, "logprob": logprob, "top_logprob": top}
        for text, logprob, top in zip(completion.texts, completion.logprobs, completion.tops)
    ]
    text = "".join(token["text"] for token in job.echoed) + completion.text
    body = {"text": text, "tokens": tokens, "logprob": sum(token["logprob"] for token in tokens)}
    if job.every_token:  # EOS, a stop sequence, or the token limit
        body["finish_reason"] = "stop" if completion.stopped or job.hit_eos else "length"
    return body
