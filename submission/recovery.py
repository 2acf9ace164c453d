"""How the worker comes back from faults, and how it tells when it cannot.

Out of memory: any out-of-memory-class error (torch's OutOfMemoryError, and the RuntimeErrors libraries
raise for the same cause, e.g. cuBLAS's CUBLAS_STATUS_ALLOC_FAILED) makes the engine shed: the batch
bound drops to a share of what was in use. The bound then climbs back: after GROW_AFTER_STEPS decoding
steps without another such error it doubles, up to the bound planned at start, whenever the device has
room for the larger batch now (twice over: a rebuild copies it). A bound only ever lowered would leave
the server decoding a few rows at a time for the rest of its life after a burst of long prompts.

Progress: the worker records each iteration that served its requests without an error. /health answers
503 when requests are waiting and no iteration has succeeded for stall_s seconds (a step that hangs, or
an error on every step), naming why; time spent idle with nothing to do is not a stall.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

GROW_AFTER_STEPS = 32  # decoding steps without running out of memory before the batch bound doubles
# What libraries put in the RuntimeErrors they raise when an allocation fails (CUDA, cuBLAS, cuDNN, the CPU).
OOM_MARKERS = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED", "can't allocate memory")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` means the device ran out of memory (the engine sheds instead of failing)."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and any(marker in str(error) for marker in OOM_MARKERS)


def available_bytes(device: torch.device) -> int:
    """Memory `device` could give now without disturbing the running server: on CUDA the device's free
    memory plus the caching allocator's free blocks; for a CPU, the kernel's MemAvailable."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise OSError("/proc/meminfo has no MemAvailable line")


class Regrowth:
    """The batch bound's climb back after shedding: doubled every GROW_AFTER_STEPS calm steps, up to `planned`."""

    def __init__(self, planned: int, kv_bytes_per_token: int):
        self.planned, self.kv_bytes_per_token = planned, kv_bytes_per_token
        self.calm_steps = 0

    def shed(self) -> None:
        self.calm_steps = 0

    def next_bound(self, bound: int, device: torch.device) -> int:
        """After one more decoding step without running out of memory: the bound to use from now on."""
        self.calm_steps += 1
        if bound >= self.planned or self.calm_steps < GROW_AFTER_STEPS:
            return bound
        self.calm_steps = 0
        grown = min(self.planned, 2 * bound)
        if 2 * (grown - bound) * self.kv_bytes_per_token > available_bytes(device):
            return bound  # no room yet: try again after the next calm stretch
        return grown


class Progress:
    """When the worker last served its requests without an error, as /health reads it."""

    def __init__(self, stall_s: float):
        self.stall_s = stall_s
        self.at = time.monotonic()
        self.idle = True  # nothing held since the last success: waiting for work is no stall
        self.last_error = ""

    def woke(self) -> None:
        """A request arrived: an idle worker's clock starts now (a failing one's keeps running)."""
        if self.idle:
            self.at, self.idle = time.monotonic(), False

    def advanced(self, idle: bool) -> None:
        """An iteration served its requests; `idle`: nothing is held after it."""
        self.at, self.idle, self.last_error = time.monotonic(), idle, ""

    def failed(self, error: BaseException) -> None:
        self.last_error = f"{type(error).__name__}: {error}"

    def stalled(self, held: int) -> str | None:
        """Why the worker is not making progress, or None: with `held` requests in hand, nothing served
        for more than stall_s seconds."""
        quiet = time.monotonic() - self.at
        if not held or quiet <= self.stall_s:
            return None
        why = f"the engine's worker has made no progress for {quiet:.1f} s with {held} requests in hand"
        return why + (f" (last error: {self.last_error})" if self.last_error else " (a step may hang)")
