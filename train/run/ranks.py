"""The processes of one run: rank 0 decides, every rank follows at the same step boundary.

`accelerate launch` (torchrun's launcher underneath) starts one process per GPU, or several CPU
processes on the cpu track; accelerate's `Accelerator` joins them into one process group (NCCL on
GPUs, gloo on the CPU) and wraps the model for data parallelism (DDP, or FSDP when the launch config
asks for it). A single process is a team of one and goes through the same calls, which then cost
nothing.

Rank 0 owns everything the run decides and writes: the ledger, the budget watchdog, metrics,
checkpoints, the adapter, the summary. Each optimizer step the ranks exchange a few numbers in one
all-reduce before the step (stop or go, the learning-rate progress only rank 0's clock knows,
whether to checkpoint first) and one after it (the step's loss and tokens), so all stop at the same
boundary with the same learning rate, and all join a checkpoint (FSDP gathers its shards for rank 0
to write). Gradients are averaged by the wrapper itself.

Data: one optimizer step consumes `micro_batches_per_step` micro-batches of the global order,
rank r taking every world-size-th one from its offset r. That number is fixed for the whole run,
so a resumed run on another number of processes trains on the same micro-batches per step (each
rank accumulating over more or fewer of them) in the same order.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

T = TypeVar("T")

LAUNCHER_ENV = "TORCHELASTIC_RUN_ID"  # set by torchrun's launcher (`accelerate launch`, `torchrun`) in each rank
BEAT_EVERY_S = 0.25
PEER_TIMEOUT_ENV = "HARNESS_PEER_TIMEOUT"
# A rank silent this long is gone (killed, or hung outside Python's reach). Long enough for a beat
# thread that waits for the GIL while its rank pickles a large checkpoint; far below NCCL's 600 s.
PEER_TIMEOUT_DEFAULT_S = 30.0


def peer_timeout_s(env: dict | None = None) -> float:
    """$HARNESS_PEER_TIMEOUT in seconds (default PEER_TIMEOUT_DEFAULT_S), at least four beats."""
    raw = (os.environ if env is None else env).get(PEER_TIMEOUT_ENV)
    if raw is None:
        return PEER_TIMEOUT_DEFAULT_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not seconds >= 4 * BEAT_EVERY_S:  # NaN fails too
        raise ValueError(f"{PEER_TIMEOUT_ENV} = {raw!r}: expected a number of seconds, at least {4 * BEAT_EVERY_S:g}")
    return seconds


def launched() -> bool:
    """Started by torchrun's launcher. Importable before torch (the budget's clock needs it first)."""
    return LAUNCHER_ENV in os.environ


def per_rank_accumulation(micro_batches_per_step: int, world_size: int) -> int:
    """How many micro-batches each rank accumulates; the run's step size must split evenly."""
    if micro_batches_per_step % world_size:
        divisors = [n for n in range(1, micro_batches_per_step + 1) if micro_batches_per_step % n == 0]
        raise ValueError(
            f"train.grad_accum: this run steps over {micro_batches_per_step} micro-batch(es) per optimizer step, "
            f"which {world_size} processes cannot share evenly: run it on {' or '.join(map(str, divisors))} "
            "process(es)")
    return micro_batches_per_step // world_size


@dataclass
class StepPlan:
    """What every rank does next, as rank 0 decided it."""
    stop: str | None  # None: train a step; "budget" or "signal": stop here
    progress: float  # rank 0's share of the training window used (for the learning rate)
    checkpoint: bool = False  # save a checkpoint first


