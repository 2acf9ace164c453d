"""The competition's rules as data (budget.toml): tracks, the approved base models, the context length.

Enforcing a track on a training run (budget, processes, GPU memory) is train/budget/limits.py's.

Durations are written as hours, minutes and seconds in that order, each at most once, each a
non-negative number that may have a decimal part: 24h, 90m, 45s, 1h30m, 1h30m15s, 0.5h. Days are
not accepted (no track allows more than 24h), nor spaces, signs or a bare number.
"""

from __future__ import annotations

import math
import re
import tomllib
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


# --- the approved base models -------------------------------------------------------------------


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
