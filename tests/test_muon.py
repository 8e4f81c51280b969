"""train/muon.py is optax.contrib.muon: the same state tree (checkpoints move between them) and the same updates."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from planck.train.muon import muon, orthogonalize

# The 2-D matrices take Muon's branch; the 1-D leaf takes optax.contrib.muon's Adam branch (its b1, b2, eps, decay).
SHAPES = {"q": (48, 48), "kv": (48, 16), "up": (48, 192), "down": (192, 48), "scale": (48,)}


def _tree(seed):
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in SHAPES.items()}


def _schedule(step):
    return 0.02 * (1.0 - 0.1 * jnp.minimum(step, 5))


def test_state_tree_is_optax_muons_leaf_for_leaf():
    params = _tree(0)
    ours, theirs = muon(_schedule, beta=0.9).init(params), optax.contrib.muon(_schedule, beta=0.9).init(params)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        assert (a.shape, a.dtype) == (b.shape, b.dtype)
        np.testing.assert_array_equal(a, b)


def test_updates_equal_optax_muons_over_several_steps():
    params = _tree(1)
    ours_tx, theirs_tx = muon(_schedule, beta=0.95), optax.contrib.muon(_schedule, beta=0.95)
    ours_state, theirs_state = ours_tx.init(params), theirs_tx.init(params)
    ours_update, theirs_update = jax.jit(ours_tx.update), jax.jit(theirs_tx.update)
    for step in range(4):
        grads = _tree(10 + step)
        u_ours, ours_state = ours_update(grads, ours_state, params)
        u_theirs, theirs_state = theirs_update(grads, theirs_state, params)
        for k in SHAPES:
            scale = float(jnp.max(jnp.abs(u_theirs[k])))
            assert scale > 0
            np.testing.assert_allclose(u_ours[k], u_theirs[k], rtol=0, atol=1e-5 * scale, err_msg=f"{k} step {step}")
    assert jax.tree.structure(ours_state) == jax.tree.structure(theirs_state)
    for a, b in zip(jax.tree.leaves(ours_state), jax.tree.leaves(theirs_state), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # Continuing from the other's state (a checkpoint restored across versions) gives the same update, both ways.
    grads = _tree(99)
    for state in (ours_state, theirs_state):
        u_ours, u_theirs = ours_update(grads, state, params)[0], theirs_update(grads, state, params)[0]
        for k in SHAPES:
            np.testing.assert_allclose(u_ours[k], u_theirs[k], rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(u_theirs[k]))))


@pytest.mark.parametrize("shape", [(32, 32), (16, 64), (64, 16)])  # square, wide, tall
@pytest.mark.parametrize("dtype, rtol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_orthogonalize_equals_optaxs_newton_schulz(shape, dtype, rtol):
    from optax.contrib._muon import orthogonalize_via_newton_schulz

    coeffs = jnp.asarray((3.4445, -4.7750, 2.0315))
    x = (jnp.asarray(np.random.default_rng(2).standard_normal(shape), jnp.float32) * 3.0).astype(dtype)
    ours, theirs = orthogonalize(x, coeffs.astype(dtype)), orthogonalize_via_newton_schulz(x, coeffs, 5)
    assert ours.shape == theirs.shape == shape and ours.dtype == theirs.dtype == dtype
    ours32, theirs32 = np.asarray(ours, np.float32), np.asarray(theirs, np.float32)
    np.testing.assert_allclose(ours32, theirs32, rtol=0, atol=rtol * np.abs(theirs32).max())
    # And it orthogonalises: the quintic's band (Keller Jordan's coefficients) puts singular values in about (0.5, 1.5).
    s = np.linalg.svd(ours32, compute_uv=False)
    assert s.min() > 0.3 and s.max() < 1.6
