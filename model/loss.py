"""The training objective and its evaluation: masked token cross-entropy (fused with the head, chunked, its own
gradient), the eval step, validation loss and bits per byte over batches."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .gpt import GPT
from .matmul import physical_transpose

# --- The loss path: head, soft-cap and cross-entropy fused, in chunks of tokens, with its own gradient ---
#
# Autodiff of  head -> softcap -> log_softmax -> take_along_axis  on (B, T, V) logits materialises
# several float32 (B*T, V) arrays (the logits, their exp, the one-hot scatter of the gathered
# target, the logits' gradient and a transposed copy of it for the head's gradient). The same loss
# and gradients are computed here from the (N, D) final hidden states and the (D, V) head kernel,
# LOSS_CHUNK tokens at a time, so that only (chunk, V) logits exist at once. Under differentiation,
# the forward pass also forms d loss / d logits analytically, weight * (softmax - one_hot) *
# (1 - tanh^2), and applies the two backward head matmuls right away; the backward pass only
# scales their results by the incoming cotangent (a scalar: the loss sum).

LOSS_CHUNK = 512  # tokens per chunk of the fused loss (measured best of 256-1024 on CPU at D 128 and 384; bench/README.md)


def _ce_chunk(h_CxD, ht_DxC, w_DxV, wt_VxD, targets_C, mask_C, cap: float, with_grads: bool):
    """Masked soft-capped cross-entropy sum of one chunk of C tokens; with_grads: also d loss / d h (C, D), d loss / d w (D, V).

    w_DxV is the head kernel in h's dtype; ht_DxC and wt_VxD are h's and w's transposes as new
    row-major arrays (model/matmul.py physical_transpose), so the logits h @ w, d h = dz @ w^T and
    d w = h^T @ dz are all row-major matmuls that XLA:CPU runs on its 16-bit kernel, and the
    vocabulary is the contiguous axis of every (C, V) array. Measured against the transposed (V, C)
    layout this replaced: 11% faster on the loss path at D 384 with 512-token chunks (bench/README.md).
    """
    V = w_DxV.shape[1]
    z_CxV = jnp.dot(h_CxD, w_DxV, preferred_element_type=jnp.float32)  # float32 logits, as nnx.Linear gives
    t_CxV = jnp.tanh(z_CxV / cap)
    logits_CxV = cap * t_CxV
    # log-sum-exp without a max-shift: the soft-capped logits lie in [-cap, cap], so exp cannot overflow.
    e_CxV = jnp.exp(logits_CxV)
    sum_C = jnp.sum(e_CxV, axis=1)
    # The target's logit by a gather (C values), not a one-hot reduction over (C, V). An out-of-range
    # target gathers NaN, as take_along_axis does; `where` keeps masked-out ones out of the sum.
    in_range_C = (targets_C >= 0) & (targets_C < V)
    target_logit_C = jnp.take_along_axis(logits_CxV, jnp.clip(targets_C, 0, V - 1)[:, None], axis=1)[:, 0]
    nll_C = jnp.where(in_range_C, jnp.log(sum_C) - target_logit_C, jnp.nan)
    trained_C = mask_C > 0
    loss = jnp.sum(jnp.where(trained_C, nll_C * mask_C, 0.0))
    if not with_grads:
        return loss
    weight_C = jnp.where(trained_C, mask_C, 0.0)
    # d loss / d z = weight * (softmax - one_hot) * (1 - tanh(z / cap)^2), cast to the matmul dtype.
    onehot_CxV = jnp.arange(V, dtype=jnp.int32)[None, :] == targets_C[:, None]
    p_CxV = e_CxV * (weight_C / sum_C)[:, None]
    dz_CxV = (p_CxV - jnp.where(onehot_CxV, weight_C[:, None], 0.0)) * (1.0 - t_CxV * t_CxV)
    # In the compute dtype for the two matmuls (float32 accumulation): measured 1.3x faster than float32 dz on CPU.
    dz_CxV = dz_CxV.astype(h_CxD.dtype)
    dh_CxD = jnp.dot(dz_CxV, wt_VxD, preferred_element_type=jnp.float32)
    dw_DxV = jnp.dot(ht_DxC, dz_CxV, preferred_element_type=jnp.float32)
    return loss, dh_CxD, dw_DxV


def _ce_scan(h_NxD, w_DxV, targets_N, mask_N, cap: float, chunk: int, with_grads: bool):
    """_ce_chunk over the N tokens, chunk at a time (a lax.scan); N must be a multiple of chunk."""
    N, D = h_NxD.shape
    k = N // chunk
    targets_N, mask_N = targets_N.astype(jnp.int32), mask_N.astype(jnp.float32)
    w_DxV = w_DxV.astype(h_NxD.dtype)
    hs = h_NxD.reshape(k, chunk, D)
    if not with_grads:
        def body(acc, x):
            return acc + _ce_chunk(x[0], None, w_DxV, None, *x[1:], cap, False), None
        xs = (hs, targets_N.reshape(k, chunk), mask_N.reshape(k, chunk))
        if k == 1:
            return body(jnp.float32(0), jax.tree.map(lambda a: a[0], xs))[0]
        return jax.lax.scan(body, jnp.float32(0), xs)[0]
    # The transposes as new row-major arrays: the kernel's once per call, each chunk's hidden states (small).
    wt_VxD = physical_transpose(w_DxV)
    hts = physical_transpose(hs)
    xs = (hs, hts, targets_N.reshape(k, chunk), mask_N.reshape(k, chunk))

    def body_grad(carry, x):
        loss_acc, dw_acc = carry
        loss, dh, dw = _ce_chunk(*x[:2], w_DxV, wt_VxD, *x[2:], cap, True)
        return (loss_acc + loss, dw_acc + dw), dh

    if k == 1:
        x = jax.tree.map(lambda a: a[0], xs)
        loss, dh, dw = _ce_chunk(*x[:2], w_DxV, wt_VxD, *x[2:], cap, True)
        dhs = dh[None]
    else:
        init = (jnp.float32(0), jnp.zeros(w_DxV.shape, jnp.float32))
        (loss, dw), dhs = jax.lax.scan(body_grad, init, xs)
    return loss, dhs.reshape(N, D), dw


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def softcapped_ce_sum(h_NxD, w_DxV, targets_N, mask_N, cap: float, chunk: int):
    """sum over n with mask[n] > 0 of mask[n] * -log_softmax(cap * tanh(h @ w / cap))[n, targets[n]].

    h (N, D) in the compute dtype, w (D, V) float32 (cast to h's dtype for the matmuls, float32
    accumulation); logits, soft-cap and cross-entropy in float32. N must be a multiple of chunk.
    """
    return _ce_scan(h_NxD, w_DxV, targets_N, mask_N, cap, chunk, False)


def _softcapped_ce_sum_fwd(h_NxD, w_DxV, targets_N, mask_N, cap, chunk):
    loss, dh_NxD, dw_DxV = _ce_scan(h_NxD, w_DxV, targets_N, mask_N, cap, chunk, True)
    # Residuals must be arrays: empty ones carry the dtypes and the targets' shape.
    return loss, (dh_NxD, dw_DxV, jnp.zeros((0,), h_NxD.dtype), jnp.zeros((0,), w_DxV.dtype), targets_N, mask_N)


def _softcapped_ce_sum_bwd(cap, chunk, res, g):
    dh_NxD, dw_DxV, h_dtype, w_dtype, targets_N, mask_N = res
    # No cotangent for the integer targets (float0) or the mask (data, not trained).
    float0_targets = np.zeros(targets_N.shape, jax.dtypes.float0)
    return ((g * dh_NxD).astype(h_dtype.dtype), (g * dw_DxV).astype(w_dtype.dtype), float0_targets, jnp.zeros_like(mask_N))


softcapped_ce_sum.defvjp(_softcapped_ce_sum_fwd, _softcapped_ce_sum_bwd)


def _chunk_size(n_tokens: int, target: int) -> int:
    """The largest divisor of n_tokens that is at most target (the scan needs equal chunks)."""
    for c in range(min(target, n_tokens), 0, -1):
        if n_tokens % c == 0:
            return c
    return n_tokens


def token_loss_sum(model: GPT, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Summed float32 cross-entropy over positions with mask > 0 (weighted by mask), and the sum of the mask.

    The same loss as reference_token_loss_sum (logits from model(), log_softmax, take_along_axis),
    computed without (B, T, V) float32 logits: see softcapped_ce_sum.
    """
    tokens_BxT = batch["inputs"]
    B, T = tokens_BxT.shape
    h_BxTxD = model.final_hidden(tokens_BxT)
    h_NxD = h_BxTxD.reshape(B * T, h_BxTxD.shape[-1])  # 2-D into the head: no (B, T, V) transposes
    loss_sum = softcapped_ce_sum(
        h_NxD, model.head.kernel[...], batch["targets"].reshape(B * T), batch["mask"].reshape(B * T),
        model.logit_softcap, _chunk_size(B * T, LOSS_CHUNK),
    )
    return loss_sum, jnp.sum(batch["mask"].astype(jnp.float32))


