"""The optimizer: Muon for the blocks' 2-D matrices, Adam for the embedding and head, global-norm clipping, stable-then-linear-decay LR."""

from __future__ import annotations

from typing import Any

import jax
import optax

from .config import OptimConfig

ADAM_PARAMS = ("embed", "head")  # attribute names in model/gpt.py routed to Adam


def lr_schedule(peak: float, steps: int, stable_fraction: float, final_fraction: float) -> optax.Schedule:
    """Constant `peak` for the first stable_fraction of the steps, then linear to final_fraction * peak at the last step."""
    stable = int(round(steps * stable_fraction))
    decay = max(steps - 1 - stable, 1)

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


def make_optimizer(cfg: OptimConfig, steps: int) -> optax.GradientTransformation:
    """clip(global norm) -> {Muon on block matrices, Adam on embedding/head}, each with its own LR schedule."""
    muon = optax.contrib.muon(
        lr_schedule(cfg.muon_lr, steps, cfg.stable_fraction, cfg.final_lr_fraction),
        beta=cfg.muon_momentum,
    )
    adam = optax.adam(
        lr_schedule(cfg.adam_lr, steps, cfg.stable_fraction, cfg.final_lr_fraction),
        b1=cfg.adam_b1,
        b2=cfg.adam_b2,
        eps=1e-10,
    )
    return optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.multi_transform({"muon": muon, "adam": adam}, param_labels),
    )
