"""Errors the trainer reports as one clear line (kept free of JAX imports so the CLI can catch them cheaply)."""

from planck.schemas.errors import PlanckError


class TrainingError(PlanckError, RuntimeError):
    """A run that cannot start or must stop (divergence, mismatched run folder); the message says what to do."""
