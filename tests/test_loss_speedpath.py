"""The fused, chunked loss path (model/loss.py softcapped_ce_sum, token_loss_sum) equals the straightforward one.

reference_token_loss_sum is autodiff through full (B, T, V) float32 logits, log_softmax and
take_along_axis; token_loss_sum computes the loss from the head's input in chunks of tokens with
a hand-written gradient. With float32 compute both must agree to float rounding (rtol 1e-5), for
the loss and every parameter's gradient, including masked positions whose targets are out of
range, fractional mask weights, one chunk or several, and the no-gradient (eval) path.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import planck.model.loss as model_mod
from planck.model.gpt import GPT
from planck.model.loss import reference_token_loss_sum, softcapped_ce_sum, token_loss_sum
from planck.train.config import load_config

VOCAB = 1000  # not a multiple of any chunk or tile size
B, T = 3, 16


def _model(compute_dtype: str = "float32") -> GPT:
    cfg = dataclasses.replace(load_config("tiny").model, vocab_size=VOCAB, compute_dtype=compute_dtype)
    model = GPT(cfg, rngs=nnx.Rngs(0))
    key = jax.random.key(1)
    # Random (not zero) output projections and a large head: every path carries signal, logits reach the cap.
    for block in model.blocks:
        for lin in (block.attn.out, block.mlp.down):
            key, sub = jax.random.split(key)
            lin.kernel[...] = jax.random.normal(sub, lin.kernel.shape) / math.sqrt(lin.kernel.shape[0])
    key, sub = jax.random.split(key)
    model.head.kernel[...] = jax.random.normal(sub, model.head.kernel.shape) * 5.0  # zero at init
    return model


def _batch(seed: int = 0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, VOCAB, (B, T)).astype(np.int32)
    mask = rng.choice(np.float32([0.0, 0.5, 1.0]), (B, T), p=[0.3, 0.2, 0.5]).astype(np.float32)
    off = np.argwhere(mask == 0)
    assert len(off) >= 2
    targets[tuple(off[0])] = VOCAB + 7  # out of range above ...
    targets[tuple(off[1])] = -3  # ... and below: both masked, so neither may reach the loss or gradients
    inputs = rng.integers(0, VOCAB, (B, T)).astype(np.int32)
    return {"inputs": jnp.asarray(inputs), "targets": jnp.asarray(targets), "mask": jnp.asarray(mask)}


def _value_and_grads(loss_sum_fn):
    return nnx.jit(lambda m, b: nnx.value_and_grad(lambda m: loss_sum_fn(m, b)[0])(m))


def _flat_grads(grads) -> dict[str, np.ndarray]:
    return {"/".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(grads, nnx.Param))}


def _assert_grads_equal(grads, ref_grads) -> None:
    """Every parameter's gradient equal to the reference's within rtol 1e-5 of its largest entry (none all zero)."""
    g, ref = _flat_grads(grads), _flat_grads(ref_grads)
    assert g.keys() == ref.keys()
    for path in ref:
        scale = np.abs(ref[path]).max()
        assert scale > 0, path
        np.testing.assert_allclose(g[path], ref[path], rtol=1e-5, atol=1e-5 * scale, err_msg=path)


@pytest.mark.parametrize("chunk", [B * T, 5])  # one chunk; several (5 -> 4, the largest divisor of 48 up to 5)
def test_loss_and_grads_equal_reference_float32(chunk, monkeypatch):
    monkeypatch.setattr(model_mod, "LOSS_CHUNK", chunk)
    model, batch = _model(), _batch()
    loss, grads = _value_and_grads(token_loss_sum)(model, batch)
    ref_loss, ref_grads = _value_and_grads(reference_token_loss_sum)(model, batch)
    assert np.isfinite(float(loss))
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-5)
    _assert_grads_equal(grads, ref_grads)


def test_eval_path_count_and_mask_semantics():
    model, batch = _model(), _batch()
    both = nnx.jit(lambda m, b: (token_loss_sum(m, b), reference_token_loss_sum(m, b)))
    (loss, n), (ref_loss, ref_n) = both(model, batch)
    assert float(n) == float(ref_n) == float(batch["mask"].sum())
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-5)
    # Other targets at masked positions (in range or not) change nothing; a trained one does.
    off = np.asarray(batch["mask"]) == 0
    other = np.where(off, (np.asarray(batch["targets"]) + 11) % VOCAB, batch["targets"])
    (same, _), _ = both(model, {**batch, "targets": jnp.asarray(other)})
    assert float(same) == float(loss)
    # An out-of-range target at a trained position gives NaN, as take_along_axis does in the reference.
    on = tuple(np.argwhere(~off)[0])
    bad = np.asarray(batch["targets"]).copy()
    bad[on] = VOCAB
    (nan_loss, _), (nan_ref, _) = both(model, {**batch, "targets": jnp.asarray(bad)})
    assert math.isnan(float(nan_loss)) and math.isnan(float(nan_ref))
    (zero, zero_n), _ = both(model, {**batch, "mask": jnp.zeros_like(batch["mask"])})
    assert (float(zero), float(zero_n)) == (0.0, 0.0)


def test_softcapped_ce_sum_against_formula():
    """The kernel alone, on random (N, D) hidden states: loss and d/dh, d/dw against plain jnp autodiff."""
    N, D, V, cap = 12, 8, 37, 15.0
    k = jax.random.split(jax.random.key(0), 4)
    h = jax.random.normal(k[0], (N, D))
    w = jax.random.normal(k[1], (D, V)) * 3.0
    targets = jax.random.randint(k[2], (N,), 0, V)
    mask = (jax.random.uniform(k[3], (N,)) < 0.7).astype(jnp.float32)
    targets = jnp.where(mask > 0, targets, V + 1)

    def plain(h, w):
        logits = cap * jnp.tanh(h @ w / cap)
        nll = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
        return jnp.sum(jnp.where(mask > 0, nll * mask, 0.0))

    want, (want_dh, want_dw) = jax.jit(jax.value_and_grad(plain, (0, 1)))(h, w)
    for chunk in (N, 4):
        got, (dh, dw) = jax.jit(jax.value_and_grad(lambda h, w: softcapped_ce_sum(h, w, targets, mask, cap, chunk), (0, 1)))(h, w)
        assert float(got) == pytest.approx(float(want), rel=1e-5)
        np.testing.assert_allclose(dh, want_dh, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(dw, want_dw, rtol=1e-5, atol=1e-6)


def test_bf16_compute_close_to_reference():
    """bfloat16 matmuls: the same loss to ~1e-3 and gradients to bfloat16 rounding (the reference rounds them too)."""
    model, batch = _model("bfloat16"), _batch()
    loss, grads = _value_and_grads(token_loss_sum)(model, batch)
    ref_loss, ref_grads = _value_and_grads(reference_token_loss_sum)(model, batch)
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-3)
    g, ref = _flat_grads(grads), _flat_grads(ref_grads)
    for path in ref:
        scale = np.abs(ref[path]).max()
        assert np.abs(g[path] - ref[path]).max() <= 3e-2 * scale, path


@pytest.mark.parametrize("compute_dtype, rtol", [("float32", 1e-5), ("bfloat16", 3e-2)])
def test_row_major_linears_equal_autodiff(compute_dtype, rtol, monkeypatch):
    """model/matmul.py's hand-written linear gradient (used on the CPU) against autodiff of nnx.Linear: same loss, same gradients.

    float32: equal within rtol 1e-5. bfloat16: autodiff rounds the weight gradient to bfloat16 before
    casting it to the float32 parameter; ours keeps the float32 accumulation, so they agree to bf16 rounding.
    """
    import planck.model.matmul as matmul_mod

    model, batch = _model(compute_dtype), _batch()
    assert matmul_mod.use_row_major_gradient()  # the tests run on the CPU: the hand-written path is the default
    loss, grads = _value_and_grads(token_loss_sum)(model, batch)
    monkeypatch.setattr(matmul_mod, "use_row_major_gradient", lambda: False)
    ref_loss, ref_grads = _value_and_grads(token_loss_sum)(model, batch)
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-5 if compute_dtype == "float32" else 1e-3)
    g, ref = _flat_grads(grads), _flat_grads(ref_grads)
    assert g.keys() == ref.keys()
    for path in ref:
        scale = np.abs(ref[path]).max()
        assert scale > 0, path
        assert np.abs(g[path] - ref[path]).max() <= rtol * scale, (path, np.abs(g[path] - ref[path]).max(), scale)


def test_physical_transpose_is_a_transpose():
    from planck.model.matmul import physical_transpose

    a = jnp.arange(12, dtype=jnp.bfloat16).reshape(3, 4)
    np.testing.assert_array_equal(np.asarray(jax.jit(physical_transpose)(a)), np.asarray(a).T)


def test_physical_transpose_swaps_the_last_two_axes_of_a_batch():
    from planck.model.matmul import physical_transpose

    a = jnp.arange(24, dtype=jnp.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(np.asarray(jax.jit(physical_transpose)(a)), np.swapaxes(np.asarray(a), 1, 2))


def test_every_cpu_speed_path_together_equals_the_straightforward_model(monkeypatch):
    """The whole CPU training path (fused loss, row-major linears, folded attention by uneven query blocks) against
    the model as first written (autodiff through full logits, nnx.Linear, jax's XLA attention): float32, rtol 1e-5."""
    import planck.model.attention as attention_mod
    import planck.model.matmul as matmul_mod

    monkeypatch.setattr(attention_mod, "query_block", lambda seq_len: 5)  # T 16: blocks of 5, 5, 5, 1
    # The fast paths are chosen by backend: force them on, so the comparison holds on any machine.
    monkeypatch.setattr(attention_mod, "use_folded_attention", lambda: True)
    monkeypatch.setattr(matmul_mod, "use_row_major_gradient", lambda: True)
    model, batch = _model(), _batch()
    loss, grads = _value_and_grads(token_loss_sum)(model, batch)
    monkeypatch.setattr(attention_mod, "use_folded_attention", lambda: False)
    monkeypatch.setattr(matmul_mod, "use_row_major_gradient", lambda: False)
    ref_loss, ref_grads = _value_and_grads(reference_token_loss_sum)(model, batch)
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-5)
    _assert_grads_equal(grads, ref_grads)
