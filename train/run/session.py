"""One training run from start to summary: limits, run folder, ledger, watchdog, load, loop, save (its
data prepared before the load: train/__main__.py read_inputs).

Run folder (`--output-dir`, default runs/<recipe name>):
  recipe.toml      the resolved recipe (every default filled in)
  adapter/         the latest complete PEFT adapter (PeftModel.from_pretrained loads it)
  checkpoints/     step-NNNNNNN/ with adapter, optimizer, RNG and data position, for --resume
  metrics.jsonl    one line per step: step, loss, lr, tokens/s, step time, peak memory
  ledger.json      time used by every attempt, by phase
  summary.json     how the run ended, and where the budget went

Several processes (`accelerate launch`, train/run/ranks.py) run this same story in step; only rank 0
writes any of these files, and its ledger counts wall time, however many processes run.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from train import model as model_lib
from train.budget.ledger import Ledger
from train.budget.watchdog import (
    EXIT_CRASH,
    EXIT_OK,
    EXIT_RANK_LOST,
    EXIT_SIGNAL,
    EXIT_SIGNAL_EARLY,
    Watchdog,
)
from train.data import pipeline as data
from train.recipe import Recipe, dump_recipe, load_recipe
from train.run.checkpoint import (
    place_optimizer_state,
    publish_adapter,
    publish_lock,
    read_checkpoint,
    recover_adapter,
    restore_weights,
    save_checkpoint,
    save_final_adapter,
    set_rng_state,
)
from train.run.durable import write_atomic
from train.run.loop import LoopState, run_loop
from train.run.metrics import MetricsLog, peak_memory_mib
from train.run.ranks import PeerWatch, StepPlan, Team

HARD_STOP_WAIT_S = 1.0  # the most a hard stop waits for a swap in progress and its record, deadline or not
EXIT_SLACK_S = 0.4  # kept between a hard stop's exit and the deadline: a process exits in tens of milliseconds


@dataclass
class Limits:
    """What the command line and budget.toml decided for this run."""
    track: str
    budget_s: float
    margin_s: float
    save_reserve_s: float
    checkpoint_every_s: float
    peer_timeout_s: float  # train.run.ranks.peer_timeout_s: a rank silent this long is lost


@dataclass
class Inputs:
    """What a run reads and prepares besides the model, done (so checked) before the model loads: bad
    data is a usage error that costs the check alone (train/__main__.py read_inputs)."""
    prepared: data.Prepared  # batches, curation's findings, rank 0's data report
    resume_from: Path | None  # the checkpoint a resume continues, rank 0's choice, shared
    seconds: float  # the reading's wall time, booked to the data phase


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def choose_run_dir(recipe: Recipe, output_dir: str | None) -> Path:
    """--output-dir as given (must be new or empty), else runs/<name>, runs/<name>-2, ...: an earlier
    run's folder is never reused without --resume."""
    if output_dir:
        path = Path(output_dir)
        if path.exists() and any(path.iterdir()):
            raise ValueError(f"output folder {path} already holds a run: use --resume to continue it, "
                             "or choose another --output-dir")
        return path
    base = Path("runs") / recipe.name
    path, n = base, 1
    while path.exists() and any(path.iterdir()):
        n += 1
        path = base.with_name(f"{recipe.name}-{n}")
    return path


def resume_recipe(run_dir: Path) -> Recipe:
    if not (run_dir / "recipe.toml").is_file():
        raise ValueError(f"--resume: {run_dir} holds no run (no recipe.toml)")
    return load_recipe(run_dir / "recipe.toml")


