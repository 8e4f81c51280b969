"""Throughput bookkeeping: tokens per second over each log window, with the compiling first step kept apart."""

from __future__ import annotations

import time


class Meter:
    """Counts tokens between log lines; the first step of a process (compilation included) is reported as compile_s."""

    def __init__(self, tokens_per_step: int):
        self.tokens_per_step = tokens_per_step
        self.compile_s: float | None = None
        self._compile_logged = False
        self._t0 = time.perf_counter()
        self._tokens = 0

    def step_started(self) -> float:
        """The clock at the start of a step (pass it to step_done)."""
        return time.perf_counter()

    def step_done(self, started: float) -> None:
        """Count one finished optimizer step."""
        if self.compile_s is None:
            self.compile_s = time.perf_counter() - started
            # tokens/s starts after the compiling step: it is reported as compile_s instead
            self._t0, self._tokens = time.perf_counter(), 0
            return
        self._tokens += self.tokens_per_step

    def window(self) -> dict[str, float]:
        """tokens_per_sec since the last window (and compile_s the first time); starts a new window."""
        elapsed = time.perf_counter() - self._t0
        # A window holding only the compiling step reports that step's rate, compilation included.
        tps = self._tokens / elapsed if self._tokens > 0 else self.tokens_per_step / self.compile_s
        out = {"tokens_per_sec": tps}
        if not self._compile_logged:
            out["compile_s"] = self.compile_s
            self._compile_logged = True
        self._t0, self._tokens = time.perf_counter(), 0
        return out
