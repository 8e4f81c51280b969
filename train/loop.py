"""The training loop: run folder, data, model, optimizer, resume, logging, evaluation, checkpoints, final weights."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from planck.schemas.tokenizer import TOKENIZER_NAME, tokenizer_fingerprint
from planck.shards.folder import ShardFolder

from .checkpoint import Checkpoints, load_final, save_final
from .config import RunConfig, flatten
from .errors import TrainingError
from .data import ShardWindows, eval_batches, make_batches, target_bytes
from .model import GPT, count_params, flops_per_token
from .optim import lr_schedule, make_optimizer
from .step import eval_step, train_step

log = logging.getLogger("planck.train")

# Dense bf16 peak FLOP/s by device kind, for MFU; unknown devices (CPUs) report no MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "RTX 4090": 165e12, "RTX 3090": 71e12}


@dataclass
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def final(self) -> Path:
        return self.root / "final"

    @property
    def plot(self) -> Path:
        return self.root / "loss.png"


def fsdp_sharding(x, mesh) -> NamedSharding:
    """Split an array along its largest axis that the device count divides; small or indivisible ones stay replicated."""
    n = mesh.devices.size
    shape = getattr(x, "shape", ())
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % n == 0 and shape[axis] >= n:
            spec = [None] * len(shape)
            spec[axis] = "data"
            return NamedSharding(mesh, P(*spec))
    return NamedSharding(mesh, P())


def peak_flops() -> float | None:
    """The device's dense bf16 peak, if known."""
    kind = jax.devices()[0].device_kind
    for name, flops in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return flops * jax.device_count()
    return None


def _check_run_folder(paths: RunPaths, cfg: RunConfig, phase: str, data: Path) -> None:
    """A re-run must use the run's own settings: resuming with other ones would not be the same run."""
    want = {"phase": phase, "data": str(Path(data).absolute()), "config": cfg.to_dict()}
    if paths.config.exists():
        have = json.loads(paths.config.read_text())
        if have != want:
            diff = sorted(k for k in ("phase", "data") if have.get(k) != want[k])
            flat_have, flat_want = flatten(have["config"]), flatten(want["config"])
            diff += sorted(k for k in set(flat_have) | set(flat_want) if flat_have.get(k) != flat_want.get(k))
            raise TrainingError(
                f"{paths.root} holds a run with other settings ({', '.join(diff)}); re-run with the same ones to resume, "
                "or use another --run-dir"
            )
    else:
        paths.root.mkdir(parents=True, exist_ok=True)
        paths.config.write_text(json.dumps(want, indent=2))


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop lines logged after the checkpoint we resume from: they will be logged again, identically."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def _plot(paths: RunPaths) -> None:
    from .report import plot_loss

    rows = [json.loads(x) for x in paths.metrics.read_text().splitlines() if x.strip()]
    plot_loss(rows, paths.root.name, paths.plot)  # a no-op without matplotlib (pip install 'planckgpt[plot]')


def _write_report(paths: RunPaths) -> None:
    """report.md for a finished run; a failure is logged, never raised: the run itself is done."""
    try:
        from . import report

        report.write_report(paths.root)
    except Exception as exc:
        log.warning("%s: the run finished but its report was not written (%s); retry with `planck report %s`",
                    paths.root, exc, paths.root)


def evaluation_sums(model, source: ShardWindows, batch_size: int, num_batches: int, sharding,
                    progress=None) -> tuple[float, float, float]:
    """Summed loss (nats), trained tokens and their UTF-8 bytes over the first `num_batches` batches."""
    loss_sum = tokens = nbytes = 0.0
    for batch in eval_batches(source, batch_size=batch_size, num_batches=num_batches):
        arrays = {k: jax.device_put(jnp.asarray(v), sharding) for k, v in batch.items()}
        ls, n = eval_step(model, arrays)
        loss_sum += float(ls)
        tokens += float(n)
        nbytes += target_bytes(batch)
        if progress is not None:
            progress.update(1)
    return loss_sum, tokens, nbytes


