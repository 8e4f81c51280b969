"""The `planck` command: one entry point, a subcommand per job. Imports stay lazy so `--help` is instant."""

from __future__ import annotations

import argparse
import sys

from planck.eval import cli as eval_cli
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
    parser.add_argument("--version", action="version", version=f"planck {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{tokenize,shards,train,export,report,chat,serve,eval}")
    tokenize_cli.register(sub)
    shards_cli.register(sub)
    train_cli.register(sub)
    serve_cli.register(sub)
    eval_cli.register(sub)
    return parser


def version() -> str:
    """The installed distribution's version."""
    from importlib.metadata import PackageNotFoundError, version as dist_version

    try:
        return dist_version("planckgpt")
    except PackageNotFoundError:
        return "0+unknown"


# What survives a Ctrl-C, for the jobs that write files.
_INTERRUPTED_HINT = {
    "tokenize": "; finished shards are kept, re-run the same command to resume",
    "train": "; the last checkpoint is kept, re-run the same command to resume",
}


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the handler, turn expected failures into one clear line."""
    from planck.eval.errors import EvalError
    from planck.schemas.manifest import ManifestError
    from planck.schemas.tokenizer import TokenizerUnavailable
    from planck.serve.errors import CheckpointError
    from planck.shards.reader import ShardError
    from planck.tokenize.mixture import MixtureError
    from planck.tokenize.output import JobError
    from planck.tokenize.sources import SourceError
    from planck.train.config import ConfigError
    from planck.train.errors import TrainingError

    args = build_parser().parse_args(argv)
    args.command_line = ["planck", *(sys.argv[1:] if argv is None else argv)]  # recorded in manifests
    try:
        return int(args.handler(args) or 0)
    except (
        ManifestError, ShardError, TokenizerUnavailable, MixtureError, JobError, SourceError, ConfigError, TrainingError,
        CheckpointError, EvalError,
    ) as exc:
        print(f"planck: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nplanck: interrupted{_INTERRUPTED_HINT.get(args.command, '')}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
