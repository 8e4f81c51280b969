"""The compiled inference engine: prompt prefill and batched one-token decode against a preallocated KV cache.

The cache holds, per layer, keys and values of shape (slots, context, n_kv_head, head_dim): with
multi-query attention that is one K/V head, so the 150M model's cache for 8 slots of 1024 tokens
is 50 MB in bf16. It lives on the device and is donated to every call, so XLA updates it in place.

Two compiled functions, neither recompiled per token or per request:
- prefill(slot, prompt): a causal forward over the prompt, padded up to a bucket length (one
  compilation per bucket), writes the prompt's keys/values into the slot's rows and samples the
  first token from the logits at the prompt's last position.
- decode(tokens, positions): one new token for every slot at once; each slot writes its key/value
  at its own position and attends to its cached positions up to it, then samples its next token.
Slots that hold no request run too (their results are ignored): the batch shape never changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from planck.model.gpt import LayerCache
from planck.model.weights import LoadedModel

from .sampling import sample_tokens

SMALLEST_BUCKET = 32


def prompt_buckets(context: int) -> tuple[int, ...]:
    """Padded prompt lengths: powers of two from 32 up to the context, and the context itself."""
    sizes, n = [], SMALLEST_BUCKET
    while n < context:
        sizes.append(n)
        n *= 2
    return (*sizes, context)


def bucket_length(n: int, buckets: tuple[int, ...]) -> int:
    """The smallest of `buckets` that holds n tokens (ValueError when none does)."""
    for size in buckets:
        if n <= size:
            return size
    raise ValueError(f"a prompt of {n} tokens does not fit the context of {buckets[-1]}")


@dataclass
class SlotSampling:
    """Sampling settings of every slot, as arrays the compiled step takes (no recompilation when they change)."""

    seed: np.ndarray  # uint32
    counter: np.ndarray  # int32: how many tokens this slot's request has sampled so far
    temperature: np.ndarray  # float32; 0 = greedy
    top_k: np.ndarray  # int32
    top_p: np.ndarray  # float32

    @classmethod
    def zeros(cls, n: int) -> "SlotSampling":
        return cls(np.zeros(n, np.uint32), np.zeros(n, np.int32), np.zeros(n, np.float32),
                   np.ones(n, np.int32), np.ones(n, np.float32))


def _prefill(graphdef, params, caches, tokens_1xP, length, slot, seed, temperature, top_k, top_p):
    model = nnx.merge(graphdef, params)
    P = tokens_1xP.shape[1]
    logits_1xPxV, kvs = model.forward_cached(tokens_1xP, jnp.arange(P)[None, :], None)
    new_caches = []
    for (cache_k, cache_v), (k_1xPxKxH, v_1xPxKxH) in zip(caches, kvs):
        at = (slot, 0, 0, 0)
        new_caches.append((
            jax.lax.dynamic_update_slice(cache_k, k_1xPxKxH.astype(cache_k.dtype), at),
            jax.lax.dynamic_update_slice(cache_v, v_1xPxKxH.astype(cache_v.dtype), at),
        ))
    last_V = jax.lax.dynamic_index_in_dim(logits_1xPxV[0], length - 1, axis=0, keepdims=False)
    token = sample_tokens(last_V[None], seed[None], jnp.zeros(1, jnp.int32), temperature[None], top_k[None], top_p[None])
    return token[0], last_V, new_caches


def _decode(graphdef, params, caches, tokens_S, positions_S, seed_S, counter_S, temperature_S, top_k_S, top_p_S):
    model = nnx.merge(graphdef, params)
    logits_Sx1xV, new_caches = model.forward_cached(tokens_S[:, None], positions_S[:, None], caches)
    logits_SxV = logits_Sx1xV[:, 0]
    tokens = sample_tokens(logits_SxV, seed_S, counter_S, temperature_S, top_k_S, top_p_S)
    return tokens, logits_SxV, new_caches


class Engine:
    """A loaded model, its KV cache for `slots` concurrent sequences, and the two compiled steps."""

    def __init__(self, loaded: LoadedModel, slots: int = 8):
        cfg = loaded.config
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.loaded, self.config, self.slots = loaded, cfg, slots
        self.context = cfg.seq_len
        self.buckets = prompt_buckets(self.context)
        self._graphdef, self._params = nnx.split(loaded.model)
        cache_dtype = jnp.dtype(cfg.compute_dtype)
        shape = (slots, self.context, cfg.n_kv_head, cfg.head_dim)
        self._caches: list[LayerCache] = [
            (jnp.zeros(shape, cache_dtype), jnp.zeros(shape, cache_dtype)) for _ in range(cfg.n_layer)
        ]
        self._prefill = jax.jit(partial(_prefill, self._graphdef), donate_argnums=(1,))
        self._decode = jax.jit(partial(_decode, self._graphdef), donate_argnums=(1,))

    @property
    def cache_bytes(self) -> int:
        """Bytes held by the KV cache."""
        return sum(k.nbytes + v.nbytes for k, v in self._caches)

    @property
    def weight_bytes(self) -> int:
        """Bytes of the model's parameters as stored for serving."""
        return sum(x.nbytes for x in jax.tree_util.tree_leaves(self._params))

    def bucket(self, n: int) -> int:
        """The padded length a prompt of n tokens is prefilled at."""
        return bucket_length(n, self.buckets)

    def prefill(self, slot: int, prompt_ids: list[int], sampling: SlotSampling) -> tuple[jax.Array, jax.Array]:
        """Write the prompt into `slot`'s cache rows; returns (first sampled token, logits at the last prompt position)."""
        n = len(prompt_ids)
        if not 1 <= n <= self.context:
            raise ValueError(f"prompt of {n} tokens: expected 1 to {self.context}")
        padded = np.zeros((1, self.bucket(n)), np.int32)
        padded[0, :n] = prompt_ids
        token, logits, self._caches = self._prefill(
            self._params, self._caches, padded, np.int32(n), np.int32(slot),
            sampling.seed[slot], sampling.temperature[slot], sampling.top_k[slot], sampling.top_p[slot],
        )
        return token, logits

    def decode(self, tokens: np.ndarray, positions: np.ndarray, sampling: SlotSampling) -> tuple[jax.Array, jax.Array]:
        """One step for every slot: token i is written at positions[i]; returns (next tokens, logits), one row per slot."""
        next_tokens, logits, self._caches = self._decode(
            self._params, self._caches, tokens.astype(np.int32), positions.astype(np.int32),
            sampling.seed, sampling.counter, sampling.temperature, sampling.top_k, sampling.top_p,
        )
        return next_tokens, logits

    def warm_up(self, buckets: tuple[int, ...] | None = None) -> None:
        """Compile decode and the prefill of the given buckets (default: all) before the first request."""
        sampling = SlotSampling.zeros(self.slots)
        for size in buckets or self.buckets:
            self.prefill(0, [0] * size, sampling)[0].block_until_ready()
        self.decode(np.zeros(self.slots, np.int32), np.zeros(self.slots, np.int32), sampling)[0].block_until_ready()
