"""model/attention.py's folded causal attention (the CPU training path) against jax.nn.dot_product_attention's XLA path."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from planck.model.attention import causal_attention


def _inputs(dtype, B=2, T=12, N=6, K=1, H=8, seed=0):
    k = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(k[0], (B, T, N, H), dtype)
    kk = jax.random.normal(k[1], (B, T, K, H), dtype)
    v = jax.random.normal(k[2], (B, T, K, H), dtype)
    dy = jax.random.normal(k[3], (B, T, N, H), jnp.float32)
    return q, kk, v, dy


def _value_and_grads(f, q, kk, v, dy):
    loss = lambda q, kk, v: jnp.sum(f(q, kk, v).astype(jnp.float32) * dy)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, kk, v)


def _xla(q, kk, v):
    return jax.nn.dot_product_attention(q, kk, v, is_causal=True, implementation="xla")


@pytest.mark.parametrize("n_head, n_kv_head", [(6, 1), (6, 2), (4, 4)])  # multi-query, grouped, one K/V per head
@pytest.mark.parametrize("dtype, rtol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
@pytest.mark.parametrize("block", [12, 4, 5])  # T 12: one block, three equal blocks, uneven blocks (5, 5, 2)
def test_output_and_gradients_equal_the_xla_path(n_head, n_kv_head, dtype, rtol, block):
    q, kk, v, dy = _inputs(dtype, N=n_head, K=n_kv_head)
    attention = partial(causal_attention, block=block)
    out, ref = attention(q, kk, v), _xla(q, kk, v)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    scale = float(jnp.abs(ref.astype(jnp.float32)).max())
    assert float(jnp.abs(out.astype(jnp.float32) - ref.astype(jnp.float32)).max()) <= rtol * scale
    (loss, grads), (ref_loss, ref_grads) = _value_and_grads(attention, q, kk, v, dy), _value_and_grads(_xla, q, kk, v, dy)
    assert float(loss) == pytest.approx(float(ref_loss), rel=rtol)
    for name, g, r in zip("qkv", grads, ref_grads):
        assert g.dtype == r.dtype, name
        g32, r32 = np.asarray(g, np.float32), np.asarray(r, np.float32)
        assert np.abs(r32).max() > 0, name
        assert np.abs(g32 - r32).max() <= rtol * np.abs(r32).max(), (name, np.abs(g32 - r32).max(), np.abs(r32).max())


@pytest.mark.parametrize("block", [12, 4, 5])
@pytest.mark.parametrize("t", [4, 7])  # the first key of a block of 4, and one inside a block
def test_it_is_causal(block, t):
    """A change to a later token's key or value changes no earlier output, and changes its own."""
    q, kk, v, _ = _inputs(jnp.float32)
    out = causal_attention(q, kk, v, block=block)
    kk2, v2 = kk.at[:, t].add(1.0), v.at[:, t].add(1.0)
    out2 = causal_attention(q, kk2, v2, block=block)
    np.testing.assert_array_equal(np.asarray(out2[:, :t]), np.asarray(out[:, :t]))
    assert not np.allclose(np.asarray(out2[:, t]), np.asarray(out[:, t]))


def test_the_default_blocks_split_long_sequences():
    """The training shapes run in blocks (the speed of bench/attention_layouts.py), and a block never exceeds T."""
    from planck.model.attention import _bounds, query_block
    assert _bounds(512, query_block(512)) == tuple(range(0, 512, 64)) + (512,)
    assert _bounds(64, query_block(64)) == (0, 32, 64)
    assert _bounds(12, query_block(12)) == (0, 12)
