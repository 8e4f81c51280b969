"""Checkpoints with orbax: model, optimizer, loader position and step, saved asynchronously; the last N kept.

Each step records a digest (blake2b-128) of its step, token count, loader state and every model and
optimizer array. Restoring recomputes it from what was read back: a checkpoint whose bytes changed
since it was saved (or whose metadata lies about its step) is moved aside, said in one line, and the
previous one is used. The step resumed from is the one saved and verified, never a metadata claim.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from planck.model.weights import host_value
from planck.schemas.run_folder import RunFolder

from .errors import TrainingError

log = logging.getLogger("planck.train")


def state_digest(step: int, tokens_seen: int, loader_state: Any, *trees: Any) -> str:
    """blake2b-128 over the step, the token count, the loader state and every array (path, dtype, shape, bytes) of `trees`."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps({"step": int(step), "tokens_seen": int(tokens_seen), "loader": loader_state},
                        sort_keys=True, default=str).encode())
    for tree in trees:
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            if jax.dtypes.issubdtype(getattr(leaf, "dtype", np.float32), jax.dtypes.prng_key):
                leaf = jax.random.key_data(leaf)
            a = np.ascontiguousarray(host_value(leaf))
            h.update(f"{jax.tree_util.keystr(path)}:{a.dtype}{list(a.shape)}".encode())
            h.update(a.data)
    return h.hexdigest()


def _no_space(exc: BaseException) -> bool:
    """True for a full disk, however deep orbax/tensorstore wrapped it."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "no space left on device" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class Checkpoints:
    """runs/NAME/checkpoints/<step>/: a save interrupted by a crash stays a *.orbax-checkpoint-tmp folder that is never restored."""

    def __init__(self, run_dir: Path, keep: int):
        self.run = RunFolder(Path(run_dir))
        self.dir = self.run.checkpoints.absolute()
        self.manager = ocp.CheckpointManager(
            self.dir,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, cleanup_tmp_directories=True, enable_async_checkpointing=True
            ),
        )
        self.last_saved: int | None = None
        self.pending: int | None = None  # the step of the asynchronous save in flight
        self.checkpoint_bytes = 0  # model + optimizer bytes of the last save, for the disk-full message
        self.broken = False

    def save(self, step: int, model, optimizer, data_iter, meta: dict[str, Any]) -> None:
        """Start an asynchronous save of `step` with its digest; errors of the previous save surface here."""
        model_state, opt_state = nnx.state(model, nnx.Param), nnx.state(optimizer)
        digest = state_digest(step, meta["tokens_seen"], data_iter.get_state(), model_state, opt_state)
        self.checkpoint_bytes = sum(getattr(x, "nbytes", 0) for x in jax.tree_util.tree_leaves((model_state, opt_state)))
        if shutil.disk_usage(self.dir).free < self.checkpoint_bytes * 1.05:
            # Refused before orbax starts writing: a save that runs out of space midway leaves only noise.
            self._raise_if_disk_full(OSError(errno.ENOSPC, "No space left on device"), step)
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    model=ocp.args.StandardSave(model_state),
                    opt=ocp.args.StandardSave(opt_state),
                    data=grain.checkpoint.CheckpointSave(data_iter),
                    meta=ocp.args.JsonSave({**meta, "step": step, "digest": digest}),
                ),
            )
        except Exception as exc:  # the save in flight (or this one) failed
            self._raise_if_disk_full(exc, self.pending or step)
            raise
        self.last_saved = self.pending = step

    def restore_latest(self, model, optimizer, data_iter) -> dict[str, Any] | None:
        """Restore the newest checkpoint that reads back and matches its digest, in place; damaged ones are moved aside."""
        initial_loader = data_iter.get_state()
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
                meta = dict(restored["meta"])
                problem = self._check(step, meta, data_iter.get_state(), restored["model"], restored["opt"])
            except Exception as exc:  # orbax/tensorstore raise many kinds; any means "unreadable"
                problem = f"is unreadable ({exc.__class__.__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
            if problem is not None:
                self._set_aside(step, problem)
                continue
            nnx.update(model, restored["model"])
            nnx.update(optimizer, restored["opt"])
            self.last_saved = step
            return {**meta, "step": step}
        data_iter.set_state(initial_loader)  # nothing usable: start from the beginning of the stream
        return None

    def _check(self, step: int, meta: dict[str, Any], loader_state: Any, model_state, opt_state) -> str | None:
        """Why a read-back checkpoint must not be used, or None."""
        if meta.get("step") != step:
            return f"lies about its step (its metadata says {meta.get('step')!r})"
        if "digest" not in meta:
            log.warning("checkpoint step %d in %s was saved without a digest (an older planck): not verified", step, self.dir)
            return None
        tokens = meta.get("tokens_seen")
        if not isinstance(tokens, int):
            return f"has no token count in its metadata ({tokens!r})"
        if state_digest(step, tokens, loader_state, model_state, opt_state) != meta["digest"]:
            return "fails its digest (its model, optimizer or loader state changed since it was saved)"
        return None

    def _set_aside(self, step: int, problem: str) -> None:
        """Move a damaged step out of orbax's folder (so a later save of that step works), saying which and why."""
        aside = self.run.root.absolute() / "checkpoints-damaged" / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        if jax.process_index() == 0:
            aside.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(self.dir / str(step)), str(aside))
            self.manager.reload()
        log.warning("checkpoint %d in %s %s: skipped, moved to %s; trying the previous one", step, self.dir, problem, aside)

    def _raise_if_disk_full(self, exc: BaseException, step: int) -> None:
        if not _no_space(exc):
            return
        self.broken = True  # closing the manager now would only wait on writes that cannot finish
        free = shutil.disk_usage(self.dir).free
        size = self.checkpoint_bytes
        kept = [s for s in self.manager.all_steps() if s != step]
        error = TrainingError(
            f"{self.dir}: no space left on device saving checkpoint step {step} ({free / 1e6:,.0f} MB free, a checkpoint "
            f"takes about {size / 1e6:,.0f} MB); the checkpoints before it are intact"
            + (f" (newest: step {max(kept)})" if kept else "") + ": free space and re-run the same command to resume"
        )
        # orbax's writer threads still hold tensorstore callbacks that print tracebacks while the interpreter shuts
        # down: the CLI leaves at once after this line (the folder of the failed save is a temporary one, never restored).
        error.exit_at_once = True
        raise error from None

    def wait(self) -> None:
        """Block until the pending save is on disk (and raise its error, if any)."""
        try:
            self.manager.wait_until_finished()
        except Exception as exc:
            self._raise_if_disk_full(exc, self.pending or 0)
            raise
        self.pending = None

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        if self.broken:
            return
        try:
            self.manager.close()
        except Exception as exc:
            self._raise_if_disk_full(exc, self.pending or 0)
            raise
