"""The training loop, in four parts: set-up, restore, the step loop, finish (`train` reads as this outline).

    r = set_up(...)            # run folder checked, data check started, model + optimizer built and placed on the mesh
    r.data_check.join()        # every shard verified before step 1 (or one line naming the bad file)
    step = restore(r)          # the newest good checkpoint (model, optimizer, loader position), or step 0
    step_loop(r, step)         # train, log, evaluate, checkpoint; a NaN loss stops before anything is saved
    save_final(...)            # final/ weights with their digest, then the report card
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from planck.model.gpt import GPT, count_params
from planck.model.loss import evaluate
from planck.model.weights import final_meta, load_into, save_final
from planck.schemas.run_folder import RunFolder, flatten
from planck.shards.folder import ShardFolder
from planck.shards.windows import ShardWindows, eval_batches, target_bytes

from .checkpoint import Checkpoints
from .config import AUTO_MICRO_BATCH, RunConfig
from .data import make_batches
from .data_check import DataCheck
from .devices import Devices
from .errors import TrainingError
from .metrics_log import MetricsLog
from .optim import make_optimizer
from .step import train_step

log = logging.getLogger("planck.train")


@dataclass
class Run:
    """Everything one training process holds: settings, where it writes, its data, model, optimizer and checkpoints."""

    cfg: RunConfig
    phase: str
    run: RunFolder
    folder: ShardFolder
    init_from: Path | None
    devices: Devices
    tokens_per_step: int
    train_src: ShardWindows
    val_src: ShardWindows | None
    data_iter: Any
    model: GPT
    optimizer: nnx.Optimizer
    data_check: DataCheck
    changes: dict[str, list[Any]] = field(default_factory=dict)  # settings changed on this resume
    checkpoints: Checkpoints | None = None  # opened once the data check has passed
    tokens_seen: int = 0
    last: dict[str, Any] = field(default_factory=dict)


def train(
    cfg: RunConfig,
    *,
    phase: str,
    data: Path,
    run_dir: Path,
    init_from: Path | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train (or resume) one phase into `run_dir`; returns the last logged metrics."""
    r = set_up(cfg, phase=phase, data=data, run_dir=run_dir, init_from=init_from)
    report_data_check(r.data_check.join(), r.data_check.skipped)  # before step 1; ran while the model was built
    r.checkpoints = Checkpoints(r.run.root, cfg.train.keep_checkpoints)  # after the data check: a refusal leaves no thread behind
    try:
        step = restore(r)
        finished_before = step >= cfg.train.steps and r.run.is_finished()
        step_loop(r, step, show_progress)
        r.checkpoints.wait()
        if not finished_before:  # a finished run re-run keeps its final/ as it is
            save_final(r.run.final, r.model, _final_meta(r, step=cfg.train.steps), r.devices.is_main)
        r.last = r.last or {"step": step}
    finally:
        r.checkpoints.close()
    if r.devices.is_main:
        write_report(r.run)
    return r.last


# ---- set-up -----------------------------------------------------------------------------------------


