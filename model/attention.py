"""Causal multi-query attention for training on the CPU: batched row-major matmuls and a hand-written gradient.

jax.nn.dot_product_attention's XLA path keeps the heads as a batch axis beside the K/V groups,
so on XLA:CPU its score and value matmuls (and autodiff's transposes of them) run as many small
strided matmuls with float32 converts (bench/attention_layouts.py, bf16, B 4, T 512, 6 heads of
64 over one K/V head: 92.6 ms, against 60.0 ms for this file's folded rows in one block and 28.6
ms in its query blocks). Here the query heads that share a K/V head are folded into the rows: q
becomes (B*K, T*G, H) with row r = t*G + g, so scores, values and every gradient are one batched
matmul each over (B*K) with plain row-major operands, which XLA:CPU runs on its 16-bit kernel.
The rows are taken in blocks of query positions, each against the keys it can see, so the masked
upper triangle is skipped block by block and the score blocks stay small enough for the cache
(bench/attention_layouts.py: half the time of one block at T 512). The arithmetic is the XLA
path's: float32 scores times 1/sqrt(H), the causal mask, a float32 softmax kept for the backward
pass, probabilities cast to the compute dtype for the value matmul, float32 accumulation. The
backward multiplies in the compute dtype (the XLA path's autodiff multiplies the float32 score
gradient in float32).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from planck.model.matmul import physical_transpose

_F32 = jnp.float32


def _bmm(a: jax.Array, b: jax.Array) -> jax.Array:
    """(Z, M, K) @ (Z, K, N) in float32 accumulation: the batched form XLA:CPU runs on its fast kernel."""
    return jnp.einsum("zmk,zkn->zmn", a, b, preferred_element_type=_F32)


def _bmm_rhs_t(a: jax.Array, b: jax.Array) -> jax.Array:
    """(Z, M, K) @ (Z, N, K)^T, float32 accumulation (XLA:CPU's fast kernel takes this form too)."""
    return jnp.einsum("zmk,znk->zmn", a, b, preferred_element_type=_F32)


def _scale(q: jax.Array) -> jax.Array:
    return jnp.float32(1.0 / float(q.shape[-1]) ** 0.5)


def _probs(q, k, group, first_position):
    """Softmax of the scores of folded query rows whose first position is `first_position`, over keys 0..S-1."""
    rows, cols = q.shape[1], k.shape[1]
    visible = jnp.arange(cols)[None, :] <= (first_position + jnp.arange(rows) // group)[:, None]
    scores = jnp.where(visible, _bmm_rhs_t(q, k) * _scale(q), -jnp.inf)
    return jax.nn.softmax(scores, axis=-1)  # every row sees key 0: no row is all -inf


def query_block(seq_len: int) -> int:
    """Query positions per block: 32 up to T 256, else 64 (bench/attention_layouts.py --blocks; table in bench/README.md)."""
    return 32 if seq_len <= 256 else 64


def _bounds(seq_len: int, block: int) -> tuple[int, ...]:
    return tuple(range(0, seq_len, block)) + (seq_len,)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def folded_causal_attention(q_ZxRxH: jax.Array, k_ZxSxH: jax.Array, v_ZxSxH: jax.Array, group: int,
                            bounds: tuple[int, ...]) -> jax.Array:
    """Causal attention of folded queries (Z, R = T*group, H) over keys/values (Z, T, H), by query blocks; output in q's dtype.

    `bounds` splits the query positions into blocks [bounds[i], bounds[i+1]); a block's rows see
    keys 0..bounds[i+1]-1 only, so the score matrices skip the masked upper triangle block by block
    (about half of the work and memory at T 512 in blocks of 64).
    """
    return _fwd(q_ZxRxH, k_ZxSxH, v_ZxSxH, group, bounds)[0]


def _fwd(q, k, v, group, bounds):
    outs, probs = [], []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        p = _probs(q[:, start * group:stop * group], k[:, :stop], group, start)
        outs.append(_bmm(p.astype(v.dtype), v[:, :stop]).astype(q.dtype))
        probs.append(p)
    return jnp.concatenate(outs, axis=1), (q, k, v, probs)


def _bwd(group, bounds, residuals, dout_ZxRxH):
    q, k, v, probs = residuals
    dt = v.dtype
    dout = dout_ZxRxH.astype(dt)
    dq_blocks, dk, dv = [], jnp.zeros(k.shape, _F32), jnp.zeros(v.shape, _F32)
    for (start, stop), p in zip(zip(bounds[:-1], bounds[1:]), probs):
        rows = slice(start * group, stop * group)
        dout_b = dout[:, rows]
        dv = dv.at[:, :stop].add(_bmm(physical_transpose(p.astype(dt)), dout_b))  # P^T @ dout
        dp = _bmm_rhs_t(dout_b, v[:, :stop])  # dout @ V^T, float32
        ds = p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True))  # softmax's gradient; masked entries have p = 0
        ds = (ds * _scale(q)).astype(dt)
        dq_blocks.append(_bmm(ds, k[:, :stop]))
        dk = dk.at[:, :stop].add(_bmm(physical_transpose(ds), q[:, rows].astype(dt)))
    dq = jnp.concatenate(dq_blocks, axis=1)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


folded_causal_attention.defvjp(_fwd, _bwd)


def use_folded_attention() -> bool:
    """True on XLA's CPU backend; GPUs keep jax.nn.dot_product_attention (cudnn flash attention in 16-bit)."""
    return jax.default_backend() == "cpu"


def causal_attention(q_BxTxNxH: jax.Array, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array, block: int | None = None) -> jax.Array:
    """Causal multi-query attention (B, T, N, H) x (B, T, K, H) -> (B, T, N, H), query heads grouped over K/V heads.

    `block`: query positions per block (default query_block(T)).
    """
    B, T, N, H = q_BxTxNxH.shape
    K = k_BxTxKxH.shape[2]
    G = N // K
    # (B, T, K, G, H) -> (B, K, T, G, H) -> (B*K, T*G, H); for one K/V head the transpose moves nothing.
    q = jnp.transpose(q_BxTxNxH.reshape(B, T, K, G, H), (0, 2, 1, 3, 4)).reshape(B * K, T * G, H)
    k = jnp.transpose(k_BxTxKxH, (0, 2, 1, 3)).reshape(B * K, T, H)
    v = jnp.transpose(v_BxTxKxH, (0, 2, 1, 3)).reshape(B * K, T, H)
    y = folded_causal_attention(q, k, v, G, _bounds(T, block or query_block(T)))
    return jnp.transpose(y.reshape(B, K, T, G, H), (0, 2, 1, 3, 4)).reshape(B, T, N, H)
