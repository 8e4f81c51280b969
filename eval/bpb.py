"""Bits per byte on a shard folder's held-out split, with the trainer's own windows, batches, loss and byte counts."""

from __future__ import annotations

import math
from pathlib import Path

import jax

from planck.model.loss import evaluate
from planck.schemas.tokenizer import VOCAB_SIZE
from planck.shards.folder import ShardFolder
from planck.shards.preflight import preflight
from planck.shards.windows import ShardWindows, eval_batches, target_bytes

from .errors import EvalError

SPLIT = "val"


def check_folder(folder: Path) -> None:
    """Refuse a folder without a manifest, of another tokenizer, without a validation split, or with a damaged one (before the model loads)."""
    sf = ShardFolder(Path(folder))  # ManifestError names a missing or bad manifest
    sf.check_tokenizer()
    if not sf.entries(SPLIT):
        raise EvalError(f"{folder}: no {SPLIT!r} split to evaluate on (tokenize it with --val-tokens / --val-rows)")
    preflight(Path(folder), (SPLIT,))  # every byte scored is checked first: one line naming a bad file


def windows(folder: Path, seq_len: int) -> ShardWindows:
    """The validation windows at the model's context length, as the trainer cuts them."""
    try:
        return ShardWindows(Path(folder), SPLIT, seq_len)
    except ValueError as exc:  # e.g. a split shorter than one window
        raise EvalError(str(exc)) from None


def bits_per_byte(model, source: ShardWindows, batch_size: int, num_batches: int | None = None, progress=None) -> dict:
    """Loss per trained token and bits per byte over the first `num_batches` batches (all by default).

    The trainer's own evaluation (planck.model.loss.evaluate), with a progress bar and counts.
    """
    batch_size = max(1, min(batch_size, len(source)))  # a split smaller than one batch is still scored
    available = len(source) // batch_size
    num_batches = available if num_batches is None else min(num_batches, available)
    if progress is not None:
        progress.total = num_batches
        progress.refresh()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    scores = evaluate(model, eval_batches(source, batch_size=batch_size, num_batches=num_batches), device,
                      target_bytes, progress)
    if not scores:
        raise EvalError(f"no trained tokens in the first {num_batches} batches of the {SPLIT!r} split")
    return {**scores, "windows": num_batches * batch_size, "batches": num_batches, "batch_size": batch_size}


def uniform_baseline(tokens: float, nbytes: float) -> tuple[float, float]:
    """(loss, bits per byte) of a model that knows nothing: every one of the tokenizer's ids equally likely."""
    return math.log(VOCAB_SIZE), tokens * math.log2(VOCAB_SIZE) / max(nbytes, 1.0)
