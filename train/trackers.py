"""Experiment trackers beside metrics.jsonl (which stays the record): TensorBoard event files and Weights & Biases.

Both are optional extras, imported only when the run config asks for them (log.tensorboard, log.wandb).
"""

from __future__ import annotations

import hashlib
from typing import Any

from planck.schemas.run_folder import RunFolder

from .config import LogConfig
from .errors import TrainingError

# metrics.jsonl keys and the chart each goes to.
CHARTS = {"loss": "train/loss", "lr": "train/lr_muon", "adam_lr": "train/lr_adam", "grad_norm": "train/grad_norm",
          "tokens_per_sec": "perf/tokens_per_sec", "mfu": "perf/mfu", "val_loss": "val/loss", "val_bpb": "val/bpb"}


class Trackers:
    """Sends each logged metrics row to the trackers the config names (none by default)."""

    def __init__(self, cfg: LogConfig, run: RunFolder, config: dict[str, Any], start_step: int, enabled: bool):
        self._tb = self._wandb = None
        if not enabled:
            return
        if cfg.tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                raise TrainingError("log.tensorboard needs tensorboardX: pip install 'planckgpt[tensorboard]'") from None
            # purge_step: a resumed run's charts drop what was logged after its checkpoint, as metrics.jsonl does.
            self._tb = SummaryWriter(logdir=str(run.root / "tensorboard"), purge_step=start_step + 1 if start_step else None)
        if cfg.wandb:
            try:
                import wandb
            except ImportError:
                raise TrainingError("log.wandb needs wandb: pip install 'planckgpt[wandb]'") from None
            run_id = hashlib.blake2b(str(run.root.absolute()).encode(), digest_size=8).hexdigest()  # same run on resume
            self._wandb = wandb.init(project=cfg.wandb, name=run.name, id=run_id, resume="allow", dir=str(run.root),
                                     config=config)

    def log(self, row: dict[str, Any]) -> None:
        """One metrics row (it has a step)."""
        values = {CHARTS[k]: float(v) for k, v in row.items() if k in CHARTS and isinstance(v, (int, float))}
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(name, value, row["step"])
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(values, step=row["step"])

    def close(self) -> None:
        """Flush and close whatever was opened."""
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