def set_up(cfg: RunConfig, *, phase: str, data: Path, run_dir: Path, init_from: Path | None) -> Run:
    """Check the run folder and the data, build the loader, model and optimizer, and place them on the devices."""
    folder = ShardFolder(Path(data))  # checks the manifest up front
    folder.check_tokenizer()
    devices = Devices.create(cfg.train.fsdp)
    run = RunFolder(Path(run_dir))
    choose_micro_batch(cfg, run)
    tokens_per_step = cfg.train.micro_batch * devices.count * cfg.train.grad_accum * cfg.model.seq_len
    if cfg.train.tokens:
        cfg.train.steps = max(1, math.ceil(cfg.train.tokens / tokens_per_step))  # a token budget decides the steps
    changes = check_run_folder(run, cfg, phase, data) if devices.is_main else {}
    data_check = DataCheck(folder, run, devices.is_main).start()

    local_batch = cfg.train.micro_batch * jax.local_device_count()
    train_src = ShardWindows(folder.folder, "train", cfg.model.seq_len)
    if len(train_src) < local_batch:
        raise TrainingError(f"{data}: the train split has {len(train_src)} windows of {cfg.model.seq_len + 1} tokens, fewer than one batch")
    val_src = ShardWindows(folder.folder, "val", cfg.model.seq_len) if folder.entries("val") else None
    data_iter = iter(make_batches(
        train_src, batch_size=local_batch, seed=cfg.seed, shard_index=jax.process_index(),
        shard_count=jax.process_count(), workers=cfg.train.loader_workers,
    ))

    model = GPT(cfg.model, rngs=nnx.Rngs(cfg.seed))
    if init_from is not None:
        meta = load_into(model, Path(init_from))
        log.info("initialised from %s (phase %s, step %s)", init_from, meta.get("phase"), meta.get("step"))
    optimizer = nnx.Optimizer(model, make_optimizer(cfg.optim, cfg.train.steps), wrt=nnx.Param)
    nnx.update((model, optimizer), devices.place(nnx.state((model, optimizer))))
    return Run(cfg, phase, run, folder, init_from, devices, tokens_per_step, train_src, val_src, data_iter, model,
               optimizer, data_check, changes=changes)


def choose_micro_batch(cfg: RunConfig, run: RunFolder) -> None:
    """train.micro_batch=auto: the run's own choice when resuming, else the largest that fits a device; on a GPU, a
    micro-batch that cannot fit is refused before anything is allocated, naming the largest that can."""
    from .plan import HEADROOM, device_memory, largest_micro_batch, step_memory

    if cfg.train.micro_batch != AUTO_MICRO_BATCH and jax.default_backend() != "gpu":
        return  # nothing to choose, and a CPU's memory is the host's: no refusal up front
    budget = device_memory(cfg.train.device_memory_gb)
    if cfg.train.micro_batch == AUTO_MICRO_BATCH:
        if run.config.exists():  # a resumed run keeps the batch it started with (its loader position depends on it)
            recorded = json.loads(run.config.read_text())["config"]["train"]["micro_batch"]
            if recorded != AUTO_MICRO_BATCH:
                cfg.train.micro_batch = recorded
                return
        if budget is None:
            raise TrainingError("train.micro_batch=auto: this device reports no memory size; set train.device_memory_gb")
        found = largest_micro_batch(cfg, budget)
        if found is None:
            raise TrainingError(f"one sequence per device does not fit {budget / 1e9:.1f} GB: lower model.seq_len, "
                                "set model.remat=true or train.fsdp=true")
        cfg.train.micro_batch = found[0]
        print(f"train.micro_batch=auto: {found[0]} (the step needs {found[1].peak / 1e9:.2f} GB of "
              f"{budget / 1e9:.1f} GB per device)", flush=True)
    elif jax.default_backend() == "gpu" and budget:
        need = step_memory(cfg, cfg.train.micro_batch)
        if need.peak > budget * HEADROOM:
            found = largest_micro_batch(cfg, budget)
            hint = (f"the largest that fits is {found[0]} (train.micro_batch={found[0]}, or auto)" if found
                    else "not even 1 fits: set model.remat=true or train.fsdp=true")
            raise TrainingError(f"train.micro_batch={cfg.train.micro_batch} needs {need.peak / 1e9:.1f} GB per device, "
                                f"the device has {budget / 1e9:.1f} GB: {hint}")


# Settings a re-run may change: they steer the rest of the run without making its saved state
# mean something else (the model, data, batch and loader settings may not). Each change is recorded.
RESUMABLE_KEYS = frozenset({
    "optim.muon_lr", "optim.adam_lr", "optim.stable_fraction", "optim.final_lr_fraction",
    "train.steps", "train.tokens", "train.log_every", "train.eval_every", "train.eval_batches",
    "train.checkpoint_every", "train.keep_checkpoints", "log.tensorboard", "log.wandb",
})


