"""A track's limits applied to one training run: which track, how long, how many processes, how much GPU memory."""
from __future__ import annotations

import os
from collections.abc import MutableMapping

from core.rules import Rules, Track, format_duration, parse_duration


def _track_flags(rules: Rules, at_least: int, at_most: int | None = None) -> str:
    """"--track a or --track b" for the tracks allowing at_least..at_most GPUs ("" if none does)."""
    names = sorted(name for name, track in rules.tracks.items()
                   if track.gpus >= at_least and (at_most is None or track.gpus <= at_most))
    return " or ".join(f"--track {name}" for name in names)


def choose_track(rules: Rules, name: str | None, cuda_available: bool) -> Track:
    """The track to run under. Without a name: the cpu track on a CPU-only machine; with a GPU the
    user must say which card's rules apply, since the hardware alone does not tell. The one-GPU
    tracks are offered first; those for several GPUs come after, named as such."""
    if name is None:
        if not cuda_available:
            return rules.tracks["cpu"]
        message = f"a CUDA device is visible: choose the hardware track with {_track_flags(rules, 1, 1)}"
        several = _track_flags(rules, 2)
        if several:
            message += f" (a run on several GPUs: {several})"
        raise ValueError(message)
    if name not in rules.tracks:
        raise ValueError(f"unknown track {name!r}: known tracks are {', '.join(sorted(rules.tracks))}")
    track = rules.tracks[name]
    if track.gpus > 0 and not cuda_available:
        raise ValueError(
            f"track {name} needs a CUDA GPU but none is available: use --track cpu or a GPU machine"
        )
    return track


def check_processes(rules: Rules, track: Track, world_size: int) -> None:
    """Refuse a launch with more processes than the track allows. One process drives one GPU, so a
    GPU track takes at most `gpus` of them; the cpu track takes any number (gloo on one machine)."""
    if world_size < 1:
        raise ValueError(f"the number of processes must be at least 1, got {world_size}")
    if track.gpus == 0 or world_size <= track.gpus:
        return
    allowed = f"{track.gpus} GPU" + ("s" if track.gpus > 1 else "")
    message = (f"the {track.name} track allows {allowed}, but {world_size} processes were launched"
               " (one GPU each)")
    bigger = _track_flags(rules, world_size)
    if bigger:
        message += f": a run on {world_size} GPUs needs {bigger}"
    else:
        message += f": no track allows that many; launch at most {track.gpus} processes"
    raise ValueError(message)


def budget_seconds(track: Track, text: str | None) -> float:
    """The run's budget in seconds: the track's limit unless a shorter one is given."""
    if text is None:
        return track.wall_clock_s
    seconds = parse_duration(text)
    if seconds > track.wall_clock_s:
        raise ValueError(
            f"budget {text} exceeds the {track.name} track's limit of {format_duration(track.wall_clock_s)}"
        )
    kept_back = track.final_save_reserve_s + track.margin_s
    if seconds <= kept_back:
        raise ValueError(
            f"budget {text} leaves no time to train on the {track.name} track: it must exceed the final-save"
            f" reserve ({format_duration(track.final_save_reserve_s)}) plus the margin"
            f" ({format_duration(track.margin_s)})"
        )
    return seconds


def hide_gpus(track: Track, environ: MutableMapping[str, str] = os.environ) -> bool:
    """On a track without GPUs, hide every CUDA device from this process so that training really runs
    on the CPU of a GPU machine. Works only before torch first looks for CUDA; True if it hid them."""
    if track.gpus > 0:
        return False
    environ["CUDA_VISIBLE_DEVICES"] = ""
    return True


# The CUDA context (driver state and the loaded kernels of torch, bitsandbytes and flash-attn) sits on
# the card outside the caching allocator: about 0.5 GiB on Ampere/Ada cards with CUDA's lazy loading.
CUDA_CONTEXT_GIB = 0.5


def allocator_cap_gib(card_gib: float, context_gib: float, paged_state_gib: float) -> float:
    """What the track's card leaves to the caching allocator: its memory less the CUDA context and the
    paged optimizer state (CUDA managed memory), which are on the card but outside the allocator. (A
    resumed run loads that state into the allocator instead: the cap is then conservative.)"""
    cap = card_gib - context_gib - paged_state_gib
    if cap <= 0:
        raise ValueError(f"the CUDA context ({context_gib:.2f} GiB) and the paged optimizer state"
                         f" ({paged_state_gib:.2f} GiB) leave nothing of the card's {card_gib:.2f} GiB")
    return cap


def apply_gpu_limits(track: Track, paged_state_gib: float | None = None) -> list[str]:
    """Make this process see no more than the track's hardware, and say what was done.

    Works on this process's current CUDA device: under `accelerate launch` every process sees all the
    GPUs and uses its own (accelerate sets it from LOCAL_RANK), so call this after the Accelerator is
    made. Refuses more visible GPUs than the track allows rather than choosing some silently. On a card
    bigger than the track's it caps the CUDA caching allocator at what the track's card leaves it
    (allocator_cap_gib), so a run that fits here fits on the track; the context is this process's as
    measured, at least CUDA_CONTEXT_GIB (kernels load lazily, later); `paged_state_gib` is
    train.budget.plan.paged_state_gib's estimate (None: unknown). A track without a cap leaves the card whole."""
    import torch

    if not torch.cuda.is_available():
        if track.gpus > 0:
            raise ValueError(f"track {track.name} needs a CUDA GPU but none is available")
        return [f"no CUDA device: using the {track.name} track limits"]
    if track.gpus == 0:
        return [f"the {track.name} track uses no GPU: the visible CUDA devices stay unused"]
    count = torch.cuda.device_count()
    if count > track.gpus:
        cards = "the card" if track.gpus == 1 else "the cards"
        example = ",".join(str(index) for index in range(track.gpus))
        raise ValueError(
            f"{count} CUDA devices are visible but the {track.name} track allows {track.gpus}:"
            f" set CUDA_VISIBLE_DEVICES to {cards} to use (for example CUDA_VISIBLE_DEVICES={example})"
        )
    device = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(device)
    total_gib = props.total_memory / 2**30
    lines = [f"CUDA device {device}: {props.name}, {total_gib:.2f} GiB"]
    limit = track.gpu_memory_gib
    if limit is None:
        lines.append(f"the {track.name} track sets no memory cap: this process may use all of its card")
    elif total_gib > limit:
        free, total = torch.cuda.mem_get_info(device)
        context = max(CUDA_CONTEXT_GIB, (total - free - torch.cuda.memory_reserved(device)) / 2**30)
        cap = allocator_cap_gib(limit, context, paged_state_gib or 0.0)
        fraction = cap / total_gib
        torch.cuda.set_per_process_memory_fraction(fraction, device)
        paged = "unknown (model shape not known)" if paged_state_gib is None else f"{paged_state_gib:.2f} GiB"
        lines.append(
            f"capped this process's CUDA caching allocator at {cap:.2f} GiB (fraction {fraction:.3f}): the"
            f" {track.name} track's card {limit:.2f} GiB less the CUDA context {context:.2f} GiB and the paged"
            f" optimizer state {paged}, which sit outside the allocator"
        )
    elif total_gib < limit:
        lines.append(
            f"warning: this device has less memory than the {track.name} track's card ({limit:.2f} GiB):"
            " a run that fits the track may not fit here"
        )
    return lines
