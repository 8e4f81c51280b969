"""The GPT (model/gpt.py) on the tiny config, on CPU: shapes, parameter count, init, causality, masking, learning."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from planck.model.gpt import GPT, count_params, flops_per_token, param_count_formula, rms_norm, rope
from planck.model.loss import token_loss_sum
from planck.train.config import load_config
from planck_testing import loss_fn

# Compiled once per config and shape: op-by-op (eager) execution of the model costs seconds on a small CPU.
forward = nnx.jit(lambda model, tokens_BxT: model(tokens_BxT))
TOKENS_SHAPE = (2, 24)  # one shape for every forward call: one compilation per model config


@pytest.fixture(scope="module")
def cfg():
    """The tiny preset's ModelConfig (float32 compute)."""
    return load_config("tiny").model


@pytest.fixture(scope="module")
def fresh(cfg):
    """A freshly initialised tiny model (tests must not change it)."""
    return GPT(cfg, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def live(fresh):
    """The fresh model with live_weights applied (tests must not change it)."""
    return live_weights(nnx.clone(fresh))


def live_weights(model: GPT, seed: int = 1, head_scale: float = 100.0) -> GPT:
    """Give the zero-initialised projections random values and enlarge the head, so every path carries signal; in place."""
    key = jax.random.key(seed)
    for block in model.blocks:
        for lin in (block.attn.out, block.mlp.down):
            key, sub = jax.random.split(key)
            fan_in = lin.kernel.shape[0]
            lin.kernel[...] = jax.random.normal(sub, lin.kernel.shape) / math.sqrt(fan_in)
    # The head starts at zero (the original's init): draw it as a 0.001-std normal, times head_scale.
    model.head.kernel[...] = jax.random.normal(jax.random.fold_in(key, 1), model.head.kernel.shape) * 0.001 * head_scale
    return model


def random_tokens(cfg, shape, seed=0):
    return jax.random.randint(jax.random.key(seed), shape, 0, cfg.vocab_size, dtype=jnp.int32)


def test_logits_shape_dtype_and_softcap(cfg, fresh):
    tokens = random_tokens(cfg, TOKENS_SHAPE)
    logits = forward(fresh, tokens)
    assert logits.shape == (*TOKENS_SHAPE, cfg.vocab_size)
    assert logits.dtype == jnp.float32
    # A huge head would give logits far beyond the cap without the tanh.
    model = live_weights(nnx.clone(fresh), head_scale=10_000.0)
    logits = np.asarray(forward(model, tokens))
    assert np.all(np.isfinite(logits))
    assert np.abs(logits).max() <= cfg.logit_softcap
    assert np.abs(logits).max() > 0.9 * cfg.logit_softcap  # the cap is actually reached, not a rescale to tiny values


def test_param_count_matches_formula_tiny_and_150m(cfg, fresh):
    assert count_params(fresh) == param_count_formula(cfg)
    big = load_config("planck150m").model
    abstract = nnx.eval_shape(lambda: GPT(big, rngs=nnx.Rngs(0)))  # shapes only: nothing 150M-sized is allocated
    n = count_params(abstract)
    assert n == param_count_formula(big)
    assert 140e6 <= n <= 160e6
    # 6 * (blocks + head) + attention; a hand-computed figure guards the formula itself.
    blocks = 12 * (768 * 768 * 2 + 2 * 768 * 128 + 2 * 768 * 3072)
    assert flops_per_token(big) == 6 * (blocks + 768 * 50304) + 12 * 12 * 6 * 128 * 1024


def test_param_tree_names_route_embed_and_head(cfg, fresh):
    params = nnx.state(fresh, nnx.Param)
    paths = {"/".join(map(str, p)): v.shape for p, v in nnx.to_flat_state(params)}
    assert paths["embed/embedding"] == (cfg.vocab_size, cfg.d_model)
    assert paths["head/kernel"] == (cfg.d_model, cfg.vocab_size)
    assert paths["blocks/0/attn/q/kernel"] == (cfg.d_model, cfg.n_head * cfg.head_dim)
    assert paths["blocks/0/attn/k/kernel"] == (cfg.d_model, cfg.n_kv_head * cfg.head_dim)
    others = [p for p in paths if not p.startswith(("embed/", "head/"))]
    assert len(others) == 6 * cfg.n_layer and all(len(paths[p]) == 2 for p in others)
    hash(nnx.graphdef(fresh))  # static module settings are hashable, so a graphdef can be a jit static argument


def test_init_distributions(fresh):
    model = fresh
    for block in model.blocks:
        assert not np.any(np.asarray(block.attn.out.kernel[...]))
        assert not np.any(np.asarray(block.mlp.down.kernel[...]))
        for lin in (block.attn.q, block.attn.k, block.attn.v, block.mlp.up):
            w = np.asarray(lin.kernel[...])
            fan_in, fan_out = w.shape
            # The original's: normal, 1/sqrt(fan_in), shrunk by sqrt(fan_out/fan_in) for narrow outputs (K/V).
            assert w.std() == pytest.approx(min(1, math.sqrt(fan_out / fan_in)) / math.sqrt(fan_in), rel=0.1)
    assert not np.any(np.asarray(model.head.kernel[...]))  # zeros: the first logits are all 0, the loss ln(vocab)
    assert np.asarray(model.embed.embedding[...]).std() == pytest.approx(1.0, rel=0.05)
    assert model.head.kernel[...].dtype == jnp.float32


def test_causal(cfg, live):
    tokens = random_tokens(cfg, TOKENS_SHAPE)
    t = 10
    changed = tokens.at[:, t].set((tokens[:, t] + 1) % cfg.vocab_size)
    before, after = np.asarray(forward(live, tokens)), np.asarray(forward(live, changed))
    np.testing.assert_array_equal(before[:, :t], after[:, :t])
    # ... while the change does reach later positions, through attention.
    assert np.abs(before[:, t + 1 :] - after[:, t + 1 :]).max() > 1e-3


def test_attention_sees_token_order(cfg, live):
    # Without position information one attention layer sees a query's earlier inputs as an
    # unordered set: swapping two of them would leave every later output unchanged.
    attn = live.blocks[0].attn
    x = jax.random.normal(jax.random.key(3), (*TOKENS_SHAPE, cfg.d_model))
    swapped = x.at[:, 2].set(x[:, 5]).at[:, 5].set(x[:, 2])
    run = nnx.jit(lambda attn, x: attn(x, jnp.arange(x.shape[1])[None])[0])
    before, after = np.asarray(run(attn, x)), np.asarray(run(attn, swapped))
    assert np.abs(before[:, 6:] - after[:, 6:]).max() > 1e-2


def test_rope_rotation_commutes_with_norm_and_is_relative():
    x = jax.random.normal(jax.random.key(0), (1, 8, 2, 16))
    pos = jnp.arange(8)[None]
    np.testing.assert_allclose(rope(x, jnp.zeros((1, 8), jnp.int32), 10000.0), x, atol=1e-6)  # position 0: identity
    # Why the model's order (RoPE, then QK-norm) is immaterial: a rotation keeps each head vector's length.
    np.testing.assert_allclose(rms_norm(rope(x, pos, 10000.0)), rope(rms_norm(x), pos, 10000.0), atol=1e-5)

    @jax.jit
    def score(m, n):  # q.k of two fixed vectors placed at positions m and n
        return jnp.sum(rope(x[:, :1, :1], m[None, None], 100.0) * rope(x[:, 1:2, :1], n[None, None], 100.0))

    # ... and q.k after RoPE depends only on the distance between the positions.
    dots = [float(score(jnp.int32(m + 3), jnp.int32(m))) for m in (0, 5, 40)]
    np.testing.assert_allclose(dots, dots[0], rtol=1e-4)
    assert abs(float(score(jnp.int32(4), jnp.int32(0))) - dots[0]) > 1e-3


def prose_batch(batch: int = 8, seq: int = 64) -> dict[str, jnp.ndarray]:
    """(batch, seq) next-token windows of real English prose, all positions trained."""
    from planck.schemas.tokenizer import get_tokenizer
    from planck.tokenize.embedded import embedded_rows

    enc = get_tokenizer()
    ids: list[int] = []
    for row in embedded_rows():
        ids += enc.encode_ordinary(row["text"])
        if len(ids) > batch * (seq + 1):
            break
    arr = np.asarray(ids[: batch * (seq + 1)], np.int32).reshape(batch, seq + 1)
    return {"inputs": jnp.asarray(arr[:, :-1]), "targets": jnp.asarray(arr[:, 1:]), "mask": jnp.ones((batch, seq), jnp.float32)}


def test_loss_falls_on_prose(cfg):
    batch = prose_batch()
    # The prose's ids renumbered densely (same text, same token sequence): the 50,304-wide head costs
    # ~1 s per step on a 2-core CPU, a 512-wide one keeps 40 steps within the file's time budget.
    ids, dense = np.unique(np.stack([batch["inputs"], batch["targets"]]), return_inverse=True)
    assert len(ids) <= 512
    dense = jnp.asarray(dense.reshape(2, *batch["inputs"].shape), jnp.int32)
    batch = {**batch, "inputs": dense[0], "targets": dense[1]}
    cfg = dataclasses.replace(cfg, vocab_size=512)
    model = GPT(cfg, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, batch):
        loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
        opt.update(model, grads)
        return loss

    losses = [float(step(model, opt, batch)) for _ in range(40)]
    assert abs(losses[0] - math.log(cfg.vocab_size)) < 1.0
    assert losses[-1] < 0.7 * losses[0], losses


def test_mask_excludes_targets_exactly(cfg, live):
    # One compiled function for every call below: (loss_sum, n_tokens), loss.
    losses = nnx.jit(lambda model, batch: (token_loss_sum(model, batch), loss_fn(model, batch)))
    rng = np.random.default_rng(0)
    targets = np.asarray(random_tokens(cfg, TOKENS_SHAPE, seed=2))
    mask = jnp.asarray(rng.random(TOKENS_SHAPE) < 0.5, jnp.float32)
    batch = {"inputs": random_tokens(cfg, TOKENS_SHAPE, seed=1), "targets": jnp.asarray(targets), "mask": mask}
    (loss_sum, n), loss = losses(live, batch)
    assert float(n) == float(mask.sum()) > 0
    assert float(loss) == pytest.approx(float(loss_sum) / float(n), rel=1e-6)

    off = np.asarray(mask) == 0
    # Other targets where mask == 0, even out-of-range ones, change nothing, bit for bit.
    other = np.where(off, (targets + 7) % cfg.vocab_size, targets)
    other[np.nonzero(off)[0][0], np.nonzero(off)[1][0]] = cfg.vocab_size + 5
    (same, _), _ = losses(live, {**batch, "targets": jnp.asarray(other)})
    assert float(same) == float(loss_sum)

    b, t = np.argwhere(~off)[0]
    on = targets.copy()
    on[b, t] = (on[b, t] + 7) % cfg.vocab_size
    (changed, _), _ = losses(live, {**batch, "targets": jnp.asarray(on)})
    assert float(changed) != float(loss_sum)

    (zero_sum, zero_n), zero_loss = losses(live, {**batch, "mask": jnp.zeros_like(mask)})
    assert (float(zero_sum), float(zero_n), float(zero_loss)) == (0.0, 0.0, 0.0)


def test_bf16_compute_close_to_float32(cfg, live):
    bf16 = GPT(dataclasses.replace(cfg, compute_dtype="bfloat16"), rngs=nnx.Rngs(0))
    nnx.update(bf16, nnx.state(live, nnx.Param))
    assert bf16.head.kernel[...].dtype == jnp.float32  # parameters stay float32
    tokens = random_tokens(cfg, TOKENS_SHAPE)
    a, b = np.asarray(forward(live, tokens)), np.asarray(forward(bf16, tokens))
    assert b.dtype == np.float32
    scale = np.abs(a).max()
    assert scale > 1.0
    err = np.abs(a - b).max()
    assert err < 0.05 * scale, (err, scale)
    assert err > 0  # it really ran in bfloat16


def test_remat_same_loss_and_grads(cfg, live):
    batch = prose_batch(batch=2, seq=32)
    grad_fn = nnx.value_and_grad(loss_fn)

    def grad_jaxpr(model: GPT) -> str:
        graphdef, state = nnx.split(model)
        return str(jax.make_jaxpr(lambda state: grad_fn(nnx.merge(graphdef, state), batch))(state))

    models = {}
    for remat in (False, True):
        model = GPT(dataclasses.replace(cfg, remat=remat), rngs=nnx.Rngs(0))
        nnx.update(model, nnx.state(live, nnx.Param))
        assert grad_jaxpr(model).count("remat") == (cfg.n_layer if remat else 0)  # one checkpointed region per block
        models[remat] = model
    # Both gradients in one compiled program: one compilation instead of two.
    (loss, grads), (loss_remat, grads_remat) = nnx.jit(lambda a, b: (grad_fn(a, batch), grad_fn(b, batch)))(models[False], models[True])
    assert float(loss_remat) == pytest.approx(float(loss), rel=1e-6)
    flat = dict(nnx.to_flat_state(nnx.state(grads, nnx.Param)))
    flat_remat = nnx.to_flat_state(nnx.state(grads_remat, nnx.Param))
    assert len(flat_remat) == len(flat)
    for path, g in flat_remat:
        np.testing.assert_allclose(np.asarray(g[...]), np.asarray(flat[path][...]), rtol=1e-4, atol=1e-6, err_msg=str(path))
