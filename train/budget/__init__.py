"""The budget: how much time and memory a run may use, and what enforces it.

  limits.py    the track's limits applied to a run (track, budget, processes, GPU memory cap)
  plan.py      `--dry-run`: the run's plan (model, data, memory, speed) before anything loads
  watchdog.py  the thread that stops a run at its deadline, whatever the loop is doing; exit codes
  ledger.py    every attempt's wall-clock time by phase, kept in the run folder
"""