def reference_token_loss_sum(model: GPT, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """The straightforward loss (autodiff through full (B, T, V) logits): what token_loss_sum must equal."""
    logits_BxTxV = model(batch["inputs"])
    logp_BxTxV = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
    nll_BxT = -jnp.take_along_axis(logp_BxTxV, batch["targets"][..., None].astype(jnp.int32), axis=-1)[..., 0]
    mask_BxT = batch["mask"].astype(jnp.float32)
    # `where`, not just a product: a masked position's target may be anything (even out of range,
    # which gathers NaN), and must not reach the sum.
    loss_sum = jnp.sum(jnp.where(mask_BxT > 0, nll_BxT * mask_BxT, 0.0))
    return loss_sum, jnp.sum(mask_BxT)


@nnx.jit
def eval_step(model: GPT, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Summed masked loss and token count of one batch (no gradients)."""
    return token_loss_sum(model, batch)


def evaluate(
    model: GPT, batches: Iterable[dict[str, np.ndarray]], sharding, count_bytes: Callable[[dict[str, np.ndarray]], int],
    progress=None,
) -> dict[str, float]:
    """Validation loss (nats per trained token), bits per byte, and the trained tokens and bytes they cover.

    `count_bytes(batch)` gives the UTF-8 bytes a batch's trained targets decode to (the data side
    knows the tokenizer); with no trained token the result is empty.
    """
    loss_sum = tokens = nbytes = 0.0
    for batch in batches:
        arrays = {k: jax.device_put(jnp.asarray(batch[k]), sharding) for k in ("inputs", "targets", "mask")}
        ls, n = eval_step(model, arrays)
        loss_sum += float(ls)
        tokens += float(n)
        nbytes += count_bytes(batch)
        if progress is not None:
            progress.update(1)
    if tokens == 0:
        return {}
    return {"val_loss": loss_sum / tokens, "val_bpb": loss_sum / (math.log(2) * max(nbytes, 1.0)),
            "tokens": int(tokens), "bytes": int(nbytes)}
