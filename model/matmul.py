"""The blocks' linear layers as one 2-D matmul with a hand-written gradient whose matmuls XLA:CPU runs row-major.

XLA:CPU hands a 16-bit matmul to its fast (YNNPACK) kernel only when the left operand contracts
its last axis and the right operand its first. Autodiff of `x @ W` forms the weight gradient as
x^T @ dy and the input gradient as dy @ W^T: both contract the other axis, so XLA converts them
to float32 and runs a slower kernel (2x the forward's time at the 6 x 384 benchmark shape; see
bench/README.md). Here the backward transposes x and W physically first (a copy of a few MB)
so that both are plain row-major matmuls. The forward and the arithmetic are nnx.Linear's: the
kernel is cast to the compute dtype, products accumulate in float32 inside the matmul kernel,
and the weight gradient comes back as float32 (rounded to the compute dtype no earlier).

Other backends lay out matmuls well on their own: `dense` uses the hand-written gradient on
the CPU only, so GPU programs are exactly autodiff's.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx


def physical_transpose(a: jax.Array) -> jax.Array:
    """a with its last two axes swapped, as a new row-major array: the barriers stop XLA from folding it back into a layout change."""
    *lead, rows, cols = a.shape
    flat = jax.lax.optimization_barrier(jnp.reshape(jnp.swapaxes(a, -1, -2), (-1,)))
    return jax.lax.optimization_barrier(jnp.reshape(flat, (*lead, cols, rows)))


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def matmul(x_NxD: jax.Array, kernel_DxF: jax.Array, dtype: str) -> jax.Array:
    """x @ kernel in the dtype named `dtype` (kernel cast to it, as nnx.Linear does); gradients by two row-major matmuls."""
    return jnp.dot(x_NxD.astype(dtype), kernel_DxF.astype(dtype))


def _matmul_fwd(x_NxD, kernel_DxF, dtype):
    # The inputs as given are the residuals (their dtypes are the cotangents'); the casts are redone backward.
    return matmul(x_NxD, kernel_DxF, dtype), (x_NxD, kernel_DxF)


def _matmul_bwd(dtype, residuals, dy_NxF):
    x_NxD, kernel_DxF = residuals
    dy = dy_NxF.astype(dtype)
    dx_NxD = jnp.dot(dy, physical_transpose(kernel_DxF.astype(dtype)))
    dkernel_DxF = jnp.dot(physical_transpose(x_NxD.astype(dtype)), dy, preferred_element_type=jnp.float32)
    return dx_NxD.astype(x_NxD.dtype), dkernel_DxF.astype(kernel_DxF.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def use_row_major_gradient() -> bool:
    """True where the hand-written gradient pays: XLA's CPU backend (the benchmark machine's and the tests')."""
    return jax.default_backend() == "cpu"


def dense(layer: nnx.Linear, x: jax.Array) -> jax.Array:
    """A bias-free nnx.Linear applied to x (..., D): flattened to 2-D and through `matmul` on the CPU, else the layer itself."""
    if not use_row_major_gradient():
        return layer(x)
    y = matmul(x.reshape(-1, x.shape[-1]), layer.kernel[...], jnp.dtype(layer.dtype or x.dtype).name)
    return y.reshape(*x.shape[:-1], y.shape[-1])
