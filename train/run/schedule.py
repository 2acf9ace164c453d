"""Learning-rate schedule as a function of progress in [0, 1], not of a step count.

Progress is the share of the training window used (or of max_steps), so under a time budget the
rate reaches its floor exactly when the watchdog asks training to stop.
"""
from __future__ import annotations

import math


def lr_factor(progress: float, warmup_frac: float, min_ratio: float, kind: str = "cosine") -> float:
    """Multiplier of the peak rate: linear warmup to 1 at `warmup_frac`, then decay to `min_ratio` at 1."""
    p = min(max(progress, 0.0), 1.0)
    if p < warmup_frac:
        return p / warmup_frac
    if kind == "constant":
        return 1.0
    rest = (p - warmup_frac) / (1.0 - warmup_frac)
    decay = 1.0 - rest if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * rest))
    return min_ratio + (1.0 - min_ratio) * decay
