"""Recipes: one TOML file per training run, validated into dataclasses.

An unknown key, a wrong type, a bad value or a missing data file is an error that names it, so a
typo in a 24-hour run's recipe fails in the first second instead of silently using a default.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from core.generated import TASKS
from core.prompts import DEFAULT_PROMPT_FORMAT, PROMPT_FORMATS
from core.tiny import EMBEDDED_ID

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_RECIPE = CONFIG_DIR / "smollm2-cpu.toml"  # the main job: a real model on the CPU
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TEMPLATES = ("alpaca", "completion")
# Names of the judges' evaluation scenarios (challenge.md §3). A training source whose name contains
# one of them is refused unless the recipe sets allow_eval_overlap, so the default mix never trains
# on what the judges evaluate.
EVAL_SCENARIO_MARKERS = (
    "mmlu", "truthful", "bbq", "bigbench", "big_bench", "big-bench", "gsm8k", "competition_math",
    "hendrycks_math", "cnn_dailymail", "samsum", "corr2cause", "ethics",
)


class RecipeError(ValueError):
    """A recipe that cannot run; the message names the key or file at fault."""


@dataclass
class ModelConfig:
    base: str = EMBEDDED_ID  # HF hub id, local folder, or the embedded tiny model
    quantization: str = "nf4"  # nf4 (QLoRA) | none (plain LoRA on a bf16/fp32 base)
    double_quant: bool = True
    compute_dtype: str = "auto"  # auto: bf16 where supported, else fp32
    attention: str = "auto"  # auto: flash_attention_2 when installed on CUDA, else sdpa
    allow_unapproved: bool = False  # train a base model outside the approved families anyway
    prompt_format: str = DEFAULT_PROMPT_FORMAT  # raw: the judges' prompts as sent | chat: the chat template (core/prompts.py)


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    targets: list[str] = field(default_factory=lambda: list(ALL_LINEAR))


# peft's methods by what they change: the weights (merged into the served model) or the input
# (virtual tokens every sequence starts with). [lora] holds the LoRA family's settings.
LORA_FAMILY = ("lora", "dora", "rslora")
VIRTUAL_TOKENS = ("prompt_tuning", "p_tuning", "prefix_tuning")
PEFT_METHODS = LORA_FAMILY + ("ia3",) + VIRTUAL_TOKENS
# The [peft] keys each method reads; a key set away from its default for another method is an error.
METHOD_KEYS = {
    "ia3": ("targets", "feedforward"),
    "prompt_tuning": ("num_virtual_tokens", "init_text"),
    "p_tuning": ("num_virtual_tokens", "encoder_hidden_size"),
    "prefix_tuning": ("num_virtual_tokens", "encoder_hidden_size", "prefix_projection"),
}


@dataclass
class PeftSettings:
    method: str = "lora"  # lora | dora | rslora (with [lora]'s settings) | ia3 | prompt_tuning | p_tuning | prefix_tuning
    targets: list[str] = field(default_factory=lambda: ["k_proj", "v_proj", "down_proj"])  # ia3: scaled projections
    feedforward: list[str] = field(default_factory=lambda: ["down_proj"])  # ia3: of targets, those scaled at the input
    num_virtual_tokens: int = 20  # prompt/p/prefix tuning: virtual tokens before every sequence
    init_text: str = ""  # prompt_tuning: start the virtual tokens as this text's embeddings; empty: random
    encoder_hidden_size: int = 128  # p_tuning: the prompt encoder's MLP; prefix_tuning: its projection's
    prefix_projection: bool = False  # prefix_tuning: learn the prefix through an MLP (more parameters)


@dataclass
class DataSource:
    kind: str = "generated"  # generated | hf | json
    name: str = ""  # generated task name, or HF dataset id
    path: str = ""  # local .json/.jsonl file (kind = json); relative to the recipe file
    split: str = "train"
    subset: str = ""  # HF dataset configuration name
    template: str = "completion"  # completion | alpaca
    fields: dict[str, str] = field(default_factory=dict)  # template field -> source column
    weight: float = 1.0
    max_examples: int = 0  # 0: all (generated: 2000)


@dataclass
class TrainSettings:
    max_seq_len: int = 256
    micro_batch_size: int = 4
    grad_accum: int = 1
    lr: float = 2e-4
    min_lr_ratio: float = 0.1
    warmup_frac: float = 0.03
    schedule: str = "cosine"  # cosine | linear | constant
    schedule_clock: str = "budget"  # budget: progress = share of the time budget; steps: of max_steps
    max_steps: int = 0  # 0: no step limit
    epochs: float = 0.0  # 0: no epoch limit
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    optimizer: str = "paged_adamw_8bit"  # paged_adamw_8bit | adamw_8bit | adamw
    neftune_alpha: float = 0.0
    gradient_checkpointing: bool = True
    packing: bool = True
    train_on_inputs: bool = False  # False: loss on response tokens only
    seed: int = 0
    checkpoint_every: str = ""  # duration; empty: the track's interval from budget.toml
    autocast: str = "auto"  # auto: bf16 autocast on CUDA with bf16 (as Trainer(bf16=True)), none on CPU; bf16 | off


@dataclass
class LogSettings:
    every_steps: int = 1
    wandb: bool = False
    wandb_project: str = "llm-efficiency"
    tensorboard: bool = False


@dataclass
class CurationSettings:
    """What to drop from the mix before training (`python -m train --data-report` shows what each would drop)."""
    dedup: str = "off"  # off | exact (same normalised words) | near (and MinHash-similar, see train/data/dedup.py)
    decontaminate: bool = False  # drop records sharing an n-gram with an evaluation instance (train/data/contamination.py)
    eval_data: str = ""  # evaluation data root checked for contamination; empty: eval's default
    min_tokens: int = 0  # length bounds on prompt + response under the recipe's tokenizer; 0: none
    max_tokens: int = 0
    min_chars: int = 0  # the same in characters
    max_chars: int = 0


@dataclass
class Recipe:
    name: str = "run"
    allow_eval_overlap: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    peft: PeftSettings = field(default_factory=PeftSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    log: LogSettings = field(default_factory=LogSettings)
    curation: CurationSettings = field(default_factory=CurationSettings)
    data: list[DataSource] = field(default_factory=list)
    source_file: str = ""  # where it was read from (filled in by load_recipe)


CHOICES = {
    "model.quantization": ("nf4", "none"),
    "model.compute_dtype": ("auto", "bf16", "fp16", "fp32"),
    "model.attention": ("auto", "sdpa", "eager", "flash_attention_2"),
    "model.prompt_format": PROMPT_FORMATS,
    "peft.method": PEFT_METHODS,
    "train.schedule": ("cosine", "linear", "constant"),
    "train.schedule_clock": ("budget", "steps"),
    "train.optimizer": ("paged_adamw_8bit", "adamw_8bit", "adamw"),
    "train.autocast": ("auto", "bf16", "off"),
    "data.kind": ("generated", "hf", "json"),
    "data.template": TEMPLATES,
    "curation.dedup": ("off", "exact", "near"),
}


def _check_type(value: object, hint: object, where: str) -> object:
    """Return value converted to hint (ints are accepted as floats), or raise naming `where`."""
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise RecipeError(f"{where}: expected a list, got {value!r}")
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise RecipeError(f"{where}: expected a table of strings, got {value!r}")
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported recipe field type {hint}")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool) or not isinstance(value, hint):  # type: ignore[arg-type]
        raise RecipeError(f"{where}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, table: object, where: str):
    if not isinstance(table, dict):
        raise RecipeError(f"[{where}] must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise RecipeError(f"unknown key(s) in [{where}]: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    values = {}
    for key, value in table.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = _build(hint, value, key)
        else:
            values[key] = _check_type(value, hint, f"{where}.{key}")
        choices = CHOICES.get(f"{where.split('[')[0]}.{key}")
        if choices and values[key] not in choices:
            raise RecipeError(f"{where}.{key} = {value!r}: choose one of {', '.join(choices)}")
    return cls(**values)


def parse_recipe(table: dict, source_file: str = "") -> Recipe:
    """Validate a parsed TOML table into a Recipe."""
    table = dict(table)
    sources = table.pop("data", [])
    if not isinstance(sources, list):
        raise RecipeError("data must be an array of tables: write [[data]] blocks")
    recipe = _build(Recipe, table, "recipe")
    recipe.data = [_build(DataSource, s, f"data[{i}]") for i, s in enumerate(sources)]
    recipe.source_file = source_file
    _validate_method_keys(recipe)
    validate(recipe)
    return recipe


def _validate_method_keys(recipe: Recipe) -> None:
    """[peft] keys and [lora] apply to some methods only: one set (away from its default) for another
    method is refused, so it cannot look as if it took effect. Defaults pass: a run folder's
    recipe.toml lists every key."""
    method = recipe.peft.method
    defaults = PeftSettings()
    for key in sorted({k for keys in METHOD_KEYS.values() for k in keys}):
        if getattr(recipe.peft, key) != getattr(defaults, key) and key not in METHOD_KEYS.get(method, ()):
            users = [m for m, keys in METHOD_KEYS.items() if key in keys]
            raise RecipeError(f"peft.{key} applies to method {' / '.join(users)}, not to peft.method = {method!r}")
    if method not in LORA_FAMILY and recipe.lora != LoraSettings():
        raise RecipeError(f"[lora] sets the LoRA family's settings ({', '.join(LORA_FAMILY)}); "
                          f"peft.method = {method!r} does not use them: remove [lora] or change peft.method")


def load_recipe(path: Path | str | None = None) -> Recipe:
    """Read and validate a recipe file (the CPU default, configs/smollm2-cpu.toml, when path is None)."""
    path = Path(path) if path else DEFAULT_RECIPE
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"{path}: not valid TOML: {err}") from err
    try:
        return parse_recipe(table, source_file=str(path.resolve()))
    except RecipeError as err:
        raise RecipeError(f"{path}: {err}") from err


def source_path(recipe: Recipe, source: DataSource) -> Path:
    """A json source's file, relative paths taken from the recipe's folder."""
    path = Path(source.path).expanduser()
    if not path.is_absolute() and recipe.source_file:
        path = Path(recipe.source_file).parent / path
    return path


def validate(recipe: Recipe) -> None:
    """Checks across fields that the type checks cannot express."""
    t, lora = recipe.train, recipe.lora
    positive = {
        "train.max_seq_len": t.max_seq_len, "train.micro_batch_size": t.micro_batch_size,
        "train.grad_accum": t.grad_accum, "lora.r": lora.r, "lora.alpha": lora.alpha,
    }
    for key, value in positive.items():
        if value <= 0:
            raise RecipeError(f"{key} must be positive, got {value}")
    if not 0 < t.lr < 1:
        raise RecipeError(f"train.lr must be in (0, 1), got {t.lr}")
    if not 0 <= t.min_lr_ratio <= 1 or not 0 <= t.warmup_frac < 1 or not 0 <= lora.dropout < 1:
        raise RecipeError("train.min_lr_ratio in [0, 1], train.warmup_frac and lora.dropout in [0, 1) please")
    if t.max_steps < 0 or t.epochs < 0 or t.neftune_alpha < 0:
        raise RecipeError("train.max_steps, train.epochs and train.neftune_alpha cannot be negative")
    if t.autocast == "bf16" and recipe.model.compute_dtype == "fp16":
        raise RecipeError("train.autocast = 'bf16' with model.compute_dtype = 'fp16': pick one half precision")
    if t.schedule_clock == "steps" and t.max_steps == 0:
        raise RecipeError("train.schedule_clock = 'steps' needs train.max_steps")
    if not lora.targets:
        raise RecipeError("lora.targets is empty: name the projections to adapt")
    _validate_peft(recipe)
    _validate_curation(recipe)
    if not recipe.data:
        raise RecipeError("no [[data]] sources: name at least one")
    for i, source in enumerate(recipe.data):
        _validate_source(recipe, source, f"data[{i}]")


def _validate_peft(recipe: Recipe) -> None:
    p, t = recipe.peft, recipe.train
    if p.num_virtual_tokens <= 0 or p.encoder_hidden_size <= 0:
        raise RecipeError("peft.num_virtual_tokens and peft.encoder_hidden_size must be positive, got "
                          f"{p.num_virtual_tokens} and {p.encoder_hidden_size}")
    if p.method == "ia3":
        if not p.targets:
            raise RecipeError("peft.targets is empty: name the projections IA3 scales")
        if stray := sorted(set(p.feedforward) - set(p.targets)):
            raise RecipeError(f"peft.feedforward: {', '.join(stray)} not in peft.targets")
    if p.method in VIRTUAL_TOKENS:
        if t.packing:  # virtual tokens open a row; a packed row's later examples would go without them
            raise RecipeError(f"peft.method = {p.method!r} needs train.packing = false: every example must start "
                              "with the virtual tokens, not only a packed row's first")
        if p.num_virtual_tokens >= t.max_seq_len:
            raise RecipeError(f"peft.num_virtual_tokens = {p.num_virtual_tokens} leaves no room in "
                              f"train.max_seq_len = {t.max_seq_len}")
    if p.method == "prefix_tuning" and t.gradient_checkpointing:
        raise RecipeError("peft.method = 'prefix_tuning' needs train.gradient_checkpointing = false: peft's prefix "
                          "tuning passes its prefix as a KV cache, which gradient checkpointing does not keep")


def _validate_curation(recipe: Recipe) -> None:
    c = recipe.curation
    if c.eval_data:  # kept absolute, so a run folder's recipe.toml still names the same folder
        path = Path(c.eval_data).expanduser()
        if not path.is_absolute() and recipe.source_file:
            path = Path(recipe.source_file).parent / path
        if not path.is_dir():
            raise RecipeError(f"curation.eval_data: no folder {path}")
        c.eval_data = str(path.resolve())
    for unit in ("tokens", "chars"):
        low, high = getattr(c, f"min_{unit}"), getattr(c, f"max_{unit}")
        if low < 0 or high < 0:
            raise RecipeError(f"curation.min_{unit} and curation.max_{unit} cannot be negative")
        if high and low > high:
            raise RecipeError(f"curation.min_{unit} = {low} is above curation.max_{unit} = {high}")


def _validate_source(recipe: Recipe, source: DataSource, where: str) -> None:
    if source.weight <= 0:
        raise RecipeError(f"{where}.weight must be positive, got {source.weight}")
    if source.kind == "generated":
        task = TASKS.get(source.name)
        if task is None:
            raise RecipeError(f"{where}.name: unknown generated task {source.name!r} (known: {', '.join(TASKS)})")
        if task.held_out and not recipe.allow_eval_overlap:
            raise RecipeError(f"{where}: {source.name!r} is held out for evaluation; set allow_eval_overlap = true to train on it")
    elif source.kind == "json":
        if not source.path:
            raise RecipeError(f"{where}.path: a json source needs a file path")
        if not source_path(recipe, source).is_file():
            raise RecipeError(f"{where}.path: data file not found: {source_path(recipe, source)}")
    elif not source.name:
        raise RecipeError(f"{where}.name: an hf source needs a dataset id")
    label = f"{source.name} {source.path}".lower()
    marker = next((m for m in EVAL_SCENARIO_MARKERS if m in label), None)
    if marker and not recipe.allow_eval_overlap:
        raise RecipeError(
            f"{where}: {source.name or source.path!r} looks like an evaluation scenario ({marker}); training on the "
            "judges' own tasks is refused unless allow_eval_overlap = true"
        )


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dump_recipe(recipe: Recipe) -> str:
    """The recipe with every default filled in, as TOML that load_recipe reads back."""
    lines = [f"# resolved from {recipe.source_file or 'defaults'}"]
    tables = []
    for f in dataclasses.fields(recipe):
        value = getattr(recipe, f.name)
        if f.name in ("source_file", "data"):
            continue
        if dataclasses.is_dataclass(value):
            tables.append((f"[{f.name}]", dataclasses.asdict(value)))
        else:
            lines.append(f"{f.name} = {_toml_value(value)}")
    tables += [("[[data]]", dataclasses.asdict(s)) for s in recipe.data]
    for header, values in tables:
        lines += ["", header] + [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"
