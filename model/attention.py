"""Causal multi-query attention for training on the CPU: batched row-major matmuls and a hand-written gradient.

jax.nn.dot_product_attention's XLA path keeps the heads as a batch axis beside the K/V groups,
so on XLA:CPU its score and value matmuls (and autodiff's transposes of them) run as many small
strided matmuls with float32 converts (bench/attention_layouts.py: 1.5x this file's time in
bf16 at B 4, T 512, 6 heads of 64 over one K/V head). Here the query heads that share a K/V head are
folded into the rows: q becomes (B*K, T*G, H) with row r = t*G + g, so scores, values and every
gradient are one batched matmul each over (B*K) with plain row-major operands, which XLA:CPU
runs on its 16-bit kernel. The arithmetic is the XLA path's: float32 scores times 1/sqrt(H),
the causal mask, a float32 softmax kept for the backward pass, probabilities cast to the compute
dtype for the value matmul, float32 accumulation. The backward multiplies in the compute dtype
(the XLA path's autodiff multiplies the float32 score gradient in float32).
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


def _causal_mask(rows: int, cols: int, group: int) -> jax.Array:
    """(rows, cols): row r (query position r // group) may see key positions up to its own."""
    return jnp.arange(cols)[None, :] <= (jnp.arange(rows) // group)[:, None]


def _scale(q: jax.Array) -> jax.Array:
    return jnp.float32(1.0 / float(q.shape[-1]) ** 0.5)


def _probs(q, k, group):
    scores = jnp.where(_causal_mask(q.shape[1], k.shape[1], group), _bmm_rhs_t(q, k) * _scale(q), -jnp.inf)
    return jax.nn.softmax(scores, axis=-1)  # every row sees key 0: no row is all -inf


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def folded_causal_attention(q_ZxRxH: jax.Array, k_ZxSxH: jax.Array, v_ZxSxH: jax.Array, group: int) -> jax.Array:
    """Causal attention of folded queries (Z, R = T*group, H) over keys/values (Z, S, H); output in q's dtype."""
    p = _probs(q_ZxRxH, k_ZxSxH, group)
    return _bmm(p.astype(v_ZxSxH.dtype), v_ZxSxH).astype(q_ZxRxH.dtype)


def _fwd(q, k, v, group):
    p = _probs(q, k, group)
    return _bmm(p.astype(v.dtype), v).astype(q.dtype), (q, k, v, p)


def _bwd(group, residuals, dout_ZxRxH):
    q, k, v, p = residuals
    dt = v.dtype
    dout = dout_ZxRxH.astype(dt)
    dv = _bmm(physical_transpose(p.astype(dt)), dout)  # P^T @ dout
    dp = _bmm_rhs_t(dout, v)  # dout @ V^T, float32
    ds = p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True))  # softmax's gradient; masked entries have p = 0
    ds = (ds * _scale(q)).astype(dt)
    dq = _bmm(ds, k)
    dk = _bmm(physical_transpose(ds), q.astype(dt))
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


folded_causal_attention.defvjp(_fwd, _bwd)


def use_folded_attention() -> bool:
    """True on XLA's CPU backend; GPUs keep jax.nn.dot_product_attention (cudnn flash attention in 16-bit)."""
    return jax.default_backend() == "cpu"


def causal_attention(q_BxTxNxH: jax.Array, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array) -> jax.Array:
    """Causal multi-query attention (B, T, N, H) x (B, T, K, H) -> (B, T, N, H), query heads grouped over K/V heads."""
    B, T, N, H = q_BxTxNxH.shape
    K = k_BxTxKxH.shape[2]
    G = N // K
    # (B, T, K, G, H) -> (B, K, T, G, H) -> (B*K, T*G, H); for one K/V head the transpose moves nothing.
    q = jnp.transpose(q_BxTxNxH.reshape(B, T, K, G, H), (0, 2, 1, 3, 4)).reshape(B * K, T * G, H)
    k = jnp.transpose(k_BxTxKxH, (0, 2, 1, 3)).reshape(B * K, T, H)
    v = jnp.transpose(v_BxTxKxH, (0, 2, 1, 3)).reshape(B * K, T, H)
    y = folded_causal_attention(q, k, v, G)
    return jnp.transpose(y.reshape(B, K, T, G, H), (0, 2, 1, 3, 4)).reshape(B, T, N, H)