class TrainingRun:
    def __init__(self, recipe: Recipe, run_dir: Path, limits: Limits, started: float, resume: bool, team: Team,
                 micro_batches_per_step: int, inputs: Inputs) -> None:
        """On every rank of a team alike (a collective call): rank 0 starts the run's records, the
        others take its time left."""
        self.recipe, self.run_dir, self.limits, self.resume, self.team = recipe, run_dir, limits, resume, team
        self.inputs = inputs
        left = team.decide(lambda: self._start_records(started))
        if not team.main:
            self.ledger = Ledger.follower(limits.budget_s, started, left)
        self.peers = PeerWatch(team, on_lost=lambda what: self.hard_stop(what, EXIT_RANK_LOST),
                               on_hard_stop=lambda code: self.hard_stop("rank 0's hard stop", code),
                               timeout_s=limits.peer_timeout_s) if team.distributed else None
        self.watchdog = Watchdog(self.ledger, limits.margin_s, limits.save_reserve_s, self.hard_stop,
                                 decides=team.main)
        self.state = LoopState(micro_batches_per_step=micro_batches_per_step)
        self.model = self.trained = self.optimizer = self.metrics = None  # trained: the PEFT model inside any wrapper
        self.data_dropped: dict[str, int] = {}  # records the recipe's [curation] options dropped, by reason
        self.last_checkpoint = time.monotonic()
        self.checkpointed_step = 0  # the step of this attempt's latest checkpoint (or of the one resumed)
        self.training = False  # past the load and data phases: a signal then stops at a step boundary

    def _start_records(self, started: float) -> float:
        """Rank 0: the run folder, its recipe and this attempt in the ledger; returns the time left."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.resume:
            recover_adapter(self.run_dir)
        else:
            (self.run_dir / "recipe.toml").write_text(dump_recipe(self.recipe))
        self.ledger = Ledger(self.run_dir / "ledger.json", self.limits.budget_s, started, self.resume,
                             world_size=self.team.size)
        self.ledger.add("startup", self.ledger.elapsed() - self.inputs.seconds)  # interpreter start and imports
        self.ledger.add("data", self.inputs.seconds)
        self.inputs.prepared.write_report(self.run_dir)
        return self.ledger.left()

    # -- ending ---------------------------------------------------------------------------------
    def summary(self, reason: str, exit_code: int) -> dict:
        totals = self.ledger.totals()
        used = self.ledger.used()
        return {
            "stop_reason": reason, "exit_code": exit_code, "track": self.limits.track,
            "budget_s": round(self.limits.budget_s, 3), "used_s": round(used, 3),
            "overshoot_s": round(max(0.0, used - self.limits.budget_s), 3),
            "attempts": len(self.ledger.attempts), "steps": self.state.step, "tokens": self.state.tokens,
            "last_loss": self.state.loss, "phases_s": {k: round(v, 3) for k, v in totals.items()},
            "train_share": round(totals.get("train", 0.0) / self.limits.budget_s, 4),
            "adapter": str(self.run_dir / "adapter") if (self.run_dir / "adapter").exists() else None,
            "data_dropped": self.data_dropped,
            "device": str(next(self.model.parameters()).device) if self.model is not None else None,
            "world_size": self.team.size, "micro_batches_per_step": self.state.micro_batches_per_step,
        }

    def write_summary(self, reason: str, exit_code: int) -> dict:
        """Record how the run ended in the ledger and summary.json, as far as the disk lets us (rank 0)."""
        summary = self.summary(reason, exit_code)
        if not self.team.main:
            return summary
        for name, write in (("ledger", lambda: self.ledger.flush(end=reason)),
                            ("summary", lambda: write_atomic(self.run_dir / "summary.json",
                                                             json.dumps(summary, indent=1)))):
            try:
                write()
            except OSError as error:
                say(f"warning     could not write the {name}: {error}")
        return summary

    def hard_stop(self, reason: str, exit_code: int) -> None:
        """Called from the watchdog or signal thread: end now, keeping the last published adapter.
        The exit comes first: a swap of adapter/ in progress and the record get what time is left
        before the deadline (at most HARD_STOP_WAIT_S), so a disk that hangs cannot hold the process."""
        end_by = time.monotonic() + min(self.ledger.left() - EXIT_SLACK_S, HARD_STOP_WAIT_S)
        publish_lock.acquire(timeout=max(0.0, (end_by - time.monotonic()) / 2))
        record = threading.Thread(target=self._record_hard_stop, args=(reason, exit_code), daemon=True)
        record.start()
        record.join(timeout=max(0.0, end_by - time.monotonic()))
        os._exit(exit_code)

    def _record_hard_stop(self, reason: str, exit_code: int) -> None:
        if self.peers and self.team.main:
            self.peers.post_hard_stop(exit_code)  # the other ranks leave with this one
        summary = self.write_summary(f"hard_stop:{reason}", exit_code)
        self.say(f"\nHARD STOP ({reason}): the adapter of the last complete checkpoint is the result: {summary['adapter']}")

    def record_crash(self) -> int:
        """After an exception escaped the run: mark the attempt crashed (the watchdog still guards the deadline)."""
        return self.end("crashed", EXIT_CRASH)

    # -- the run ----------------------------------------------------------------------------------
    def say(self, message: str) -> None:
        if self.team.main:  # one voice for the team
            say(message)

    def run(self) -> int:
        self.watchdog.start()
        self.say(f"run folder  {self.run_dir}\nbudget      {self.limits.budget_s:.0f}s on track {self.limits.track}, "
                 f"{self.ledger.left():.0f}s left" + (f" after {len(self.ledger.attempts) - 1} earlier attempt(s)"
                                                    if self.resume else "")
                 + (f"\nprocesses   {self.team.describe()}" if self.team.distributed else ""))
        # transformers' set_seed imports peft and bitsandbytes (seconds on a CPU): only here, where the model
        # loads, so that refusals of the recipe, the data or the launch come before that cost.
        from transformers import set_seed

        set_seed(self.recipe.train.seed)  # LoRA's initial weights, dropout: the same run twice gives the same adapter
        saved = None
        with self.ledger.phase("load"):
            self.trained = model_lib.load_model(self.recipe, sharded=self.team.sharded)
            if self.inputs.resume_from:  # rank 0's choice: every rank reads the same one
                saved = read_checkpoint(self.inputs.resume_from)
                restore_weights(self.trained, saved)  # before a wrapper shards the weights
            self.model = self.team.wrap(self.trained)
            self.optimizer = model_lib.make_optimizer(self.recipe, self.model)
            if saved:
                self.team.load_optimizer_state(self.model, self.optimizer, saved.optimizer)
                place_optimizer_state(self.optimizer)
        batches = self.inputs.prepared.batches
        self.data_dropped = self.inputs.prepared.findings.dropped()
        self.training = True  # a signal before here has ended the run (on_signal)
        tokens, slots = batches.token_stats()
        self.say(f"data        {sum(len(r) for r in batches.rows)} examples in {len(batches.rows)} rows, "
                 f"{batches.per_epoch} batches/epoch; " + ("packing" if batches.packed else "pad-to-longest")
                 + f" efficiency {tokens / slots:.1%} (non-pad tokens / token slots)")
        if saved:
            set_rng_state(saved.rng)  # after the data phase, where the uninterrupted run had it
            at = saved.state
            self.state = LoopState(at["step"], at["position"], at["tokens"], at["loss"], self.state.micro_batches_per_step)
            self.checkpointed_step = self.state.step
            if self.team.main:  # adapter/ may be a newer checkpoint's, one that did not read whole: publish the one resumed
                with self.ledger.phase("checkpoint"):
                    publish_adapter(self.run_dir, saved.path / "adapter")
            self.say(f"resumed     from {saved.path.name} (step {self.state.step})")
        elif self.resume:
            self.say("resumed     from step 0: no checkpoint to resume from")
        if self.team.share(not (self.run_dir / "adapter").exists() if self.team.main else None):
            # Publish the untrained adapter at once: the run has a servable result from here on, and
            # the save's cost is measured before the watchdog must rely on it.
            self.measured_save(self.publish)
        self.ledger.mark_train_origin()
        if self.team.main:
            self.metrics = MetricsLog(self.run_dir, self.recipe, self.limits.budget_s, resumed_step=self.state.step)
        try:
            reason = run_loop(self.recipe, self.model, self.optimizer, batches, self.state, self.team,
                              plan_step=self.plan_step, on_step=self.after_step)
        finally:
            if self.metrics:
                self.metrics.close()
        if reason != "budget" and self.state.step != self.checkpointed_step:
            with self.ledger.phase("checkpoint"):  # no deadline pressure: leave one that --resume can extend
                self.write_checkpoint()
        with self.ledger.phase("final_save"):
            self.publish()
        if self.peers:  # watched through the last save, whose collectives a lost peer would hang
            self.peers.stop()
        return self.end(reason, EXIT_SIGNAL if reason == "signal" else EXIT_OK)

    # -- saving: every rank calls these at the same step (FSDP gathers the shards), rank 0 writes --
    def write_checkpoint(self) -> None:
        weights, optimizer_state = self.team.gather_state(self.model, self.optimizer)
        if self.team.main:
            save_checkpoint(self.run_dir, self.trained, optimizer_state, asdict(self.state), weights)

    def checkpoint(self) -> None:
        """A periodic checkpoint, its cost told to the watchdog (a failed one is reported, training goes on)."""
        self.measured_save(self.write_checkpoint)
        self.checkpointed_step = self.state.step
        self.last_checkpoint = time.monotonic()

    def publish(self) -> None:
        """The adapter as it is now, as the run's result (adapter/)."""
        weights, _ = self.team.gather_state(self.model)
        if self.team.main:
            save_final_adapter(self.run_dir, self.trained, weights)

    def on_signal(self) -> None:
        """A first SIGINT/SIGTERM, on the signal thread. Before training there is nothing to save and
        the load and data phases can take minutes, so the run ends at once (exit 6); once training has
        begun it stops at the next step boundary, with a checkpoint."""
        if not self.training:
            code = self.signalled_before_training()
            sys.stdout.flush()
            os._exit(code)
        self.watchdog.request_stop("signal")

    def signalled_before_training(self) -> int:
        self.say("\nstopped by a signal before training started: no adapter was saved in this attempt")
        return self.end("signal_before_training", EXIT_SIGNAL_EARLY)

    def end(self, reason: str, exit_code: int) -> int:
        summary = self.write_summary(reason, exit_code)  # the watchdog still guards the deadline
        self.watchdog.finish()
        phases = summary["phases_s"]
        self.say(f"\nstopped     {reason} after {summary['steps']} steps, {summary['tokens']:,} tokens, "
                 f"last loss {summary['last_loss']:.4f}")
        self.say(f"budget      used {summary['used_s']:.1f}s of {summary['budget_s']:.0f}s "
                 f"(overshoot {summary['overshoot_s']:.1f}s) over {summary['attempts']} attempt(s); "
                 f"training {summary['train_share']:.1%}")
        self.say("phases      " + ", ".join(f"{k} {v:.1f}s" for k, v in phases.items()))
        self.say(f"adapter     {summary['adapter']}")
        return exit_code

    def plan_step(self) -> StepPlan:
        """Before each step, on every rank: rank 0's watchdog and clock decide (stop, learning-rate
        progress, checkpoint), a signal on any rank stops all."""
        w = self.watchdog
        due = self.team.main and self.state.step != self.checkpointed_step and (
            self.state.step == 1 or time.monotonic() - self.last_checkpoint >= self.limits.checkpoint_every_s)
        plan = self.team.plan_step(w.reason == "budget", w.reason == "signal",
                                   self.time_progress() if self.team.main else 0.0, due)
        if plan.stop:
            w.request_stop(plan.stop)  # rank 0 records a stop another rank was signalled for
        elif plan.checkpoint:
            self.checkpoint()
        return plan

    def time_progress(self) -> float:
        """Share of the training window used: from the first training step to the point where the
        watchdog will ask to stop."""
        origin = self.ledger.train_origin_s or 0.0
        window = self.limits.budget_s - self.watchdog.stop_lead_s() - origin
        return (self.ledger.used() - origin) / window if window > 0 else 1.0

    def after_step(self, state: LoopState, lr: float, seconds: float, tokens_per_s: float) -> None:
        self.ledger.add("train", seconds)
        if not self.team.main:
            return
        if state.step > 1 or self.resume:  # the first step also warms up kernels and allocators
            self.watchdog.note_step(seconds)
        row = {"step": state.step, "loss": round(state.loss, 6), "lr": lr, "tokens_per_s": round(tokens_per_s, 1),
               "step_time_s": round(seconds, 4), "peak_mem_mib": round(peak_memory_mib(), 1),
               "used_s": round(self.ledger.used(), 3)}
        self.metrics.log(row, self.ledger.used(), self.ledger.left())

    def measured_save(self, save) -> None:
        """Run a save in the checkpoint phase and tell the watchdog what it cost. A save the disk
        refuses is reported and training goes on: the next save (at the latest the final one) may
        succeed, and the last published adapter stands meanwhile."""
        started = time.monotonic()
        try:
            with self.ledger.phase("checkpoint"):
                save()
        except OSError as error:
            say(f"\nwarning     a save failed, training goes on: {type(error).__name__}: {error}")
            return
        self.watchdog.note_save(time.monotonic() - started)
