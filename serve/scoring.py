"""Prompt scoring: log-probabilities of every token of a sequence in one causal forward (for `logprobs` and `echo`).

The sequence is padded on the right to a bucket length (the model is causal: padding after the
last real token cannot change what comes before it), so there is one compilation per bucket, and
it is never longer than the context. Scoring runs outside the engine thread, one at a time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from planck.schemas.tokenizer import ENDOFTEXT_ID

from .engine import bucket_length, prompt_buckets

MAX_LOGPROBS = 5  # top alternatives per position, as OpenAI's legacy completions API


@partial(jax.jit, static_argnums=0)
def _score(graphdef, params, tokens_1xP):
    model = nnx.merge(graphdef, params)
    logits_PxV = model(tokens_1xP)[0].astype(jnp.float32)
    logp_PxV = jax.nn.log_softmax(logits_PxV, axis=-1)
    # Position i predicts token i + 1.
    next_P = jnp.concatenate([tokens_1xP[0, 1:], jnp.zeros(1, tokens_1xP.dtype)])
    chosen_P = jnp.take_along_axis(logp_PxV, next_P[:, None], axis=-1)[:, 0]
    top_vals_PxN, top_ids_PxN = jax.lax.top_k(logp_PxV, MAX_LOGPROBS)
    return chosen_P, top_vals_PxN, top_ids_PxN


@dataclass
class Scores:
    """For tokens 1..n-1 of a scored sequence: its log-probability and the top alternatives at its position."""

    logprobs: np.ndarray  # (n - 1,) float32
    top_ids: np.ndarray  # (n - 1, MAX_LOGPROBS) int32
    top_logprobs: np.ndarray  # (n - 1, MAX_LOGPROBS) float32


class Scorer:
    """One compiled causal forward per bucket length over a loaded model."""

    def __init__(self, loaded):
        self._graphdef, self._params = nnx.split(loaded.model)
        self.context = loaded.config.seq_len
        self.buckets = prompt_buckets(self.context)
        self._lock = threading.Lock()  # one forward at a time: bounded memory beside the engine

    def __call__(self, ids: Sequence[int]) -> Scores:
        """Scores of ids[1:] given what precedes each (ids holds 2 to context tokens)."""
        n = len(ids)
        if not 2 <= n <= self.context:
            raise ValueError(f"scoring {n} tokens: expected 2 to {self.context}")
        padded = np.full((1, bucket_length(n, self.buckets)), ENDOFTEXT_ID, np.int32)
        padded[0, :n] = ids
        with self._lock:
            chosen, vals, top = (np.asarray(x) for x in _score(self._graphdef, self._params, padded))
        return Scores(chosen[: n - 1], top[: n - 1], vals[: n - 1])
