"""Muon for the blocks' 2-D matrices: optax.contrib.muon's update and state, with its Newton-Schulz steps on plain 2-D matmuls.

optax.contrib.muon (0.2.8) orthogonalises every matrix under `jax.vmap` over a batch of one (its
reshape for N-D weights), so each Newton-Schulz matmul is a batched dot_general. XLA:CPU runs
those about 1.5x slower than the same 2-D matmuls: one update of the 36 matrices of the 6 x 384
benchmark model takes 666 ms there against 440 ms here (`bench/muon_update.py`). This module computes the
same update (Nesterov momentum, Frobenius pre-scaling, the quintic iteration with the
coefficients held in the state, the width scale sqrt(max(1, fan_out / fan_in)), the learning
rate) on the matrices as they are, and builds the same transformation tree, so the optimizer
state is optax's leaf for leaf: checkpoints written with optax.contrib.muon restore here and
back. tests/test_muon.py checks the state's structure and the updates against optax's.

The arithmetic is optax's; only the order of float32 sums inside the matmuls can differ.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from optax.contrib import MuonState

NS_COEFFS = (3.4445, -4.7750, 2.0315)  # optax.contrib.muon's default quintic (a, b, c)
NS_STEPS = 5
EPS = 1e-8


def orthogonalize(x: jax.Array, coeffs: jax.Array, steps: int = NS_STEPS) -> jax.Array:
    """The Newton-Schulz approximation of U V^T for a 2-D x = U S V^T, on its wide orientation."""
    tall = x.shape[0] > x.shape[1]
    if tall:  # iterate on the (small, small) Gram matrix of the shorter side
        x = x.T
    x = x / (jnp.linalg.norm(x) + EPS)
    a, b, c = coeffs[0], coeffs[1], coeffs[2]
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def scale_by_muon(beta: float, steps: int = NS_STEPS) -> optax.GradientTransformation:
    """optax.contrib.scale_by_muon for 2-D leaves (nesterov, frobenius, not adaptive), without the batch axis."""

    def init(params):
        return MuonState(count=jnp.zeros([], jnp.int32), mu=optax.tree.zeros_like(params),
                         ns_coeffs=jnp.asarray(NS_COEFFS))

    def update(updates, state, params=None):
        del params
        mu = optax.tree.update_moment(updates, state.mu, beta, 1)
        count = optax.safe_increment(state.count)
        mu_hat = jax.tree.map(
            lambda m, g: beta * m + (1 - beta) * g,
            optax.tree.bias_correction(mu, beta, optax.safe_increment(count)),
            optax.tree.bias_correction(updates, beta, count),
        )
        ortho = jax.tree.map(lambda x: orthogonalize(x, state.ns_coeffs.astype(x.dtype), steps), mu_hat)
        return ortho, MuonState(count=count, mu=mu, ns_coeffs=state.ns_coeffs)

    return optax.GradientTransformation(init, update)


def _width_scale(updates, params=None):
    # Muon's width transfer: rows are fan-in, columns fan-out (optax's default dimension numbers).
    return jax.tree.map(lambda u: u * jnp.sqrt(jnp.maximum(1.0, u.shape[1] / u.shape[0])), updates)


def muon(learning_rate: optax.ScalarOrSchedule, beta: float = 0.95) -> optax.GradientTransformation:
    """optax.contrib.muon(learning_rate, beta=beta) with its defaults, for trees of 2-D matrices; the same state tree."""

    def labels(params):
        return jax.tree.map(lambda x: "muon" if x.ndim == 2 else "adam", params)

    return optax.partition(
        {
            "muon": optax.chain(
                scale_by_muon(beta),
                optax.stateless(_width_scale),
                optax.add_decayed_weights(0.0, None),
                optax.scale_by_learning_rate(learning_rate),
            ),
            # optax's Adam branch for non-2-D leaves; the blocks have none, but its (empty) state
            # keeps the tree equal to optax.contrib.muon's.
            "adam": optax.adamw(learning_rate, b1=0.9, b2=0.999, eps=EPS, eps_root=0.0, weight_decay=0.0, nesterov=True),
        },
        labels,
    )
