"""`planck train pretrain|midtrain|sft` and `planck export`: argument parsing only; JAX is imported when a command runs."""

from __future__ import annotations

import argparse
from pathlib import Path

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
        help="write a run's final weights as one portable .npz",
        description="Write a finished run's final/ weights into one numpy .npz of named arrays plus the model config.",
    )
    e.add_argument("run", type=Path, help="a run folder with final/")
    e.add_argument("--out", type=Path, required=True, help="the .npz file to write")
    e.set_defaults(handler=_export)


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
    run = RunFolder(args.run_dir)
    print(f"{args.run_dir}: done at step {last.get('step')}" + (f" ({summary})" if summary else "") + f"; weights in {run.final}"
          + (f"; report in {run.report}" if run.report.exists() else ""))
    return 0


def _export(args: argparse.Namespace) -> int:
    from planck.model.weights import export_npz

    n_arrays, n_params = export_npz(args.run, args.out)  # the same validated reader serving uses
    print(f"{args.out}: {n_arrays} arrays, {n_params:,} parameters")
    return 0
