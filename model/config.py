"""The model's configuration: every field typed and range-checked before anything is allocated."""

from __future__ import annotations

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

    def validate(self) -> None:
        """Raise ConfigError on values the model cannot be built with."""
        if self.n_head % self.n_kv_head:
            raise ConfigError("model.n_head must be a multiple of model.n_kv_head")
        if self.head_dim % 2:
            raise ConfigError("model.head_dim must be even (RoPE rotates pairs)")
        if self.compute_dtype not in ("bfloat16", "float32", "float16"):
            raise ConfigError(f"model.compute_dtype {self.compute_dtype!r}: expected bfloat16, float32 or float16")
        for name in ("vocab_size", "seq_len", "n_layer", "d_model", "n_head", "n_kv_head", "head_dim", "mlp_ratio"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be positive")
