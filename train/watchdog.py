"""The budget watchdog: a thread apart from the training loop, so it fires even if a step hangs.

When the time left equals the measured cost of a final save plus the slowest recent step plus a
margin, it asks the loop to stop at the next step boundary (graceful). If the run is still going
when the deadline is nearly there, it ends the process itself (hard): the adapter published by
the last complete checkpoint is then the result. A first SIGINT/SIGTERM asks for the same graceful
stop (plus a checkpoint), a second forces a hard one at once.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from train.ledger import Ledger

EXIT_OK, EXIT_CRASH, EXIT_USAGE, EXIT_HARD_DEADLINE, EXIT_SIGNAL, EXIT_HARD_SIGNAL = 0, 1, 2, 3, 4, 5
HARD_STOP_LEAD_S = 0.5  # time the hard stop needs to write the summary and exit before the deadline
FLUSH_EVERY_S = 1.0


class Watchdog:
    def __init__(self, ledger: Ledger, margin_s: float, save_estimate_s: float,
                 on_hard_stop: Callable[[str, int], None], tick_s: float = 0.05) -> None:
        self.ledger = ledger
        self.margin_s = margin_s
        self.save_cost_s = save_estimate_s
        self.step_time_s = 0.0
        self.on_hard_stop = on_hard_stop
        self.tick_s = tick_s
        self.stop = threading.Event()
        self.reason: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="budget-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finish(self) -> None:
        """The run is over: stop watching (the caller writes the last ledger entry)."""
        self._done.set()
        self._thread.join(timeout=1.0)

    def stop_lead_s(self) -> float:
        """How long before the deadline training must stop to leave room for the final save."""
        return 1.5 * self.save_cost_s + self.step_time_s + self.margin_s

    def note_step(self, seconds: float) -> None:
        # Rises at once with a slow step, decays slowly: the next step may be as slow.
        self.step_time_s = max(seconds, 0.9 * self.step_time_s)

    def note_save(self, seconds: float) -> None:
        self.save_cost_s = seconds

    def request_stop(self, reason: str) -> None:
        if not self.stop.is_set():
            self.reason = reason
            self.stop.set()

    def _watch(self) -> None:
        last_flush = 0.0
        while not self._done.wait(self.tick_s):
            left = self.ledger.left()
            if left <= self.stop_lead_s():
                self.request_stop("budget")
            if left <= HARD_STOP_LEAD_S:
                self.on_hard_stop("deadline", EXIT_HARD_DEADLINE)
                return
            if time.monotonic() - last_flush >= FLUSH_EVERY_S:
                self.ledger.flush()
                last_flush = time.monotonic()


class SignalRouter:
    """SIGINT/SIGTERM read by a thread of their own (sigwait), so they act even while the main
    thread is inside a long native call. Start it before any other thread exists (native threads
    inherit the blocked mask only if created after). Until a run attaches its handlers, a signal
    ends the process at once."""

    def __init__(self) -> None:
        self.graceful: Callable[[], None] | None = None
        self.hard: Callable[[], None] | None = None

    def start(self) -> None:
        signals = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)

        def wait() -> None:
            signal.sigwait(signals)
            if self.graceful is None or self.hard is None:
                print("\ninterrupted before training started", file=sys.stderr, flush=True)
                os._exit(EXIT_SIGNAL)
            print("\nstop requested: finishing the current step, then saving (signal again to stop at once)",
                  file=sys.stderr, flush=True)
            self.graceful()
            signal.sigwait(signals)
            self.hard()

        threading.Thread(target=wait, name="signal-listener", daemon=True).start()
