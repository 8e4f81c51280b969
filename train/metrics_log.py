"""The per-step record: rows of metrics.jsonl (the source of truth), the progress bar, and the optional trackers."""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from planck.model.gpt import flops_per_token
from planck.schemas.run_folder import RunFolder

from .config import RunConfig
from .devices import peak_flops
from .meter import Meter
from .optim import lr_schedule
from .progress import StepBar
from .trackers import Trackers


class MetricsLog:
    """Builds a row every log_every steps (loss, both LRs, tokens/s, MFU on known GPUs, grad norm), adds validation
    scores when given, and writes rows to metrics.jsonl, the trackers and the bar. Use as a context manager."""

    def __init__(self, cfg: RunConfig, run: RunFolder, phase: str, tokens_per_step: int, start_step: int,
                 is_main: bool, show_progress: bool):
        t, o = cfg.train, cfg.optim
        self.cfg, self.run, self.is_main = cfg, run, is_main
        self.muon_lr = lr_schedule(o.muon_lr, t.steps, o.stable_fraction, o.final_lr_fraction)
        self.adam_lr = lr_schedule(o.adam_lr, t.steps, o.stable_fraction, o.final_lr_fraction)
        self.fpt, self.peak = flops_per_token(cfg.model), peak_flops()
        self.meter = Meter(tokens_per_step)
        self.first_step = start_step + 1  # this process's first step: it compiles
        self.bar = StepBar(total=t.steps, initial=start_step, desc=f"train {phase}", unit="step",
                           disable=not (show_progress and is_main), dynamic_ncols=True)
        self.trackers = Trackers(cfg.log, run, cfg.to_dict(), start_step, enabled=is_main)
        self._file = open(run.metrics if is_main else os.devnull, "a")
        self.last: dict[str, Any] = {}

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
        self._file.close()
        self.trackers.close()

    def step(self, step: int, loss: float, trained_tokens, grad_norm, tokens_seen: int,
             validate: Callable[[], dict[str, float]] | None) -> None:
        """Record a finished step: a row on log steps, and on evaluation steps `validate()`'s scores (run after the
        throughput window closes, so evaluation time is not counted as training time)."""
        self.bar.update(1)
        t = self.cfg.train
        if step % t.log_every == 0 or step == t.steps:
            window = self.meter.window()
            tps = window["tokens_per_sec"]
            self.last = {
                "step": step, "loss": loss, "lr": float(self.muon_lr(step - 1)), "adam_lr": float(self.adam_lr(step - 1)),
                "tokens_per_sec": tps, "tokens_seen": tokens_seen, "grad_norm": float(grad_norm),
                "trained_tokens": float(trained_tokens),
            }
            if self.peak:
                self.last["mfu"] = self.fpt * tps / self.peak
            if "compile_s" in window:
                self.last["compile_s"] = window["compile_s"]
            postfix = {"loss": f"{loss:.3f}"}
            if step == self.first_step:  # a window of the compiling step alone: its rate would be the compile time's
                postfix["compile"] = f"{window.get('compile_s', 0.0):.1f}s"
            else:
                postfix["tok/s"] = f"{tps:,.0f}"
            if self.peak and step != self.first_step:
                postfix["mfu"] = f"{100 * self.last['mfu']:.1f}%"
            self.bar.set_postfix(postfix, refresh=False)
        if validate is not None:
            self.last = {**self.last, "step": step, **validate()}
        if self.last.get("step") == step:
            self._file.write(json.dumps(self.last) + "\n")
            self._file.flush()
            self.trackers.log(self.last)
