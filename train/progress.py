"""The trainer's progress bar: steps done, the rate and the time left, with the compiling first step kept out."""

from __future__ import annotations

from typing import Any

from tqdm import tqdm


class StepBar(tqdm):
    """A tqdm bar over optimizer steps whose rate and time left count only the steps after this process's first.

    That step includes XLA's compilation (seconds to minutes): counted into the rate it would show e.g.
    29 s/step and hours left for a run of 0.2 s steps. Until a second step finishes the bar shows no rate.
    """

    def __init__(self, total: int, initial: int = 0, **kwargs: Any):
        self._compiled_at: float | None = None  # set before tqdm's first draw, which reads format_dict
        if initial < total:  # a finished run re-run compiles nothing
            kwargs.setdefault("postfix", "compiling the train step")
        super().__init__(total=total, initial=initial, **kwargs)

    def update(self, n: int = 1) -> bool | None:
        """Count `n` finished steps; the first call starts the rate's clock instead of feeding it."""
        if self._compiled_at is not None or self.disable:
            return super().update(n)
        self._compiled_at = self._time()
        first = self._compiled_at - self.start_t
        self.n += n
        # tqdm's smoothed rate starts from the last print and its average rate is (n - initial) / time (see
        # format_dict): both begin here, so the compile time never enters the rate or the time left.
        self.initial = self.n
        self.last_print_n, self.last_print_t = self.n, self._compiled_at
        self.set_postfix_str(f"first step {first:.1f}s (compiling)", refresh=False)
        self.refresh()
        return True

    @property
    def format_dict(self) -> dict[str, Any]:
        """tqdm's figures, with the average rate (shown at the end, or before smoothing has a value) over the
        compiled steps' own time: tqdm's would divide them by an elapsed time that includes the compilation."""
        d = super().format_dict
        if d["rate"] is None and self._compiled_at is not None:
            seconds = self._time() - self._compiled_at
            d["rate"] = (self.n - self.initial) / seconds if seconds > 0 and self.n > self.initial else None
        return d
