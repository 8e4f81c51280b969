"""Typed run configuration: model, optimizer, training; presets in configs/presets/*.toml; strict `--set key=value` overrides."""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planck.configs.shipped import shipped_file
from planck.model.config import ConfigError, ModelConfig
from planck.schemas.counts import parse_count
from planck.schemas.run_folder import flatten

PHASES = ("pretrain", "midtrain", "sft")
CLIP_MODES = ("global", "per_group")


@dataclass
class OptimConfig:
    muon_lr: float = 0.06  # the 2-D block matrices
    adam_lr: float = 0.008  # embedding and output head
    adam_b1: float = 0.65
    adam_b2: float = 0.95
    adam_eps: float = 1e-8  # Adam's denominator floor (the original's, optax's default); see README "Differences"
    muon_momentum: float = 0.95
    clip_norm: float = 1.0
    clip: str = "per_group"  # "per_group": Muon's and Adam's gradients each (the original's); "global": one norm over all
    stable_fraction: float = 0.55  # constant LR for this fraction of the steps, then linear decay
    final_lr_fraction: float = 0.1  # LR at the last step, as a fraction of the peak

    def validate(self) -> None:
        """Raise ConfigError on out-of-range values."""
        for name in ("muon_lr", "adam_lr"):  # 0 is allowed: it freezes that group
            if not 0.0 <= getattr(self, name) < math.inf:
                raise ConfigError(f"optim.{name} = {getattr(self, name)!r} must be a finite number >= 0")
        for name in ("adam_b1", "adam_b2", "muon_momentum"):  # 1 would never forget; NaN fails every comparison
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"optim.{name} = {getattr(self, name)!r} must be within [0, 1)")
        if not 0.0 <= self.stable_fraction <= 1.0:
            raise ConfigError("optim.stable_fraction must be within [0, 1]")
        if not 0.0 <= self.final_lr_fraction <= 1.0:
            raise ConfigError("optim.final_lr_fraction must be within [0, 1]")
        if not 0.0 < self.adam_eps <= 1.0:  # 0 would divide by zero for a parameter that never gets a gradient
            raise ConfigError(f"optim.adam_eps = {self.adam_eps!r} must be within (0, 1]")
        if not self.clip_norm > 0.0:
            raise ConfigError(f"optim.clip_norm = {self.clip_norm!r} must be positive")
        if self.clip not in CLIP_MODES:
            raise ConfigError(f"optim.clip = {self.clip!r}: expected one of {', '.join(CLIP_MODES)}")


