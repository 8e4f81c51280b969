"""Where we follow the original PlanckGPT and where we chose otherwise (README "Differences from the original PlanckGPT").

The LR schedule must equal the original's (optax.linear_schedule with its step counts) at every
step of each phase; the original's optimizer and init choices must be reachable through typed,
validated config options and do what the original does; they are the defaults since the A/B.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from planck.model.config import ConfigError, ModelConfig
from planck.model.gpt import GPT, kernel_init, original_init
from planck.train.config import OptimConfig, load_config
from planck.train.optim import gradient_clip, lr_schedule, make_optimizer


def original_schedule(peak: float, total: int, stable_range: float, max_decay: float):
    """The original's train_model schedule, as it builds it (model.py: optax.linear_schedule)."""
    return optax.linear_schedule(peak, peak * max_decay, transition_steps=int((1 - stable_range) * total),
                                 transition_begin=int(stable_range * total))


# (phase, steps, stable_fraction, final_fraction): the original's three runs, and the tiny preset's.
PHASES = [("pretrain", 5277, 0.55, 0.1), ("midtrain", 797, 0.8, 0.1), ("sft", 20, 0.0, 0.0),
          ("tiny pretrain", 200, 0.55, 0.1), ("tiny sft", 150, 0.0, 0.0)]


@pytest.mark.parametrize("phase,steps,stable,final", PHASES, ids=[p[0] for p in PHASES])
def test_lr_schedule_is_the_originals_at_every_step(phase, steps, stable, final):
    ours, theirs = lr_schedule(0.06, steps, stable, final), original_schedule(0.06, steps, stable, final)
    every = jnp.arange(steps)
    np.testing.assert_allclose(np.asarray(ours(every)), np.asarray(theirs(every)), rtol=1e-6, atol=0)


def test_lr_schedule_boundary_steps():
    # Pretrain: constant through step 2,902 (= int(0.55 * 5277)), decaying from 2,903, 0.1x on the last (5,276).
    s = lr_schedule(1.0, 5277, 0.55, 0.1)
    assert float(s(2902)) == 1.0 and float(s(2903)) < 1.0
    assert float(s(5276)) == pytest.approx(0.1, abs=1e-7) and float(s(5275)) > 0.1
    # Midtrain: int(0.8 * 797) = 637, so step 637 is the last at the peak and 638 the first decayed
    # (rounding 637.6 up, as we did before, kept 638 at the peak).
    m = lr_schedule(1.0, 797, 0.8, 0.1)
    assert float(m(637)) == 1.0 and float(m(638)) == pytest.approx(1 - 0.9 / 159, abs=1e-7)
    assert float(m(796)) == pytest.approx(0.1, abs=1e-7)
    # SFT: decays from the first step over int(1.0 * 20) = 20 steps, so the last step (19) still
    # runs at 1/20 of the peak; 0 is reached only at step 20, after the run.
    f = lr_schedule(1.0, 20, 0.0, 0.0)
    assert float(f(0)) == 1.0 and float(f(1)) == pytest.approx(0.95, abs=1e-7)
    assert float(f(19)) == pytest.approx(0.05, abs=1e-7) and float(f(20)) == 0.0
    # All stable: constant (optax's linear_schedule with no transition steps).
    assert float(lr_schedule(1.0, 10, 1.0, 0.0)(9)) == 1.0


def grads_tree() -> dict:
    """Gradients shaped like a model's: the block matrix has norm 3, the embedding 4 (global norm 5)."""
    return {"blocks": {"0": {"w": jnp.full((2, 2), 1.5)}},  # sqrt(4 * 1.5^2) = 3
            "embed": {"embedding": jnp.full((4, 4), 1.0)}}  # sqrt(16) = 4


def norms(tree) -> tuple[float, float]:
    return float(optax.tree.norm(tree["blocks"])), float(optax.tree.norm(tree["embed"]))


def test_global_clip_scales_all_gradients_by_one_factor():
    g = grads_tree()
    tx = gradient_clip(OptimConfig(clip="global", clip_norm=1.0))
    out, _ = tx.update(g, tx.init(g))
    assert norms(out) == pytest.approx((3 / 5, 4 / 5), rel=1e-6)


def test_per_group_clip_clips_each_group_to_its_own_norm():
    g = grads_tree()
    tx = gradient_clip(OptimConfig(clip="per_group", clip_norm=1.0))
    out, _ = tx.update(g, tx.init(g))
    assert norms(out) == pytest.approx((1.0, 1.0), rel=1e-6)
    # A group already within the norm is left as it is, whatever the other group's size.
    small = {"blocks": {"0": {"w": jnp.full((2, 2), 0.1)}}, "embed": g["embed"]}
    out, _ = tx.update(small, tx.init(small))
    assert norms(out) == pytest.approx((0.2, 1.0), rel=1e-6)


@pytest.mark.parametrize("eps", [1e-10, 1e-8])
def test_adam_eps_reaches_the_optimizer(eps):
    """Adam's first step is lr * g / (|g| + eps): with |g| = 1e-9 the eps decides its size."""
    params = {"blocks": {"0": {"w": jnp.ones((2, 2))}}, "embed": {"embedding": jnp.zeros((3, 2))}}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-9), params)
    cfg = OptimConfig(adam_lr=1.0, adam_eps=eps, stable_fraction=1.0)
    tx = make_optimizer(cfg, steps=10)
    updates, _ = tx.update(grads, tx.init(params), params)
    got = float(updates["embed"]["embedding"][0, 0])
    assert got == pytest.approx(-1e-9 / (1e-9 + eps), rel=1e-4)


