"""Which dtype to serve in, and loading a finished model in it (through planck.model.weights, the one validated reader)."""

from __future__ import annotations

from pathlib import Path

import jax

from planck.model.weights import LoadedModel, load_model


def serving_dtype(compute_dtype: str, requested: str | None = None) -> str:
    """The dtype to serve in: `requested`, else float32 on a CPU, else the model's compute dtype.

    XLA's CPU backend runs one-token bf16 steps ~8x slower than float32 (150M model: 253 vs 30 ms
    per decode step here), while GPUs read half the bytes per token in bf16.
    """
    if requested:
        return requested
    return "float32" if jax.default_backend() == "cpu" else compute_dtype


def load_for_serving(path: Path, dtype: str | None = None) -> LoadedModel:
    """A run folder, final/ folder or exported .npz, loaded in `dtype` or the serving default for this backend."""
    return load_model(path, dtype=dtype or ("float32" if jax.default_backend() == "cpu" else None))
