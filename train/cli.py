"""`planck train pretrain|midtrain|sft` and `planck export`: argument parsing only; JAX is imported when a command runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from planck.schemas.run_folder import RunFolder

PHASE_HELP = {
    "pretrain": "next-token prediction on pretraining shards (default data shards/pretrain)",
    "midtrain": "chat format, multiple choice, arithmetic (default data shards/midtrain)",
    "sft": "supervised fine-tuning on the SFT mixture (default data shards/sft)",
}


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `train` and `export` commands."""
    p = sub.add_parser(
        "train",
        help="train a phase (pretrain, midtrain, sft)",
        description="Train one phase of PlanckGPT from shards. Re-running the same command on an existing run "
        "folder resumes it exactly (same batches, same losses).",
    )
    s = p.add_subparsers(dest="phase", required=True, metavar="{pretrain,midtrain,sft}")
    for phase, text in PHASE_HELP.items():
        t = s.add_parser(phase, help=text, description=f"Train the {phase} phase: {text}.",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        t.add_argument("--config", default="planck150m", help="preset (tiny, planck150m) or a .toml file")
        t.add_argument("--data", type=Path, default=Path(f"shards/{phase}"), help="shard folder (manifest.json inside)")
        t.add_argument("--run-dir", type=Path, default=Path(f"runs/{phase}"), help="run folder: config, metrics, checkpoints, final/")
        t.add_argument(
            "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
            help="override any config field, e.g. train.steps=200 model.seq_len=512 (repeatable)",
        )
        t.add_argument("--init-from", type=Path, help="start from this run's final/ weights with a fresh optimizer")
        t.add_argument("--quiet", action="store_true", help="no progress bar")
        t.add_argument("--coordinator", metavar="HOST:PORT", help="multi-host: process 0's address (jax.distributed)")
        t.add_argument("--num-processes", type=int, default=1, help="multi-host: how many processes in all")
        t.add_argument("--process-id", type=int, default=0, help="multi-host: this process's index")
        t.set_defaults(handler=_train)

    e = sub.add_parser(
        "export",
        help="write a run's final weights as one portable .npz or .safetensors file",
        description="Write a finished run's final/ weights (checked: config, shapes, digest) into one file of named float32 "
        "arrays plus model.json: numpy .npz, or .safetensors with model.json in its metadata (planck_model_json). "
        "planck serve, chat and eval load either.",
    )
    e.add_argument("run", type=Path, help="a run folder with final/")
    e.add_argument("--out", type=Path, required=True, help="the file to write (.npz or .safetensors)")
    e.add_argument("--format", choices=("npz", "safetensors"), help="default: from --out's suffix")
    e.set_defaults(handler=_export)

    pl = sub.add_parser(
        "plan",
        help="what a run will need here: parameters, FLOPs, the step's memory, the largest micro-batch, hours",
        description="Compile the train step of a config for this machine's devices (nothing is allocated) and print "
        "parameters, FLOPs per token, XLA's memory analysis of the step per device, the largest micro-batch that "
        "fits, and the time to the token budget at a stated MFU.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    pl.add_argument("--config", default="planck150m", help="preset (tiny, planck150m) or a .toml file")
    pl.add_argument("--phase", default="pretrain", choices=("pretrain", "midtrain", "sft"))
    pl.add_argument("--tokens", help="token budget (3B, 500M, ...); default: the config's steps")
    pl.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="as for planck train")
    pl.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation assumed for the time estimate")
    pl.add_argument("--peak-tflops", type=float, default=0.0,
                    help="the devices' summed dense bf16 peak (default: known GPUs' table; CPUs have none)")
    pl.add_argument("--no-search", action="store_true", help="skip the search for the largest micro-batch (2-3 compilations)")
    pl.add_argument("--json", action="store_true", help="one JSON object")
    pl.set_defaults(handler=_plan)


def _train(args: argparse.Namespace) -> int:
    from .config import load_config

    if args.coordinator:
        import jax

        if jax.config.jax_platforms in (None, "", "cpu"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts talk over gloo
        jax.distributed.initialize(args.coordinator, num_processes=args.num_processes, process_id=args.process_id)
    from planck.schemas.run_folder import RunFolder

    from .loop import train

    cfg = load_config(args.config, args.phase, args.overrides)
    if args.init_from is None and args.phase != "pretrain":
        print(f"note: {args.phase} without --init-from starts from random weights")
    last = train(cfg, phase=args.phase, data=args.data, run_dir=args.run_dir, init_from=args.init_from,
                 show_progress=not args.quiet)
    summary = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if isinstance(v, float) and k in ("loss", "val_loss", "val_bpb"))
    if not summary and RunFolder(args.run_dir).is_finished():
        summary = "already finished: nothing to do"
    run = RunFolder(args.run_dir)
    print(f"{args.run_dir}: done at step {_done_step(last, run)}" + (f" ({summary})" if summary else "")
          + f"; weights in {run.final}" + (f"; report in {run.report}" if run.report.exists() else ""))
    return 0


def _done_step(last: dict, run: RunFolder) -> int:
    """The step a run stands at: the trainer's last, else final/model.json's, else the newest checkpoint's."""
    if isinstance(last.get("step"), int):
        return last["step"]
    # A process that trained no step (a finished run re-run) has logged nothing: the run folder knows the step.
    meta, _ = run.read_optional(run.final_meta, "final model description")
    if isinstance((meta or {}).get("step"), int):
        return meta["step"]
    steps = [int(p.name) for p in run.checkpoints.glob("*") if p.name.isdigit()] if run.checkpoints.is_dir() else []
    return max(steps, default=0)


def _export(args: argparse.Namespace) -> int:
    from planck.model.weights import export

    n_arrays, n_params = export(args.run, args.out, args.format)  # the same validated reader serving uses
    print(f"{args.out}: {n_arrays} arrays, {n_params:,} parameters")
    return 0


def _plan(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    import jax

    from .config import AUTO_MICRO_BATCH, load_config
    from .plan import make_plan

    overrides = list(args.overrides) + ([f"train.tokens={args.tokens}"] if args.tokens else [])
    cfg = load_config(args.config, args.phase, overrides)
    if cfg.train.micro_batch == AUTO_MICRO_BATCH:
        cfg.train.micro_batch = 1
    plan = make_plan(cfg, mfu=args.mfu, peak_tflops=args.peak_tflops, find_largest=not args.no_search)
    gb = lambda b: f"{b / 1e9:,.2f} GB"
    if args.json:
        out = {**dataclasses.asdict(plan), "peak_bytes": plan.memory.peak, "hours": plan.hours,
               "largest": None if plan.largest is None else {"micro_batch": plan.largest[0], "peak_bytes": plan.largest[1].peak},
               "devices": jax.device_count(), "device": jax.devices()[0].device_kind}
        print(json.dumps(out, indent=2))
        return 0
    m = plan.memory
    rows = [
        ("config", f"{args.config} ({args.phase}), {jax.device_count()} x {jax.devices()[0].device_kind}"),
        ("parameters", f"{plan.parameters:,}"),
        ("FLOPs per token", f"{plan.flops_per_token / 1e9:,.2f} GFLOP (6 x weights + attention)"),
        ("tokens per step", f"{plan.tokens_per_step:,} ({cfg.train.micro_batch} x {cfg.train.grad_accum} x {cfg.model.seq_len} per device)"),
        ("steps", f"{plan.steps:,} ({plan.steps * plan.tokens_per_step:,} tokens)"),
        ("step memory per device", f"{gb(m.peak)} = arguments {gb(m.arguments)} + outputs {gb(m.outputs)} - donated "
                                   f"{gb(m.aliased)} + temporaries {gb(m.temporaries)} (XLA's analysis of the compiled step)"),
        ("device memory", gb(plan.budget) if plan.budget else "unknown"),
    ]
    if plan.largest:
        rows.append(("largest micro-batch", f"{plan.largest[0]} ({gb(plan.largest[1].peak)}; train.micro_batch=auto picks it)"))
    elif plan.budget and not args.no_search:
        rows.append(("largest micro-batch", "none fits: set model.remat=true or train.fsdp=true"))
    if plan.hours is not None:
        rows.append(("time", f"{plan.hours:,.1f} h at {100 * plan.mfu:.0f}% MFU of {plan.peak_flops / 1e12:,.0f} TFLOP/s "
                             f"(steps x tokens per step x FLOPs per token / (MFU x peak))"))
    else:
        rows.append(("time", "unknown peak FLOP/s for this device: pass --peak-tflops (or set PLANCK_PEAK_TFLOPS)"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0
