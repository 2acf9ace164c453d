"""The processes of one run: rank 0 decides, every rank follows at the same step boundary.

`accelerate launch` (torchrun's launcher underneath) starts one process per GPU, or several CPU
processes on the cpu track; accelerate's `Accelerator` joins them into one process group (NCCL on
GPUs, gloo on the CPU) and wraps the model for data parallelism (DDP, or FSDP when the launch config
asks for it). A single process is a team of one and goes through the same calls, which then cost
nothing.

Rank 0 owns everything the run decides and writes: the ledger, the budget watchdog, metrics,
checkpoints, the adapter, the summary. Each optimizer step the ranks exchange a few numbers in one
all-reduce before the step (stop or go, and the learning-rate progress only rank 0's clock knows)
and one after it (the step's loss and tokens), so all stop at the same boundary with the same
learning rate. Gradients are summed by the wrapper itself.

Data: one optimizer step consumes `micro_batches_per_step` micro-batches of the global order,
rank r taking every world-size-th one from its offset r. That number is fixed for the whole run,
so a resumed run on another number of processes trains on the same micro-batches per step (each
rank accumulating over more or fewer of them) in the same order.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

LAUNCHER_ENV = "TORCHELASTIC_RUN_ID"  # set by torchrun's launcher (`accelerate launch`, `torchrun`) in each rank


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


class Team:
    """This process's place in the run, and the few collective calls the run makes."""

    def __init__(self, cpu: bool) -> None:
        from accelerate import Accelerator

        # Placement is train.model's (4-bit weights load on their device); precision is the
        # recipe's train.autocast, so an accelerate config asking for mixed precision is refused.
        self.accelerator = Accelerator(cpu=cpu, device_placement=False)
        if self.accelerator.mixed_precision != "no":
            raise ValueError(f"the accelerate config sets mixed_precision = {self.accelerator.mixed_precision!r}: "
                             "precision is the recipe's train.autocast; set mixed_precision: 'no'")
        self.rank = self.accelerator.process_index
        self.size = self.accelerator.num_processes
        self.main = self.accelerator.is_main_process
        self.distributed = self.size > 1

    def describe(self) -> str:
        state = self.accelerator.state
        backend = f", {state.backend}" if self.distributed else ""
        return f"{self.size} process(es), {str(state.distributed_type).rsplit('.', 1)[-1]}{backend}"

    # -- the model ------------------------------------------------------------------------------
    def wrap(self, model):
        """The model as the launch config distributes it (DDP, FSDP; unchanged for one process)."""
        return self.accelerator.prepare_model(model, device_placement=False) if self.distributed else model

    def unwrap(self, model):
        return self.accelerator.unwrap_model(model) if self.distributed else model

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

    def any(self, flag: bool) -> bool:
        """True on every rank if it is true on any."""
        return self._sum([float(flag)])[0] > 0

    def plan_step(self, budget_stop: bool, signalled: bool, progress: float) -> StepPlan:
        """Before each step: stop if rank 0's watchdog says so or any rank was signalled; the
        progress is rank 0's (the others pass 0)."""
        budget, signal, progress = self._sum([float(budget_stop and self.main), float(signalled),
                                              progress if self.main else 0.0])
        stop = "signal" if signal else "budget" if budget else None
        return StepPlan(stop, progress)

    def step_totals(self, loss: float, tokens: int) -> tuple[float, int]:
        """After each step: the mean loss over ranks (each rank's is the mean over its micro-batches,
        so this is the mean over the step's) and the tokens of all ranks."""
        loss_sum, token_sum = self._sum([loss, float(tokens)])
        return loss_sum / self.size, int(token_sum)