@dataclass
class TrainConfig:
    steps: int = 5277  # optimizer steps
    tokens: int = 0  # if > 0: a token budget, and steps = ceil(tokens / tokens per step) instead
    micro_batch: int = 4  # sequences per device per micro-step; `auto` (stored as 0): the largest that fits the device
    grad_accum: int = 128  # micro-steps per optimizer step: 4 x 128 = 512 sequences
    log_every: int = 10
    eval_every: int = 250
    eval_batches: int = 20
    checkpoint_every: int = 250
    keep_checkpoints: int = 3
    loader_workers: int = 0  # grain worker processes; reading memory-mapped shards in-process is fastest
    fsdp: bool = False  # shard parameters and optimizer state over the devices (for models that do not fit one)
    device_memory_gb: float = 0.0  # memory per device that micro_batch=auto may plan for (0: what the device reports)

    def validate(self) -> None:
        """Raise ConfigError on non-positive counts."""
        for name in ("steps", "grad_accum", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be positive")
        if self.micro_batch < 0:
            raise ConfigError("train.micro_batch must be positive, or auto")
        if self.device_memory_gb < 0:
            raise ConfigError("train.device_memory_gb must be >= 0 (0: what the device reports)")
        if self.tokens < 0:
            raise ConfigError("train.tokens must be >= 0 (0: use train.steps)")


@dataclass
class LogConfig:
    tensorboard: bool = False  # also write TensorBoard event files into RUN/tensorboard/ (pip install 'planckgpt[tensorboard]')
    wandb: str = ""  # a Weights & Biases project to log to (pip install 'planckgpt[wandb]'); metrics.jsonl stays the record


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    seed: int = 0

    def validate(self) -> "RunConfig":
        """Check every section; returns self."""
        self.model.validate()
        self.optim.validate()
        self.train.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (what runs/NAME/config.toml holds)."""
        return dataclasses.asdict(self)


# The original run's settings per phase; a preset's values and --set come on top.
PHASE_DEFAULTS: dict[str, dict[str, Any]] = {
    "pretrain": {"optim.muon_lr": 0.06, "optim.adam_lr": 0.008, "train.steps": 5277,
                 "optim.stable_fraction": 0.55, "optim.final_lr_fraction": 0.1},
    "midtrain": {"optim.muon_lr": 0.06, "optim.adam_lr": 0.008, "train.steps": 797,
                 "optim.stable_fraction": 0.8, "optim.final_lr_fraction": 0.1},
    "sft": {"optim.muon_lr": 0.0012, "optim.adam_lr": 0.00016, "train.steps": 20,
            "optim.stable_fraction": 0.0, "optim.final_lr_fraction": 0.0},
}


AUTO_MICRO_BATCH = 0  # train.micro_batch=auto


def _coerce(key: str, kind: Any, value: Any) -> Any:
    """Check (and for strings from the command line, parse) a value against a field's type."""
    if key == "train.micro_batch" and isinstance(value, str) and value.strip().lower() == "auto":
        return AUTO_MICRO_BATCH
    if isinstance(value, str) and kind is not str:
        text = value.strip()
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return text.lower() in ("true", "1", "yes")
            if kind is int:
                return parse_count(text) if key == "train.tokens" else int(text.replace("_", ""))
            if kind is float:
                return float(text)
        except ValueError:
            raise ConfigError(f"{key}: {value!r} is not a valid {kind.__name__}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def _set(cfg: RunConfig, key: str, value: Any) -> None:
    parts = key.split(".")
    target: Any = cfg
    for p in parts[:-1]:
        if not dataclasses.is_dataclass(target) or p not in {f.name for f in dataclasses.fields(target)}:
            raise ConfigError(f"unknown config key {key!r}")
        target = getattr(target, p)
    fields = {f.name: f for f in dataclasses.fields(target)} if dataclasses.is_dataclass(target) else {}
    name = parts[-1]
    if name not in fields or dataclasses.is_dataclass(getattr(target, name)):
        known = ", ".join(sorted(f"{'.'.join(parts[:-1]) + '.' if parts[:-1] else ''}{n}" for n in fields))
        raise ConfigError(f"unknown config key {key!r}" + (f"; known here: {known}" if known else ""))
    hints = typing.get_type_hints(type(target))
    setattr(target, name, _coerce(key, hints[name], value))


def preset_path(name: str) -> Path:
    """configs/presets/NAME.toml (or a path to a .toml file)."""
    if name.endswith(".toml"):
        return Path(name)
    path = shipped_file("presets", f"{name}.toml")
    if path is None:
        import importlib  # the presets' folders, to name them: configs/presets is a namespace package

        known = sorted({p.stem for d in importlib.import_module("planck.configs.presets").__path__ for p in Path(d).glob("*.toml")})
        raise ConfigError(f"unknown preset {name!r}; the presets are {', '.join(known)} (configs/presets/), or give a .toml file")
    return path


def load_config(preset: str, phase: str = "pretrain", overrides: list[str] | dict[str, Any] = ()) -> RunConfig:
    """Defaults, then the phase's settings, then the preset file, then `key=value` overrides; validated."""
    if phase not in PHASES:
        raise ConfigError(f"unknown phase {phase!r}; expected one of {PHASES}")
    cfg = RunConfig()
    for key, value in PHASE_DEFAULTS[phase].items():
        _set(cfg, key, value)
    path = preset_path(preset)
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such preset file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from None
    per_phase = table.pop("phase", {})
    for key, value in flatten(table).items():
        _set(cfg, key, value)
    for key, value in flatten(per_phase.get(phase, {})).items():
        _set(cfg, key, value)
    items = overrides.items() if isinstance(overrides, dict) else (_split_override(o) for o in overrides)
    for key, value in items:
        _set(cfg, key, value)
    return cfg.validate()


def _split_override(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.steps=200")
    return key.strip(), value