def evaluate(model, source: ShardWindows, batch_size: int, num_batches: int, sharding) -> dict[str, float]:
    """Validation loss (nats per trained token) and bits per byte over the first `num_batches` batches."""
    loss_sum, tokens, nbytes = evaluation_sums(model, source, batch_size, num_batches, sharding)
    if tokens == 0:
        return {}
    return {"val_loss": loss_sum / tokens, "val_bpb": loss_sum / (math.log(2) * max(nbytes, 1.0))}


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
    paths = RunPaths(Path(run_dir))
    folder = ShardFolder(Path(data))  # checks the manifest and the tokenizer up front
    if folder.manifest.tokenizer["fingerprint"] != tokenizer_fingerprint().hex():
        raise TrainingError(f"{data} was tokenized with another tokenizer than this planck's")
    n_dev = jax.device_count()
    tokens_per_step = cfg.train.micro_batch * n_dev * cfg.train.grad_accum * cfg.model.seq_len
    if cfg.train.tokens:
        cfg.train.steps = max(1, math.ceil(cfg.train.tokens / tokens_per_step))  # a token budget decides the steps
    is_main = jax.process_index() == 0  # process 0 writes the run folder's files; orbax coordinates checkpoints
    if is_main:
        _check_run_folder(paths, cfg, phase, data)

    mesh = jax.make_mesh((n_dev,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P(None, "data"))  # (grad_accum, batch, seq_len): batch split over devices
    eval_sharding = NamedSharding(mesh, P("data"))
    local_batch = cfg.train.micro_batch * jax.local_device_count()
    global_batch = cfg.train.micro_batch * n_dev

    train_src = ShardWindows(folder.folder, "train", cfg.model.seq_len)
    if len(train_src) < local_batch:
        raise TrainingError(f"{data}: the train split has {len(train_src)} windows of {cfg.model.seq_len + 1} tokens, fewer than one batch")
    val_src = ShardWindows(folder.folder, "val", cfg.model.seq_len) if folder.entries("val") else None
    data_iter = iter(
        make_batches(
            train_src, batch_size=local_batch, seed=cfg.seed, shard_index=jax.process_index(),
            shard_count=jax.process_count(), workers=cfg.train.loader_workers,
        )
    )

    model = GPT(cfg.model, rngs=nnx.Rngs(cfg.seed))
    if init_from is not None:
        meta = load_final(Path(init_from) / "final", model)
        log.info("initialised from %s (phase %s, step %s)", init_from, meta.get("phase"), meta.get("step"))
    optimizer = nnx.Optimizer(model, make_optimizer(cfg.optim, cfg.train.steps), wrt=nnx.Param)
    state = nnx.state((model, optimizer))
    shardings = jax.tree.map(lambda x: fsdp_sharding(x, mesh) if cfg.train.fsdp else replicated, state)
    nnx.update((model, optimizer), jax.device_put(state, shardings))
    n_params = count_params(model)
    fpt = flops_per_token(cfg.model)
    peak = peak_flops()

    ckpt = Checkpoints(paths.root, cfg.train.keep_checkpoints)
    meta = ckpt.restore_latest(model, optimizer, data_iter)
    step = int(meta["step"]) if meta else 0
    tokens_seen = int(meta["tokens_seen"]) if meta else 0
    if is_main:
        _truncate_metrics(paths.metrics, step)
    print(
        f"planck train {phase}: {n_params:,} parameters, {n_dev} device(s) ({jax.devices()[0].device_kind}), "
        f"{tokens_per_step:,} tokens per step, steps {step} -> {cfg.train.steps}"
        + (f" (resumed from step {step})" if meta else ""),
        flush=True,
    )
    o = cfg.optim
    muon_lr = lr_schedule(o.muon_lr, cfg.train.steps, o.stable_fraction, o.final_lr_fraction)
    adam_lr = lr_schedule(o.adam_lr, cfg.train.steps, o.stable_fraction, o.final_lr_fraction)
    from tqdm import tqdm

    bar = tqdm(total=cfg.train.steps, initial=step, desc=f"train {phase}", unit="step",
               disable=not (show_progress and is_main), dynamic_ncols=True)
    last: dict[str, Any] = {}
    window_t0, window_tokens = time.perf_counter(), 0
    compile_s = None  # wall time of this process's first step (compilation included), logged once
    compile_logged = False
    try:
        with open(paths.metrics if is_main else os.devnull, "a") as metrics_file:
            while step < cfg.train.steps:
                local = [next(data_iter) for _ in range(cfg.train.grad_accum)]
                stacked = {k: np.stack([b[k] for b in local]) for k in local[0]}
                arrays = {
                    k: jax.make_array_from_process_local_data(batch_sharding, v) for k, v in stacked.items()
                }
                t_step = time.perf_counter()
                loss, n_tok, gnorm = train_step(model, optimizer, arrays)
                loss = float(loss)  # one host sync per step: a NaN must stop the run before it is checkpointed
                if compile_s is None:
                    compile_s = time.perf_counter() - t_step
                    # tokens/s starts after the compiling step: it is reported as compile_s instead
                    window_t0, window_tokens = time.perf_counter(), -tokens_per_step
                if not math.isfinite(loss):
                    raise TrainingError(
                        f"loss became {loss} at step {step + 1}; stopped without saving. The last good checkpoint "
                        f"in {ckpt.dir} is intact: lower the learning rates (--set optim.muon_lr=... optim.adam_lr=...) and re-run"
                    )
                step += 1
                tokens_seen += tokens_per_step
                window_tokens += tokens_per_step
                bar.update(1)
                if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                    elapsed = time.perf_counter() - window_t0
                    # A window holding only the compiling step reports that step's rate, compilation included.
                    tps = window_tokens / elapsed if window_tokens > 0 else tokens_per_step / compile_s
                    last = {
                        "step": step, "loss": loss, "lr": float(muon_lr(step - 1)), "adam_lr": float(adam_lr(step - 1)),
                        "tokens_per_sec": tps, "tokens_seen": tokens_seen, "grad_norm": float(gnorm),
                        "trained_tokens": float(n_tok),
                    }
                    if peak:
                        last["mfu"] = fpt * tps / peak
                    if not compile_logged:
                        last["compile_s"] = compile_s
                        compile_logged = True
                    window_t0, window_tokens = time.perf_counter(), 0
                    postfix = {"loss": f"{loss:.3f}", "tok/s": f"{tps:,.0f}"}
                    if peak:
                        postfix["mfu"] = f"{100 * last['mfu']:.1f}%"
                    bar.set_postfix(postfix, refresh=False)
                if val_src is not None and (step % cfg.train.eval_every == 0 or step == cfg.train.steps):
                    last = {**last, "step": step, **evaluate(model, val_src, global_batch, cfg.train.eval_batches, eval_sharding)}
                if last.get("step") == step:
                    metrics_file.write(json.dumps(last) + "\n")
                    metrics_file.flush()
                if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps:
                    ckpt.save(step, model, optimizer, data_iter, {"step": step, "tokens_seen": tokens_seen, "seed": cfg.seed})
                    if is_main:
                        _plot(paths)
        ckpt.wait()
        save_final(
            paths.final,
            is_main,
            model,
            {
                "phase": phase, "step": step, "model": cfg.to_dict()["model"], "parameters": n_params,
                "tokenizer": {"name": TOKENIZER_NAME, "fingerprint": tokenizer_fingerprint().hex()},
                "chat": folder.manifest.kind == "chat" or (init_from is not None and phase != "pretrain"),
                "init_from": None if init_from is None else str(init_from),  # the report's "started from"
            },
        )
    finally:
        bar.close()
        ckpt.close()
    if is_main:
        _write_report(paths)
    return last

