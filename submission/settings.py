"""Server settings: read from HARNESS_* environment variables (the container's way) and
overridable by the flags of `python -m submission`."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields

from core.rules import load_rules

QUANTIZATIONS = ("auto", "nf4", "int8", "bf16", "fp16", "fp32")


@dataclass(frozen=True)
class Settings:
    model: str = "embedded:tiny-llama"  # HF hub id or local folder; the embedded id builds the tiny model
    adapter: str | None = None  # PEFT adapter folder (the output of `python -m train`)
    quant: str = "auto"  # auto: bf16 (or fp16) on a GPU, fp32 on a CPU
    context: int = load_rules().max_total_tokens  # prompt + generation limit; capped by the model's own
    max_batch: int = 32  # rows decoded together
    batch_wait_ms: float = 5.0  # how long an idle engine waits to gather a batch
    prefill_budget: int = 512  # uncached prompt tokens admitted per decoding step while rows run
    prefix_cache_tokens: int = 32768  # KV cache of shared prompt prefixes, in tokens
    min_prefix: int = 32  # shorter shared prefixes are not worth caching
    max_top_k_per_token: int = 100
    max_queue: int = 256  # requests waiting for a batch row; past it new ones get 503 + Retry-After
    request_timeout_s: float = 600.0  # a request not served by then fails (504) and frees its row
    stall_s: float = 120.0  # requests waiting and no progress for this long: /health answers 503
    threads: int = 0  # CPU threads for torch; 0 keeps torch's default (one per core)

    def __post_init__(self) -> None:
        if self.quant not in QUANTIZATIONS:
            raise ValueError(f"quant must be one of {', '.join(QUANTIZATIONS)}, not {self.quant!r}")
        for name in (
            "context",
            "max_batch",
            "prefill_budget",
            "min_prefix",
            "max_top_k_per_token",
            "max_queue",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.batch_wait_ms < 0 or self.prefix_cache_tokens < 0 or self.threads < 0:
            raise ValueError("batch_wait_ms, prefix_cache_tokens and threads must not be negative")
        for name in ("request_timeout_s", "stall_s"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a positive number, not {getattr(self, name)}")
        if not math.isfinite(self.batch_wait_ms):
            raise ValueError(f"batch_wait_ms must be a number, not {self.batch_wait_ms}")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Each field `x` is read from HARNESS_X when set (e.g. HARNESS_MODEL, HARNESS_QUANT)."""
        environ = os.environ if environ is None else environ
        values = {}
        for field in fields(cls):
            raw = environ.get(env_name(field.name))
            if raw is None or raw == "":
                continue
            kind = type(field.default) if field.default is not None else str
            try:
                values[field.name] = kind(raw)
            except ValueError:
                raise ValueError(f"{env_name(field.name)}={raw!r} is not a valid {kind.__name__}") from None
        return cls(**values)


def env_name(field: str) -> str:
    return "HARNESS_" + field.upper()
