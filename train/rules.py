"""The competition's limits as data (budget.toml) and the checks that enforce them.

Durations are written as hours, minutes and seconds in that order, each at most once, each a
non-negative number that may have a decimal part: 24h, 90m, 45s, 1h30m, 1h30m15s, 0.5h. Days are
not accepted (no track allows more than 24h), nor spaces, signs or a bare number.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_BUDGET_FILE = Path(__file__).resolve().parent.parent / "budget.toml"

# The command-line switch that lets a refused base model through; named in the error it overrides.
OVERRIDE_FLAG = "--allow-unapproved-model"

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def parse_duration(text: str) -> float:
    """Seconds in a duration such as "24h", "90m", "45s" or "1h30m"."""
    match = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None or not any(match.groups()):
        raise ValueError(f"malformed duration {text!r}: use forms like 24h, 90m, 45s, 1h30m")
    hours, minutes, seconds = (float(group) if group else 0.0 for group in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def format_duration(seconds: float) -> str:
    """The shortest form parse_duration reads back: 5400 -> "1h30m", 45.2 -> "45s", 2.5 -> "2.5s".

    Whole seconds from 10 s up; below that one decimal, so short cpu-track times stay readable."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot format {seconds} s as a duration: it must be finite and not negative")
    if seconds < 10 and round(seconds, 1) != round(seconds):
        return f"{round(seconds, 1)}s"
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{value}{unit}" for value, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if value]
    return "".join(parts) or "0s"


@dataclass(frozen=True)
class Track:
    """One hardware track's limits. `gpus` is how many GPUs the run may use in all, one process each
    (0: CPU only); `gpu_memory_gib` caps each process's card (None: no cap)."""

    name: str
    wall_clock_s: float
    gpus: int
    gpu_memory_gib: float | None
    final_save_reserve_s: float
    margin_s: float
    checkpoint_every_s: float
    card: str = ""


@dataclass(frozen=True)
class Rules:
    """Everything budget.toml declares."""

    tracks: dict[str, Track]
    approved_model_types: frozenset[str]
    instruct_markers: tuple[str, ...]
    data_rules: tuple[str, ...]
    max_total_tokens: int


# --- reading budget.toml -------------------------------------------------------------------------
# Errors name the offending key as a dotted path (tracks.cpu.margin); load_rules prefixes the file.

_TRACK_KEYS = {
    "card",
    "wall_clock",
    "gpus",
    "gpu_memory_gib",
    "final_save_reserve",
    "margin",
    "checkpoint_every",
}
_RULES_KEYS = {"approved_model_types", "instruct_markers", "data_rules", "max_total_tokens"}
_KINDS = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "a table"}


