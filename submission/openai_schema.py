"""The OpenAI-compatible API's requests as pydantic models (the legacy completions API, chat
completions, and vLLM's /tokenize and /detokenize shapes), with OpenAI's defaults.

Limits that depend on the loaded model (context, vocabulary, top log-probabilities) are checked by
openai_api.py against the engine. Unknown keys are ignored, as OpenAI-compatible servers do.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from submission.api import MAX_PROMPT_CHARS

MAX_PROMPTS = 1024  # prompts in one completions request
MAX_CHOICES = 16  # `n`


class Sampling(BaseModel):
    """What completions and chat completions share."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None  # absent: the served model
    temperature: float = Field(1.0, ge=0.0, le=100.0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: int = Field(-1, ge=-1, description="vLLM's extension; -1 or 0 disable top-k filtering")
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: str | list[str] | None = Field(None)
    ignore_eos: bool = Field(False, description="vLLM's extension: generate past end-of-sequence, to max_tokens")
    stream: Literal[False] = False  # streaming is not served


class CompletionRequest(Sampling):
    # Text, texts, token ids, or lists of token ids; one choice set per prompt.
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0, description="null: up to the context")
    echo: bool = False
    logprobs: int | None = Field(None, ge=0)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str = Field(max_length=64)
    content: str | list[dict] | None = None  # a list holds {"type": "text", "text": ...} parts


class ChatRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=0, description="null: up to the context")
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0)


class VllmTokenizeRequest(BaseModel):
    """vLLM's /tokenize body; the competition's own shape has `text` instead of `prompt`."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    add_special_tokens: bool = True
    model: str | None = None


class VllmTokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    tokens: list[int] = Field(max_length=MAX_PROMPT_CHARS)
    model: str | None = None


class DetokenizeResponse(BaseModel):
    prompt: str

