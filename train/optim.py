"""The optimizer: Muon for the blocks' 2-D matrices, Adam for the embedding and head, gradient clipping, stable-then-linear-decay LR."""

from __future__ import annotations

from typing import Any

import jax
import optax

from .config import OptimConfig
from .muon import muon as muon_optimizer

ADAM_PARAMS = ("embed", "head")  # attribute names in model/gpt.py routed to Adam


def lr_schedule(peak: float, steps: int, stable_fraction: float, final_fraction: float) -> optax.Schedule:
    """Constant `peak` for int(stable_fraction * steps) steps, then linear to final_fraction * peak over int((1 - stable_fraction) * steps) steps.

    The step counts are the original PlanckGPT's (optax.linear_schedule with transition_begin =
    int(s * steps), transition_steps = int((1 - s) * steps), floats truncated as it does), so every
    phase's LR matches it step for step: the decay ends on the last step (index steps - 1) when
    s * steps has a fraction (pretrain 5,277 x 0.55, midtrain 797 x 0.8), and one step past the last
    when it is whole (SFT's s = 0: its last step runs at peak / steps, never at 0).
    """
    stable = int(stable_fraction * steps)
    decay = int((1 - stable_fraction) * steps)
    if decay <= 0:  # s = 1 (or a run too short to decay): constant, as optax's linear_schedule does
        return lambda step: peak + 0.0 * step

    def schedule(step):
        progress = jax.numpy.clip((step - stable) / decay, 0.0, 1.0)
        return peak * (1.0 - (1.0 - final_fraction) * progress)

    return schedule


def _path_names(path) -> list[str]:
    return [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]


def param_labels(params: Any) -> Any:
    """'adam' for the embedding and head, 'muon' for every other 2-D matrix (Muon's defaults would take all 2-D ones)."""

    def label(path, leaf):
        names = _path_names(path)
        if any(n in ADAM_PARAMS for n in names) or getattr(leaf, "ndim", 0) != 2:
            return "adam"
        return "muon"

    return jax.tree_util.tree_map_with_path(label, params)


def gradient_clip(cfg: OptimConfig) -> optax.GradientTransformation:
    """Scale the gradients to at most cfg.clip_norm: over all of them ("global"), or Muon's and Adam's each ("per_group")."""
    clip = optax.clip_by_global_norm(cfg.clip_norm)
    if cfg.clip == "per_group":
        # The original's: each of its two optimizers clips its own gradients, so the blocks' large
        # early gradients do not shrink the embedding's and head's step (nor the other way round).
        return optax.multi_transform({"muon": clip, "adam": clip}, param_labels)
    return clip


def make_optimizer(cfg: OptimConfig, steps: int) -> optax.GradientTransformation:
    """Clip (cfg.clip), then {Muon on block matrices, Adam on embedding/head}, each with its own LR schedule."""
    # optax.contrib.muon's update and state tree, with 2-D Newton-Schulz matmuls (train/muon.py says why).
    muon = muon_optimizer(
        lr_schedule(cfg.muon_lr, steps, cfg.stable_fraction, cfg.final_lr_fraction),
        beta=cfg.muon_momentum,
    )
    adam = optax.adam(
        lr_schedule(cfg.adam_lr, steps, cfg.stable_fraction, cfg.final_lr_fraction),
        b1=cfg.adam_b1,
        b2=cfg.adam_b2,
        eps=cfg.adam_eps,
    )
    return optax.chain(gradient_clip(cfg), optax.multi_transform({"muon": muon, "adam": adam}, param_labels))
