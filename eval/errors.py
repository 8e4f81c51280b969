"""Evaluation's expected failures (no JAX here: the `planck` command imports this to catch them)."""

from planck.schemas.errors import PlanckError


class EvalError(PlanckError):
    """An evaluation that cannot run as asked; the message says what to change."""
