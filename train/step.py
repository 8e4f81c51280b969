"""The compiled training and evaluation steps: gradient accumulation inside one jit (a scan over micro-batches)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from planck.model.loss import token_loss_sum


def _loss_and_grads(graphdef, params, rest, micro_batches):
    """Sum of masked token losses, token count and summed gradients over the leading micro-batch axis."""

    def loss_of(p, mb):
        model = nnx.merge(graphdef, p, rest)
        loss_sum, n = token_loss_sum(model, mb)
        return loss_sum, n

    grad_fn = jax.value_and_grad(loss_of, has_aux=True)

    def body(carry, mb):
        g_acc, l_acc, n_acc = carry
        (loss_sum, n), g = grad_fn(params, mb)
        return (jax.tree.map(jnp.add, g_acc, g), l_acc + loss_sum, n_acc + n), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (grads, loss_sum, n), _ = jax.lax.scan(body, (zeros, jnp.float32(0), jnp.float32(0)), micro_batches)
    return grads, loss_sum, n


@nnx.jit
def train_step(model, optimizer, micro_batches):
    """One optimizer step on (grad_accum, batch, seq_len) arrays; returns (mean loss, token count, grad norm).

    The loss is the mean over every trained token of all micro-batches (not a mean of means), so
    accumulation gives exactly the gradient of the whole batch.
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    grads, loss_sum, n = _loss_and_grads(graphdef, params, rest, micro_batches)
    scale = 1.0 / jnp.maximum(n, 1.0)
    grads = jax.tree.map(lambda g: g * scale, grads)
    optimizer.update(model, grads)
    return loss_sum * scale, n, optax_global_norm(grads)


def optax_global_norm(tree) -> jax.Array:
    """The L2 norm over all leaves (before clipping), for the log."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))
