"""The run: one training run from start to summary, on one process or several.

  session.py     the run told top-down: limits, run folder, ledger, watchdog, load, data, loop, save
  loop.py        optimizer steps until the budget, a step limit or an epoch limit ends them
  schedule.py    the learning rate as a function of the budget's progress
  checkpoint.py  checkpoints and the published adapter, written aside then renamed into place
  durable.py     writes that survive a crash (fsync before rename)
  metrics.py     per-step metrics: metrics.jsonl, progress bar, TensorBoard / W&B
  ranks.py       several processes: rank 0 decides, every rank follows at the same step boundary
"""
