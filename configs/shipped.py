"""Find a file shipped in configs/ (presets, mixtures) in an editable checkout or an installed wheel."""

from __future__ import annotations

from pathlib import Path


def shipped_file(subfolder: str, name: str) -> Path | None:
    """configs/SUBFOLDER/NAME if it exists; the folders are namespace packages, so search their __path__."""
    import importlib

    package = importlib.import_module(f"planck.configs.{subfolder}")
    for folder in package.__path__:
        candidate = Path(folder) / name
        if candidate.is_file():
            return candidate
    return None
