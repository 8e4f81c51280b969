"""The model's configuration: every field typed and range-checked before anything is allocated."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from planck.schemas.errors import PlanckError
from planck.schemas.tokenizer import PADDED_VOCAB_SIZE


class ConfigError(PlanckError, ValueError):
    """An unknown key, a wrong type or an invalid value; the message names the key."""


@dataclass
class ModelConfig:
    vocab_size: int = PADDED_VOCAB_SIZE  # 50,304: GPT-2 + chat tokens, padded to a multiple of 64
    seq_len: int = 1024
    n_layer: int = 12
    d_model: int = 768
    n_head: int = 6  # query heads
    n_kv_head: int = 1  # one shared K/V head: multi-query attention
    head_dim: int = 128
    mlp_ratio: int = 4
    rope_base: float = 10000.0
    logit_softcap: float = 15.0
    compute_dtype: str = "bfloat16"  # params stay float32; matmuls run in this dtype
    remat: bool = False  # jax.checkpoint per block: less activation memory, ~30% more compute
    # How q/k/v/up start: "original" (the original PlanckGPT's normal, std 1/sqrt(fan_in) * min(1,
    # sqrt(fan_out/fan_in))) or "uniform_fan_in" (uniform, std 1/sqrt(fan_in)). The original's and a zero
    # head won the A/B in README "Differences from the original PlanckGPT" (bench/ab_original.py).
    init: str = "original"
    head_init_std: float = 0.0  # the output head's normal init std; 0: zeros (the original's)

    def validate(self) -> None:
        """Raise ConfigError on a wrong type or a value the model cannot be built with (checked before anything is allocated)."""
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), _FIELD_TYPES[f.name]
            ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                ok = True
            if not ok:
                raise ConfigError(f"model.{f.name}: expected {kind.__name__}, got {type(value).__name__} {value!r}")
        for name, (low, high) in LIMITS.items():
            value = getattr(self, name)
            if not (low <= value <= high) or value != value:  # NaN compares false
                raise ConfigError(f"model.{name} = {value!r} is outside [{low:,}, {high:,}]")
        if self.n_head % self.n_kv_head:
            raise ConfigError("model.n_head must be a multiple of model.n_kv_head")
        if self.head_dim % 2:
            raise ConfigError("model.head_dim must be even (RoPE rotates pairs)")
        if self.init not in INIT_SCHEMES:
            raise ConfigError(f"model.init {self.init!r}: expected one of {', '.join(INIT_SCHEMES)}")
        if self.compute_dtype not in ("bfloat16", "float32", "float16"):
            raise ConfigError(f"model.compute_dtype {self.compute_dtype!r}: expected bfloat16, float32 or float16")
        d, hd = self.d_model, self.head_dim
        params = 2 * self.vocab_size * d + self.n_layer * (
            2 * d * self.n_head * hd + 2 * d * self.n_kv_head * hd + 2 * d * self.mlp_ratio * d
        )
        if params > MAX_PARAMETERS:
            raise ConfigError(f"model config describes {params:,} parameters, more than this kit builds ({MAX_PARAMETERS:,})")

    @classmethod
    def from_dict(cls, table: object, where: str) -> "ModelConfig":
        """A validated config from a JSON object (model.json): unknown keys, wrong types and absurd values are refused."""
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: the model config is not a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ConfigError(f"{where}: model config has unknown keys {unknown} (written by a newer planck?)")
        cfg = cls(**table)
        try:
            cfg.validate()
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        return cfg


_FIELD_TYPES = {"vocab_size": int, "seq_len": int, "n_layer": int, "d_model": int, "n_head": int, "n_kv_head": int,
                "head_dim": int, "mlp_ratio": int, "rope_base": float, "logit_softcap": float, "compute_dtype": str,
                "remat": bool, "init": str, "head_init_std": float}
INIT_SCHEMES = ("uniform_fan_in", "original")
# Far beyond any model this kit trains on one machine, far below sizes that exhaust memory just to build.
LIMITS = {"vocab_size": (1, 1 << 20), "seq_len": (1, 1 << 20), "n_layer": (1, 1024), "d_model": (1, 1 << 16),
          "n_head": (1, 1024), "n_kv_head": (1, 1024), "head_dim": (2, 1024), "mlp_ratio": (1, 64),
          "rope_base": (1.0, 1e12), "logit_softcap": (1e-3, 1e6), "head_init_std": (0.0, 1.0)}
MAX_PARAMETERS = 100_000_000_000
