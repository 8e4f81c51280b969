"""The installed planck version, from the distribution's metadata (recorded in manifests and shown by --version)."""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def planck_version() -> str:
    """The installed distribution's version ("0+unknown" when running from an uninstalled tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("planckgpt")
    except PackageNotFoundError:
        return "0+unknown"