class Team:
    """This process's place in the run, and the few collective calls the run makes."""

    def __init__(self, cpu: bool, collective_timeout_s: float = 600.0) -> None:
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs

        # Placement is train.model's (4-bit weights load on their device); precision is the
        # recipe's train.autocast, so an accelerate config asking for mixed precision is refused.
        # The collective timeout outlasts the longest legitimate wait (ranks wait in a collective
        # while rank 0 alone writes the data report); a hung peer is found by PeerWatch instead.
        self.accelerator = Accelerator(cpu=cpu, device_placement=False, kwargs_handlers=[
            InitProcessGroupKwargs(timeout=timedelta(seconds=collective_timeout_s))])
        if self.accelerator.mixed_precision != "no":
            raise ValueError(f"the accelerate config sets mixed_precision = {self.accelerator.mixed_precision!r}: "
                             "precision is the recipe's train.autocast; set mixed_precision: 'no'")
        if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not self.sharded:
            raise ValueError("the accelerate config asks for FSDP, which accelerate runs on CUDA GPUs only (these "
                             "CPU processes would silently run DDP): on the cpu track launch with "
                             "configs/accelerate/cpu-gloo.yaml")
        self.rank = self.accelerator.process_index
        self.size = self.accelerator.num_processes
        self.main = self.accelerator.is_main_process
        self.distributed = self.size > 1

    def describe(self) -> str:
        state = self.accelerator.state
        backend = f", {state.backend}" if self.distributed else ""
        return f"{self.size} process(es), {str(state.distributed_type).rsplit('.', 1)[-1]}{backend}"

    # -- the model ------------------------------------------------------------------------------
    @property
    def sharded(self) -> bool:
        """FSDP: each rank holds a shard of the weights, gradients and optimizer state."""
        from accelerate.utils import DistributedType

        return self.accelerator.distributed_type == DistributedType.FSDP

    def wrap(self, model):
        """The model as the launch config distributes it (DDP, FSDP; unchanged for one process)."""
        if not self.distributed:
            return model
        if self.sharded:
            # peft's policy wraps LoRA layers apart from the frozen blocks: FSDP (without
            # use_orig_params) flattens only parameters that all train or all stay frozen.
            from peft.utils.other import fsdp_auto_wrap_policy

            self.accelerator.state.fsdp_plugin.auto_wrap_policy = fsdp_auto_wrap_policy(model)
        return self.accelerator.prepare_model(model, device_placement=False)

    def gather_state(self, model, optimizer=None) -> tuple[dict | None, dict | None]:
        """(the full model state dict or None where the model itself can save, the full optimizer
        state) for rank 0 to write: a collective call under FSDP, which gathers the shards."""
        if not self.sharded:
            return None, optimizer.state_dict() if optimizer is not None and self.main else None
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(model, options=options)
        return weights, get_optimizer_state_dict(model, optimizer, options=options) if optimizer is not None else None

    def load_optimizer_state(self, model, optimizer, state: dict) -> None:
        """Every rank restores the full saved state (under FSDP, each keeps its shard of it)."""
        if not self.sharded:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))

    # -- agreeing -------------------------------------------------------------------------------
    def _sum(self, values: list[float]) -> list[float]:
        if not self.distributed:
            return values
        import torch

        tensor = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def share(self, value):
        """Rank 0's value, on every rank."""
        if not self.distributed:
            return value
        import torch

        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def decide(self, choose: Callable[[], T]) -> T:
        """`choose()` run on rank 0 alone: its result on every rank, or the error it raised raised on
        every rank (so no rank waits for a decision that never comes)."""
        outcome = (None, None)
        if self.main:
            try:
                outcome = (choose(), None)
            except (ValueError, OSError) as error:
                outcome = (None, error)
        result, error = self.share(outcome)
        if error is not None:
            raise error
        return result

    def plan_step(self, budget_stop: bool, signalled: bool, progress: float, checkpoint: bool) -> StepPlan:
        """Before each step: stop if rank 0's watchdog says so or any rank was signalled; the
        progress and whether to checkpoint are rank 0's (the others pass 0)."""
        budget, signal, progress, checkpoint = self._sum([float(budget_stop and self.main), float(signalled),
                                                          progress if self.main else 0.0,
                                                          float(checkpoint and self.main)])
        stop = "signal" if signal else "budget" if budget else None
        return StepPlan(stop, progress, checkpoint > 0)

    def step_totals(self, loss: float, tokens: int) -> tuple[float, int]:
        """After each step: the mean loss over ranks (each rank's is the mean over its micro-batches,
        so this is the mean over the step's) and the tokens of all ranks."""
        loss_sum, token_sum = self._sum([loss, float(tokens)])
        return loss_sum / self.size, int(token_sum)


class PeerWatch:
    """Liveness outside the process group, which can hang for good when a peer dies (NCCL waits in a
    collective until its timeout): each rank beats in the launcher's key-value store (the one the
    process group met through), rank 0 watches every rank and the others watch rank 0. A beat that
    stops for the peer timeout (peer_timeout_s), or a store that stops answering, is a lost peer:
    `on_lost(what)` must end this process. Rank 0 posts its hard stop there too, and the others leave with it at
    once (`on_hard_stop(exit_code)`). A rank that is done (its last save behind it) says so, and is
    no longer watched."""

    def __init__(self, team: Team, on_lost: Callable[[str], None], on_hard_stop: Callable[[int], None],
                 timeout_s: float) -> None:
        import torch.distributed as dist

        self.team, self.on_lost, self.on_hard_stop, self.timeout_s = team, on_lost, on_hard_stop, timeout_s
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                              timeout=timedelta(seconds=timeout_s))
        run = f"{os.environ.get(LAUNCHER_ENV, 'run')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        self.store = dist.PrefixStore(f"harness/{run}/", store)
        self.watched = range(1, team.size) if team.main else [0]
        self._done = threading.Event()
        threading.Thread(target=self._watch, name="peer-watch", daemon=True).start()

    def stop(self) -> None:
        """This rank's last save is done: it exits at its own pace, unwatched."""
        self._done.set()
        with suppress(Exception):
            self.store.set(f"done/{self.team.rank}", "1")

    def post_hard_stop(self, exit_code: int) -> None:
        """Best effort: if the store is what failed, the others find it gone instead."""
        with suppress(Exception):
            self.store.set("hard_stop", str(exit_code))

    def _watch(self) -> None:
        seen = {rank: (-1, time.monotonic()) for rank in self.watched}
        while not self._done.is_set():
            now = time.monotonic()
            try:
                self.store.add(f"beat/{self.team.rank}", 1)
                if not self.team.main and self.store.check(["hard_stop"]):
                    self.on_hard_stop(int(self.store.get("hard_stop")))
                for rank in self.watched:
                    beats = self.store.add(f"beat/{rank}", 0)
                    if beats != seen[rank][0] or self.store.check([f"done/{rank}"]):
                        seen[rank] = (beats, now)
                    elif now - seen[rank][1] > self.timeout_s:
                        self.on_lost(f"rank {rank} stopped answering for {self.timeout_s:g}s")
            except Exception as error:  # noqa: BLE001 - any store failure: the launcher (or rank 0) is gone
                if not self._done.is_set():
                    self.on_lost(f"the launcher's store stopped answering ({type(error).__name__})")
            self._done.wait(BEAT_EVERY_S)
