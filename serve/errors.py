"""Serving's expected failures (no JAX here: the `planck` command imports this to catch them)."""


class CheckpointError(Exception):
    """A checkpoint that cannot be served; the message names the path and what is wrong."""