def _reject_unknown(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        place = f" in {where}" if where else ""
        raise ValueError(f"unknown key(s) {', '.join(unknown)}{place}; expected {', '.join(sorted(allowed))}")


def _require(table: dict[str, Any], key: str, kind: type, where: str) -> Any:
    """table[key], which must exist and be of `kind`; a float key also takes an integer, never a bool.

    A wrong type is a ValueError like every other budget.toml problem, so callers catch one kind."""
    name = f"{where}.{key}" if where else key
    if key not in table:
        raise ValueError(f"missing key {name}")
    value = table[key]
    accepted = (int, float) if kind is float else kind
    if not isinstance(value, accepted) or isinstance(value, bool):
        raise ValueError(f"{name} must be {_KINDS[kind]}, got {value!r} ({type(value).__name__})")  # noqa: TRY004
    return value


def _duration(table: dict[str, Any], key: str, where: str) -> float:
    text = _require(table, key, str, where)
    try:
        return parse_duration(text)
    except ValueError as error:
        raise ValueError(f"{where}.{key}: {error}") from None


def _string_list(table: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    values = _require(table, key, list, where)
    if not values:
        raise ValueError(f"{where}.{key} is empty")
    for value in values:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{where}.{key} must hold non-empty strings, got {value!r}")
    return tuple(values)


def _track(name: str, table: Any) -> Track:
    where = f"tracks.{name}"
    if not isinstance(table, dict):
        raise ValueError(f"{where} must be a table, got {table!r}")  # noqa: TRY004
    _reject_unknown(table, _TRACK_KEYS, where)
    gpus = _require(table, "gpus", int, where)
    if gpus < 0:
        raise ValueError(f"{where}.gpus must be 0 or more, got {gpus}")
    memory = None
    if gpus == 0 and "gpu_memory_gib" in table:
        raise ValueError(f"{where}.gpu_memory_gib is set but the track has gpus = 0")
    if "gpu_memory_gib" in table:  # optional: without it each process has all of its card
        memory = float(_require(table, "gpu_memory_gib", float, where))
        if memory <= 0:
            raise ValueError(f"{where}.gpu_memory_gib must be positive, got {memory}")
    track = Track(
        name=name,
        wall_clock_s=_duration(table, "wall_clock", where),
        gpus=gpus,
        gpu_memory_gib=memory,
        final_save_reserve_s=_duration(table, "final_save_reserve", where),
        margin_s=_duration(table, "margin", where),
        checkpoint_every_s=_duration(table, "checkpoint_every", where),
        card=_require(table, "card", str, where) if "card" in table else "",
    )
    if track.checkpoint_every_s <= 0:
        raise ValueError(f"{where}.checkpoint_every must be positive, got {table['checkpoint_every']!r}")
    if track.final_save_reserve_s + track.margin_s >= track.wall_clock_s:
        raise ValueError(f"{where}: final_save_reserve plus margin leave no time inside wall_clock")
    return track


def _rules(data: dict[str, Any]) -> Rules:
    _reject_unknown(data, {"tracks", "rules"}, "")
    tracks = {name: _track(name, table) for name, table in _require(data, "tracks", dict, "").items()}
    if "cpu" not in tracks:
        raise ValueError("missing key tracks.cpu: it is the track of CPU-only machines")

    rules = _require(data, "rules", dict, "")
    _reject_unknown(rules, _RULES_KEYS, "rules")
    markers = _string_list(rules, "instruct_markers", "rules")
    for marker in markers:
        try:
            re.compile(marker)
        except re.error as error:
            raise ValueError(f"rules.instruct_markers: {marker!r} is not a valid regular expression: {error}")
    max_tokens = _require(rules, "max_total_tokens", int, "rules")
    if max_tokens <= 0:
        raise ValueError(f"rules.max_total_tokens must be positive, got {max_tokens}")
    return Rules(
        tracks=tracks,
        approved_model_types=frozenset(_string_list(rules, "approved_model_types", "rules")),
        instruct_markers=markers,
        data_rules=_string_list(rules, "data_rules", "rules"),
        max_total_tokens=max_tokens,
    )


def load_rules(path: Path = DEFAULT_BUDGET_FILE) -> Rules:
    """Read and check budget.toml; any unknown key, missing key or wrong type is a ValueError naming it."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ValueError(f"budget file {path} not found") from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path} is not valid TOML: {error}") from None
    try:
        return _rules(data)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


# --- checks --------------------------------------------------------------------------------------


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


def check_base_model(rules: Rules, model_id: str, model_type: str, allow_unapproved: bool) -> str | None:
    """None if the base model obeys the rules; otherwise a ValueError saying why, or, when the user
    overrode the rule explicitly, the same reasons as a warning string."""
    problems = []
    if model_type not in rules.approved_model_types:
        problems.append(
            f"its model_type {model_type!r} is not an approved base-model family"
            f" (approved: {', '.join(sorted(rules.approved_model_types))})"
        )
    # Only the model's own name counts: an organisation or a local folder may be called anything.
    name = model_id.rstrip("/").rsplit("/", 1)[-1].lower()
    for marker in rules.instruct_markers:
        found = re.search(marker, name)
        if found:
            problems.append(
                f"its name contains {found.group(0)!r} (instruct marker {marker!r}): instruction-tuned"
                " models are not allowed, only base models"
            )
            break
    if not problems:
        return None
    reasons = "; ".join(problems)
    if allow_unapproved:
        return f"warning: base model {model_id} breaks the competition rules ({reasons}); allowed by {OVERRIDE_FLAG}"
    raise ValueError(f"base model {model_id} refused: {reasons}. Pass {OVERRIDE_FLAG} to use it anyway")


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
    train.plan.paged_state_gib's estimate (None: unknown). A track without a cap leaves the card whole."""
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
