"""The competition's HTTP API as pydantic models (challenge.md §2).

Defaults are the challenge's; the judges' HELM client also sends num_return_sequences, top_p,
top_k_per_token and stop_sequences, and omits echo_prompt in its health check, so echo_prompt has
a default. Limits that depend on the loaded model (context length, vocabulary) are checked by
the app against the engine.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MAX_PROMPT_CHARS = 1_000_000
MAX_STOP_SEQUENCES = 64


class ProcessRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    num_samples: int = Field(1, ge=1, le=16)
    max_new_tokens: int = Field(50, ge=0)
    top_k: int = Field(200, ge=0, description="0 disables top-k filtering")
    temperature: float = Field(0.8, ge=0.0, le=100.0, allow_inf_nan=False)
    seed: int | None = Field(None, ge=0, lt=2**63)
    echo_prompt: bool | None = False
    # Keys the judges' client sends.
    num_return_sequences: int = Field(1, ge=1, le=16)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k_per_token: int = Field(1, ge=1)
    stop_sequences: list[str] | None = Field(None, max_length=MAX_STOP_SEQUENCES)


class Token(BaseModel):
    text: str
    logprob: float
    top_logprob: dict[str, float]


class ProcessResponse(BaseModel):
    text: str
    tokens: list[Token]
    logprob: float
    request_time: float


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: str = Field(max_length=MAX_PROMPT_CHARS)
    truncation: bool = True
    max_length: int = Field(2048, ge=1)


class TokenizeResponse(BaseModel):
    tokens: list[int]
    request_time: float


class DecodeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    tokens: list[int] = Field(max_length=MAX_PROMPT_CHARS)


class DecodeResponse(BaseModel):
    text: str
    request_time: float
