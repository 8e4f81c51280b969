"""The `planck` command: one entry point, a subcommand per job. Imports stay lazy so `--help` is instant."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from planck import doctor, speedrun
from planck.eval import cli as eval_cli
from planck.report import cli as report_cli
from planck.schemas.errors import PlanckError
from planck.schemas.version import planck_version
from planck.serve import cli as serve_cli
from planck.shards import cli as shards_cli
from planck.tokenize import cli as tokenize_cli
from planck.train import cli as train_cli


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (each job registers its own subcommand)."""
    parser = argparse.ArgumentParser(
        prog="planck",
        description="PlanckGPT: train a ~150M-parameter GPT chat model from scratch on one GPU.\n\n"
        "Data flow: planck tokenize -> shards/<name>/ (uint16 shards + manifest.json) -> planck train -> runs/<name>/final/ -> planck chat / planck serve.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"planck {planck_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{tokenize,shards,train,export,plan,report,chat,serve,eval,doctor,speedrun}")
    tokenize_cli.register(sub)
    shards_cli.register(sub)
    train_cli.register(sub)
    report_cli.register(sub)
    serve_cli.register(sub)
    eval_cli.register(sub)
    doctor.register(sub)
    speedrun.register(sub)
    return parser


# What survives a Ctrl-C, for the jobs that write files.
_INTERRUPTED_HINT = {
    "tokenize": "; finished shards are kept, re-run the same command to resume",
    "train": "; the last checkpoint is kept, re-run the same command to resume",
    "speedrun": "; finished phases and the last checkpoint are kept, re-run the same command to resume",
}


def disk_full_message(exc: OSError, args: argparse.Namespace) -> str:
    """One line for a full disk: the file (or the job's output) being written, the free space left there, and that finished work is kept."""
    out = exc.filename or getattr(args, "out", None) or getattr(args, "run_dir", None)
    from planck.schemas.atomic import free_bytes

    target = Path(out) if out else Path.cwd()
    free = free_bytes(target)
    return (f"no space left on device writing {target} ({free / 1e6:,.1f} MB free on that filesystem); nothing finished "
            "was lost (files are written under temporary names, then renamed): free space and re-run the same command")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the handler, turn expected failures into one clear line."""
    args = build_parser().parse_args(argv)
    args.command_line = ["planck", *(sys.argv[1:] if argv is None else argv)]  # recorded in manifests
    try:
        rc = int(args.handler(args) or 0)
        sys.stdout.flush()  # output still buffered meets a closed pipe here, inside the handler below
        return rc
    except BrokenPipeError:
        # `planck shards show ... | head`: the reader has gone, as with any Unix tool. Later flushes go nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool stopped by a closed pipe
    except PlanckError as exc:
        print(f"planck: error: {exc}", file=sys.stderr)
        if getattr(exc, "exit_at_once", False):  # background writers would print tracebacks at shutdown
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        return 1
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            print(f"planck: error: {disk_full_message(exc, args)}", file=sys.stderr)
        elif exc.filename:  # a path that cannot be read or written (permissions, a missing folder, /proc): name it
            where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 else exc.filename
            print(f"planck: error: {where}: {exc.strerror or exc}", file=sys.stderr)
        else:
            raise
        return 1
    except KeyboardInterrupt:
        print(f"\nplanck: interrupted{_INTERRUPTED_HINT.get(args.command, '')}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
