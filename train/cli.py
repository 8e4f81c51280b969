"""`planck train pretrain|midtrain|sft`, `planck export` and `planck report`: argument parsing only; JAX is imported when a command runs."""

from __future__ import annotations

import argparse
from pathlib import Path

PHASE_HELP = {
    "pretrain": "next-token prediction on pretraining shards (default data shards/pretrain)",
    "midtrain": "chat format, multiple choice, arithmetic (default data shards/midtrain)",
    "sft": "supervised fine-tuning on the SFT mixture (default data shards/sft)",
}


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `train`, `export` and `report` commands."""
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

    r = sub.add_parser(
        "report",
        help="write a run's report card (report.md); compare several runs side by side",
        description="Rebuild runs/NAME/report.md (data, model, training figures, plots, evaluation) in each run folder. "
        "With several runs, also write one table comparing them (default: report.md in their common parent folder).",
    )
    r.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="a run folder (config.json inside), e.g. runs/pretrain")
    r.add_argument("--out", type=Path, help="where to write the comparison (default: the runs' common parent/report.md)")
    r.set_defaults(handler=_report)


def _train(args: argparse.Namespace) -> int:
    from .config import load_config

    if args.coordinator:
        import jax

        if jax.config.jax_platforms in (None, "", "cpu"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts talk over gloo
        jax.distributed.initialize(args.coordinator, num_processes=args.num_processes, process_id=args.process_id)
    from .loop import train

    cfg = load_config(args.config, args.phase, args.overrides)
    if args.init_from is None and args.phase != "pretrain":
        print(f"note: {args.phase} without --init-from starts from random weights")
    last = train(cfg, phase=args.phase, data=args.data, run_dir=args.run_dir, init_from=args.init_from,
                 show_progress=not args.quiet)
    summary = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if isinstance(v, float) and k in ("loss", "val_loss", "val_bpb"))
    report = args.run_dir / "report.md"
    print(f"{args.run_dir}: done at step {last.get('step')}" + (f" ({summary})" if summary else "") + f"; weights in {args.run_dir / 'final'}"
          + (f"; report in {report}" if report.exists() else ""))
    return 0


def _report(args: argparse.Namespace) -> int:
    from .report import load_run, write_comparison, write_report

    for run in args.runs:  # check every folder before writing anything
        load_run(run)
    for run in args.runs:
        print(write_report(run))
    if len(args.runs) > 1 or args.out is not None:
        print(f"{write_comparison(args.runs, args.out)}: {len(args.runs)} runs side by side")
    return 0


def _export(args: argparse.Namespace) -> int:
    import json

    import numpy as np
    from flax import nnx

    from planck.shards.atomic import atomic_write_bytes

    from .checkpoint import flat_params, load_final
    from .config import ModelConfig
    from .model import GPT

    meta = json.loads((args.run / "final" / "model.json").read_text())
    model = GPT(ModelConfig(**meta["model"]), rngs=nnx.Rngs(0))
    load_final(args.run / "final", model)
    arrays = flat_params(model)
    import io

    buf = io.BytesIO()
    np.savez(buf, __model_json__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    atomic_write_bytes(args.out, buf.getvalue())
    print(f"{args.out}: {len(arrays)} arrays, {sum(a.size for a in arrays.values()):,} parameters")
    return 0