def check_run_folder(run: RunFolder, cfg: RunConfig, phase: str, data: Path) -> dict[str, list[Any]]:
    """A re-run must use the run's own settings, but for RESUMABLE_KEYS; returns those that changed as {key: [old, new]}."""
    want = {"phase": phase, "data": str(Path(data).absolute()), "config": cfg.to_dict()}
    if not run.config.exists():
        run.root.mkdir(parents=True, exist_ok=True)
        run.config.write_text(json.dumps(want, indent=2))
        return {}
    have = json.loads(run.config.read_text())
    if have == want:
        return {}
    diff = sorted(k for k in ("phase", "data") if have.get(k) != want[k])
    flat_have, flat_want = flatten(have["config"]), flatten(want["config"])
    # A setting newer than the run folder (absent from its config.json) at its default changes nothing.
    defaults = flatten(RunConfig().to_dict())
    changed = sorted(k for k in set(flat_have) | set(flat_want) if flat_have.get(k) != flat_want.get(k)
                     and not (k not in flat_have and k in defaults and flat_want.get(k) == defaults[k]))
    refused = diff + [k for k in changed if k not in RESUMABLE_KEYS]
    if refused:
        raise TrainingError(
            f"{run.root} holds a run with other settings ({', '.join(refused)}); re-run with the same ones to resume, "
            f"or use another --run-dir (a resumed run may change only {', '.join(sorted(RESUMABLE_KEYS))})"
        )
    return {k: [flat_have.get(k), flat_want.get(k)] for k in changed}


def record_changes(run: RunFolder, cfg: RunConfig, phase: str, data: Path, changes: dict[str, list[Any]], step: int) -> None:
    """Append the changed settings with the step they apply from to changes.jsonl, then make config.json the new settings."""
    from datetime import datetime, timezone

    from planck.schemas.atomic import atomic_write_text

    row = {"step": step, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "changed": changes}
    with open(run.changes, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    want = {"phase": phase, "data": str(Path(data).absolute()), "config": cfg.to_dict()}
    atomic_write_text(run.config, json.dumps(want, indent=2))
    log.warning("%s: resuming at step %d with changed settings: %s", run.root, step,
                ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()))


# ---- restore ----------------------------------------------------------------------------------------


def restore(r: Run) -> int:
    """Resume from the newest readable checkpoint (model, optimizer, loader position); returns the step to start at."""
    meta = r.checkpoints.restore_latest(r.model, r.optimizer, r.data_iter)
    step = int(meta["step"]) if meta else 0
    r.tokens_seen = int(meta["tokens_seen"]) if meta else 0
    if r.devices.is_main:
        r.run.truncate_metrics(step)
        if r.changes:
            record_changes(r.run, r.cfg, r.phase, r.folder.folder, r.changes, step)
    print(
        f"planck train {r.phase}: {count_params(r.model):,} parameters, {r.devices.count} device(s) "
        f"({jax.devices()[0].device_kind}), {r.tokens_per_step:,} tokens per step, steps {step} -> {r.cfg.train.steps}"
        + (f" (resumed from step {step})" if meta else ""),
        flush=True,
    )
    return step


def report_data_check(record: dict[str, Any], skipped: bool) -> None:
    """One line: what the pre-flight checked, or that an unchanged earlier check stands."""
    if skipped:
        print(f"data: checked {record['checked']}, no shard file changed since (preflight.json)", flush=True)
        return
    print(f"data checked: {record['shards']} shards, {record['tokens']:,} tokens, {record['bytes'] / 1e9:.2f} GB "
          f"(checksums, token and role ids, counts, splits) in {record['seconds']:.1f} s", flush=True)


# ---- the step loop ------------------------------------------------------------------------------------


