"""Progress bars for long jobs: tokens/s and ETA on a terminal, silent when asked."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(total: int | None, desc: str, enabled: bool = True, initial: int = 0, unit: str = "tok") -> tqdm:
    """A tqdm bar counting `unit`s: tokens with SI prefixes (1.2Mtok/s), rows and documents as whole numbers; disabled bars cost nothing."""
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        unit_scale=unit == "tok",  # SI scaling prints small counts as floats: "31.0row"
        dynamic_ncols=True,
        disable=not enabled,
        file=sys.stderr,
        mininterval=0.5,
    )
