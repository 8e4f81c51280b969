"""Evaluation's expected failures (no JAX here: the `planck` command imports this to catch them)."""


class EvalError(Exception):
    """An evaluation that cannot run as asked; the message says what to change."""
