"""`planck report RUN...`: argument parsing only; the report modules are imported when the command runs."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `report` command."""
    r = sub.add_parser(
        "report",
        help="write a run's report card (report.md); compare several runs side by side",
        description="Rebuild runs/NAME/report.md (data, model, training figures, plots, evaluation) in each run folder. "
        "With several runs, also write one table comparing them (default: report.md in their common parent folder).",
    )
    r.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="a run folder (config.json inside), e.g. runs/pretrain")
    r.add_argument("--out", type=Path, help="where to write the comparison (default: the runs' common parent/report.md)")
    r.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from .card import write_report
    from .compare import write_comparison
    from .run import load_run

    for run in args.runs:  # check every folder before writing anything
        load_run(run)
    for run in args.runs:
        print(write_report(run))
    if len(args.runs) > 1 or args.out is not None:
        print(f"{write_comparison(args.runs, args.out)}: {len(args.runs)} runs side by side")
    return 0
