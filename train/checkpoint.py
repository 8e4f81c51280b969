"""Checkpoints with orbax: model, optimizer, loader position and step, saved asynchronously; the last N kept."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grain
import orbax.checkpoint as ocp
from flax import nnx

from planck.schemas.run_folder import RunFolder

log = logging.getLogger("planck.train")


class Checkpoints:
    """runs/NAME/checkpoints/<step>/: a save interrupted by a crash stays a *.orbax-checkpoint-tmp folder that is never restored."""

    def __init__(self, run_dir: Path, keep: int):
        self.dir = RunFolder(Path(run_dir)).checkpoints.absolute()
        self.manager = ocp.CheckpointManager(
            self.dir,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, cleanup_tmp_directories=True, enable_async_checkpointing=True
            ),
        )

    def save(self, step: int, model, optimizer, data_iter, meta: dict[str, Any]) -> None:
        """Start an asynchronous save; errors of the previous save surface here."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                model=ocp.args.StandardSave(nnx.state(model, nnx.Param)),
                opt=ocp.args.StandardSave(nnx.state(optimizer)),
                data=grain.checkpoint.CheckpointSave(data_iter),
                meta=ocp.args.JsonSave(meta),
            ),
        )

    def restore_latest(self, model, optimizer, data_iter) -> dict[str, Any] | None:
        """Restore the newest readable checkpoint in place; a damaged one is reported and the previous one used."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        model=ocp.args.StandardRestore(nnx.state(model, nnx.Param)),
                        opt=ocp.args.StandardRestore(nnx.state(optimizer)),
                        data=grain.checkpoint.CheckpointRestore(data_iter),
                        meta=ocp.args.JsonRestore(),
                    ),
                )
            except Exception as exc:  # orbax/tensorstore raise many kinds; any means "unreadable"
                log.warning("checkpoint %d in %s is unreadable (%s: %s); trying the previous one",
                            step, self.dir, exc.__class__.__name__, str(exc).splitlines()[0][:200])
                continue
            nnx.update(model, restored["model"])
            nnx.update(optimizer, restored["opt"])
            return dict(restored["meta"])
        return None

    def wait(self) -> None:
        """Block until the pending save is on disk (and raise its error, if any)."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        self.manager.close()