def step_loop(r: Run, step: int, show_progress: bool) -> None:
    """Optimizer steps until cfg.train.steps: log every log_every, evaluate every eval_every, checkpoint every checkpoint_every."""
    t = r.cfg.train
    with StopRequest() as stop, MetricsLog(r.cfg, r.run, r.phase, r.tokens_per_step, step, r.devices.is_main,
                                           show_progress) as metrics:
        while step < t.steps:
            started = metrics.meter.step_started()
            loss, n_tok, gnorm = train_step(r.model, r.optimizer, next_batch(r))
            loss = float(loss)  # one host sync per step: a NaN must stop the run before it is checkpointed
            metrics.meter.step_done(started)
            if not math.isfinite(loss):
                raise TrainingError(
                    f"loss became {loss} at step {step + 1}; stopped without saving. The last good checkpoint "
                    f"in {r.checkpoints.dir} is intact: lower the learning rates (--set optim.muon_lr=... optim.adam_lr=...) and re-run"
                )
            step += 1
            r.tokens_seen += r.tokens_per_step
            evaluate_now = r.val_src is not None and (step % t.eval_every == 0 or step == t.steps)
            metrics.step(step, loss, n_tok, gnorm, r.tokens_seen, (lambda: validation(r)) if evaluate_now else None)
            r.last = metrics.last
            if step % t.checkpoint_every == 0 or step == t.steps:
                r.checkpoints.save(step, r.model, r.optimizer, r.data_iter,
                                   {"step": step, "tokens_seen": r.tokens_seen, "seed": r.cfg.seed})
                if r.devices.is_main:
                    plot_loss(r.run)
            if stop.requested:
                save_and_stop(r, step)


class StopRequest:
    """The first Ctrl-C asks the loop to checkpoint after the step in flight and stop; a second one exits at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            print("\nplanck train: stopped at once; the last saved checkpoint is kept", file=sys.stderr, flush=True)
            os._exit(130)  # a save in flight stays a temporary folder, never restored
        self.requested = True
        print("\nplanck train: Ctrl-C: saving a checkpoint after this step, then stopping (Ctrl-C again to quit at once)",
              file=sys.stderr, flush=True)


def save_and_stop(r: Run, step: int) -> None:
    """Checkpoint `step` (unless it was just saved), wait until it is on disk, then stop as an interrupted run."""
    if r.checkpoints.last_saved != step:
        r.checkpoints.save(step, r.model, r.optimizer, r.data_iter,
                           {"step": step, "tokens_seen": r.tokens_seen, "seed": r.cfg.seed})
    r.checkpoints.wait()
    print(f"planck train: checkpoint saved at step {step} in {r.checkpoints.dir}", file=sys.stderr, flush=True)
    raise KeyboardInterrupt


def next_batch(r: Run) -> dict[str, jax.Array]:
    """grad_accum local batches stacked to (grad_accum, batch, seq_len) and assembled into global arrays."""
    local = [next(r.data_iter) for _ in range(r.cfg.train.grad_accum)]
    stacked = {k: np.stack([b[k] for b in local]) for k in local[0]}
    return {k: jax.make_array_from_process_local_data(r.devices.batch, v) for k, v in stacked.items()}


def validation(r: Run) -> dict[str, float]:
    """val_loss and val_bpb over the first eval_batches batches of the validation split (the same set every time)."""
    batches = eval_batches(r.val_src, batch_size=r.cfg.train.micro_batch * r.devices.count, num_batches=r.cfg.train.eval_batches)
    scores = evaluate(r.model, batches, r.devices.eval, target_bytes)
    return {k: scores[k] for k in ("val_loss", "val_bpb") if k in scores}


# ---- finish -------------------------------------------------------------------------------------------


def _final_meta(r: Run, step: int) -> dict[str, Any]:
    chat = r.folder.manifest.kind == "chat" or (r.init_from is not None and r.phase != "pretrain")
    return final_meta(phase=r.phase, step=step, config=r.cfg.model, parameters=count_params(r.model), chat=chat,
                      init_from=r.init_from)


def plot_loss(run: RunFolder) -> None:
    """loss.png from metrics.jsonl (a no-op without matplotlib: pip install 'planckgpt[plot]')."""
    from planck.report.plots import plot_loss as draw

    rows, _ = run.read_metrics()
    draw(rows, run.name, run.loss_plot)


def write_report(run: RunFolder) -> None:
    """report.md for a finished run; a failure is logged, never raised: the run itself is done."""
    try:
        from planck.report.card import write_report as write

        write(run.root)
    except Exception as exc:
        log.warning("%s: the run finished but its report was not written (%s); retry with `planck report %s`",
                    run.root, exc, run.root)