def small_cfg(**kw) -> ModelConfig:
    return ModelConfig(vocab_size=512, seq_len=16, n_layer=2, d_model=96, n_head=6, n_kv_head=1, head_dim=16,
                       compute_dtype="float32", **kw)


def test_original_init_gives_the_originals_stds():
    model = GPT(small_cfg(init="original", head_init_std=0.0), rngs=nnx.Rngs(0))
    d = 96
    for block in model.blocks:
        q, k, v, up = (np.asarray(lin.kernel[...]) for lin in (block.attn.q, block.attn.k, block.attn.v, block.mlp.up))
        assert q.std() == pytest.approx(1 / math.sqrt(d), rel=0.05)  # square: 1/sqrt(fan_in)
        assert up.std() == pytest.approx(1 / math.sqrt(d), rel=0.05)  # wider: capped at 1/sqrt(fan_in)
        for w in (k, v):  # narrower (96 -> 16): times sqrt(16 / 96)
            assert w.std() == pytest.approx(math.sqrt(16 / d) / math.sqrt(d), rel=0.1)
        # Normal, not uniform: a uniform draw never passes sqrt(3) standard deviations.
        assert np.abs(up).max() > math.sqrt(3) * up.std() * 1.3
        assert not np.any(np.asarray(block.attn.out.kernel[...])) and not np.any(np.asarray(block.mlp.down.kernel[...]))
    assert not np.any(np.asarray(model.head.kernel[...]))  # zeros, as the original's output layer


def test_at_the_full_shape_the_uniform_kv_init_is_2_45x_the_originals():
    """The figure the README quotes: planck150m's K/V projection is 768 -> 128."""
    key = jax.random.key(0)
    ours = np.asarray(kernel_init(small_cfg(init="uniform_fan_in"))(key, (768, 128), jnp.float32))
    theirs = np.asarray(original_init(key, (768, 128), jnp.float32))
    assert ours.std() / theirs.std() == pytest.approx(math.sqrt(768 / 128), rel=0.03)  # 2.449


def test_init_options_keep_the_other_draws():
    """Only the chosen kernels change: the embedding is the same draw, so an A/B compares inits alone."""
    a = GPT(small_cfg(init="uniform_fan_in", head_init_std=0.001), rngs=nnx.Rngs(3))
    b = GPT(small_cfg(), rngs=nnx.Rngs(3))
    np.testing.assert_array_equal(np.asarray(a.embed.embedding[...]), np.asarray(b.embed.embedding[...]))
    assert np.asarray(a.head.kernel[...]).std() == pytest.approx(0.001, rel=0.05)


@pytest.mark.parametrize("override,needle", [
    ("optim.clip=both", "optim.clip"),
    ("optim.adam_eps=0", "optim.adam_eps"),
    ("optim.adam_eps=tiny", "optim.adam_eps"),
    ("optim.clip_norm=0", "optim.clip_norm"),
    ("optim.muon_lr=-0.01", "optim.muon_lr = -0.01 must be a finite number >= 0"),
    ("optim.adam_lr=nan", "optim.adam_lr = nan must be a finite number >= 0"),
    ("optim.adam_lr=inf", "optim.adam_lr = inf must be a finite number >= 0"),
    ("optim.adam_b2=1", "optim.adam_b2 = 1.0 must be within"),
    ("optim.muon_momentum=-0.5", "optim.muon_momentum"),
    ("optim.adam_b1=nan", "optim.adam_b1"),
    ("optim.adam_epsilon=1e-8", "unknown config key 'optim.adam_epsilon'"),
    ("model.init=xavier", "model.init"),
    ("model.head_init_std=-1", "model.head_init_std"),
    ("model.initialisation=original", "unknown config key 'model.initialisation'"),
])
def test_options_are_typed_and_validated(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config("tiny", "pretrain", [override])


@pytest.mark.parametrize("preset", ["tiny", "planck150m"])
def test_defaults_are_the_originals_choices(preset):
    """The A/B (bench/ab_original.py) kept the original's four choices; no preset overrides them."""
    cfg = load_config(preset, "pretrain")
    assert (cfg.optim.adam_eps, cfg.optim.clip, cfg.model.init, cfg.model.head_init_std) == (1e-8, "per_group", "original", 0.0)


def test_options_parse_from_the_command_line():
    cfg = load_config("tiny", "pretrain", ["optim.adam_eps=1e-10", "optim.clip=global", "model.init=uniform_fan_in",
                                           "model.head_init_std=0.001"])
    assert (cfg.optim.adam_eps, cfg.optim.clip, cfg.model.init, cfg.model.head_init_std) == (1e-10, "global", "uniform_fan_in", 0.001)


def test_a_run_folder_older_than_these_options_resumes(tmp_path):
    """config.json written before optim.adam_eps/clip and model.init existed: the defaults are no change."""
    import json

    from planck.schemas.run_folder import RunFolder
    from planck.train.loop import check_run_folder

    cfg = load_config("tiny", "pretrain")
    run = RunFolder(tmp_path / "run")
    assert check_run_folder(run, cfg, "pretrain", tmp_path) == {}  # writes config.json
    saved = json.loads(run.config.read_text())
    for section, key in (("optim", "adam_eps"), ("optim", "clip"), ("model", "init"), ("model", "head_init_std")):
        del saved["config"][section][key]
    run.config.write_text(json.dumps(saved))
    assert check_run_folder(run, cfg, "pretrain", tmp_path) == {}
    # The same folder with one of them set otherwise is a different run, refused with its name.
    from planck.train.loop import TrainingError

    with pytest.raises(TrainingError, match="optim.clip"):
        check_run_folder(run, load_config("tiny", "pretrain", ["optim.clip=global"]), "pretrain", tmp_path)
