"""The budget watchdog: a thread apart from the training loop, so it fires even if a step hangs.

When the time left equals the measured cost of a final save plus the slowest recent step plus a
margin, it asks the loop to stop at the next step boundary (graceful). If the run is still going
when the deadline is nearly there, it ends the process itself (hard): the adapter published by
the last complete checkpoint is then the result. A first SIGINT/SIGTERM asks for the same graceful
stop (plus a checkpoint), a second forces a hard one at once.

The watchdog's own thread does no I/O, so no disk fault can silence it: the ledger is written by a
second thread, whose failures are reported and retried, never fatal.

In a run of several processes only rank 0's watchdog decides (and writes the ledger); the others
keep one that only ends its process just after rank 0's hard stop should have, should rank 0 fail
to take them along.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable

from train.budget.ledger import Ledger

EXIT_OK, EXIT_CRASH, EXIT_USAGE, EXIT_HARD_DEADLINE, EXIT_SIGNAL, EXIT_HARD_SIGNAL = 0, 1, 2, 3, 4, 5
EXIT_SIGNAL_EARLY = 6  # a signal before the first training step: no adapter was saved
EXIT_RANK_LOST = 7  # another process of a multi-process run was lost: the last checkpoint's adapter stands
HARD_STOP_LEAD_S = 1.0  # the hard stop's time to try to record the summary, then exit, before the deadline
FLUSH_EVERY_S = 1.0


class Watchdog:
    def __init__(self, ledger: Ledger, margin_s: float, save_estimate_s: float,
                 on_hard_stop: Callable[[str, int], None], tick_s: float = 0.05, decides: bool = True) -> None:
        """`on_hard_stop(reason, exit_code)` must end the process within HARD_STOP_LEAD_S. A watchdog
        that does not decide (another rank's) never asks for a graceful stop nor writes the ledger,
        and its hard stop comes later, at half the lead."""
        self.ledger = ledger
        self.decides = decides
        self.hard_lead_s = HARD_STOP_LEAD_S if decides else HARD_STOP_LEAD_S / 2
        self.margin_s = margin_s
        self.save_cost_s = save_estimate_s
        self.step_time_s = 0.0
        self.on_hard_stop = on_hard_stop
        self.tick_s = tick_s
        self.stop = threading.Event()
        self.reason: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="budget-watchdog", daemon=True)
        self._writer = threading.Thread(target=self._write_ledger, name="ledger-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if self.decides:
            self._writer.start()

    def finish(self) -> None:
        """The run is over: stop watching (the caller writes the last ledger entry). A writer stuck
        on the disk is left behind: it is a daemon thread and cannot hold the exit."""
        self._done.set()
        self._thread.join(timeout=1.0)
        if self.decides:
            self._writer.join(timeout=0.1)

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
        while not self._done.wait(self.tick_s):
            left = self.ledger.left()
            if self.decides and left <= self.stop_lead_s():
                self.request_stop("budget")
            if left <= self.hard_lead_s:
                self.on_hard_stop("deadline", EXIT_HARD_DEADLINE)
                return

    def _write_ledger(self) -> None:
        reported = None
        while True:
            try:
                self.ledger.flush()
                reported = None
            except OSError as error:  # disk full, run folder gone or read-only: report once, keep trying
                if error.errno != reported:  # the message names a fresh temporary file each time
                    reported = error.errno
                    print(f"\nwarning     could not write the ledger: {error}", file=sys.stderr, flush=True)
            if self._done.wait(FLUSH_EVERY_S):
                return


class StartupGuard:
    """The deadline before the watchdog runs: interpreter start, imports and setup count against the
    budget, and on a starved machine they can take all of it. Unless cancelled (by the watchdog's
    start), it ends the process HARD_STOP_LEAD_S before the deadline; nothing is saved yet to keep."""

    def __init__(self, seconds_left: float) -> None:
        self._cancelled = threading.Event()
        threading.Thread(target=self._guard, args=(seconds_left,), name="startup-guard", daemon=True).start()

    def cancel(self) -> None:
        self._cancelled.set()

    def _guard(self, seconds_left: float) -> None:
        if not self._cancelled.wait(max(0.0, seconds_left - HARD_STOP_LEAD_S)):
            print("\nHARD STOP (deadline): the budget ran out while the run was starting", file=sys.stderr, flush=True)
            os._exit(EXIT_HARD_DEADLINE)


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
                print("\ninterrupted before the run started: no adapter was saved", file=sys.stderr, flush=True)
                os._exit(EXIT_SIGNAL_EARLY)
            print("\nstop requested: finishing the current step, then saving (signal again to stop at once)",
                  file=sys.stderr, flush=True)
            self.graceful()
            signal.sigwait(signals)
            self.hard()

        threading.Thread(target=wait, name="signal-listener", daemon=True).start()
