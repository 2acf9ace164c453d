"""The budget ledger: wall-clock time of every attempt of a run, by phase, kept in the run folder.

The clock starts when the process starts (model download, loading and data preparation count).
The ledger is rewritten atomically about once a second, so even a `kill -9` loses at most that
much, and `--resume` continues the same budget instead of restarting the clock. An attempt that
ended without recording how (kill -9, power loss) is marked "killed" by the next one.
"""
from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from train.run.durable import fsync_dir, write_aside
from train.run.ranks import launched


def process_start() -> float:
    """time.monotonic() value of the run's start (Linux /proc), else of now: this process's start,
    or its launcher's when torchrun's launcher (`accelerate launch`) started it, so that the
    launcher's own start-up counts too."""
    pid = str(os.getppid()) if launched() else "self"
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        started_ticks = int(stat[19])  # field 22: start time in clock ticks after boot
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        age = uptime - started_ticks / os.sysconf("SC_CLK_TCK")
        return time.monotonic() - max(age, 0.0)
    except (OSError, ValueError, IndexError):
        return time.monotonic()


def time_left(path: Path, started: float) -> tuple[float, float] | None:
    """For the run whose ledger is at `path`: the budget's seconds left now, and the longest time an
    earlier attempt took to start (interpreter, imports). None if there is no ledger. Read before
    torch is imported, to decide whether a resume can even start inside the budget."""
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    left = doc["budget_s"] - sum(a["seconds"] for a in doc["attempts"]) - (time.monotonic() - started)
    return left, max((a["phases"].get("startup", 0.0) for a in doc["attempts"]), default=0.0)


class Ledger:
    def __init__(self, path: Path | None, budget_s: float, started: float, resume: bool, world_size: int = 1) -> None:
        """`path` None: a ledger kept in memory only (another rank's, see `follower`)."""
        self.path = path
        self.started = started
        self._lock = threading.Lock()
        previous = json.loads(path.read_text()) if resume and path.exists() else {}
        if previous and abs(previous["budget_s"] - budget_s) > 1e-6:
            raise ValueError(
                f"this run's budget is {previous['budget_s']:.0f}s; a resumed run continues that budget "
                f"(leave --budget out or pass the same value), not {budget_s:.0f}s")
        self.budget_s = budget_s
        self.attempts: list[dict] = previous.get("attempts", [])
        for attempt in self.attempts:
            if attempt["end"] == "running":
                attempt["end"] = "killed"
        self.train_origin_s: float | None = previous.get("train_origin_s")
        self.current = {"started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                        "seconds": 0.0, "phases": {}, "end": "running", "world_size": world_size}
        self.attempts.append(self.current)
        self.used_before = sum(a["seconds"] for a in self.attempts[:-1])
        self._taken = self._written = 0  # snapshot numbers: an older snapshot never replaces a newer one
        self._replace_lock = threading.Lock()

    @classmethod
    def follower(cls, budget_s: float, started: float, left: float) -> Ledger:
        """Another rank's copy of rank 0's ledger: the same budget and time left, never written."""
        ledger = cls(None, budget_s, started, resume=False)
        ledger.used_before = budget_s - left - ledger.elapsed()
        return ledger

    def elapsed(self) -> float:
        """Seconds of this attempt so far."""
        return time.monotonic() - self.started

    def used(self) -> float:
        """Seconds of the budget used, all attempts together."""
        return self.used_before + self.elapsed()

    def left(self) -> float:
        return self.budget_s - self.used()

    def add(self, phase: str, seconds: float) -> None:
        with self._lock:
            phases = self.current["phases"]
            phases[phase] = phases.get(phase, 0.0) + seconds

    @contextmanager
    def phase(self, name: str):
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.add(name, time.monotonic() - t0)

    def mark_train_origin(self) -> None:
        """Remember (once per run) how much budget was used when training first began."""
        if self.train_origin_s is None:
            self.train_origin_s = self.used()

    def totals(self) -> dict[str, float]:
        """Seconds by phase over all attempts."""
        out: dict[str, float] = {}
        for attempt in self.attempts:
            for name, seconds in attempt["phases"].items():
                out[name] = out.get(name, 0.0) + seconds
        return out

    def flush(self, end: str | None = None) -> None:
        """Write the ledger (raises OSError if the disk refuses). The state is copied under the lock
        and written outside it, so a slow or hanging disk never blocks `add` in the training loop."""
        with self._lock:
            self.current["seconds"] = round(self.elapsed(), 3)
            if end:
                self.current["end"] = end
            text = json.dumps({"budget_s": self.budget_s, "train_origin_s": self.train_origin_s,
                               "attempts": self.attempts, "used_s": round(self.used(), 3)}, indent=1)
            self._taken += 1
            number = self._taken
        aside = write_aside(self.path, text)
        with self._replace_lock:
            try:
                if number > self._written:
                    os.replace(aside, self.path)
                    self._written = number
                    aside = None
            finally:
                if aside is not None:
                    aside.unlink(missing_ok=True)
        fsync_dir(self.path.parent)
