"""The training objective and its evaluation: masked token cross-entropy, loss sums over batches, bits per byte."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .gpt import GPT


def token_loss_sum(model: GPT, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Summed float32 cross-entropy over positions with mask == 1, and the number of such positions."""
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
