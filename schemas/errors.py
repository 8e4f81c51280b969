"""The one base class of every expected failure: the `planck` command prints its message as one line and exits 1."""


class PlanckError(Exception):
    """A failure the user can act on; the message names the file, key or value and what to do."""
