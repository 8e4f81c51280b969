"""`planck tokenize pretrain|chat|merge`: the offline tokenizer job (never imports JAX)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _count(text: str) -> int:
    """Parse 3B, 100M, 10k, 1_000 or 1e6 into an integer (argparse type)."""
    from planck.schemas.counts import parse_count

    try:
        return parse_count(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `tokenize` command and its subcommands."""
    p = sub.add_parser(
        "tokenize",
        help="turn text and chat datasets into token shards",
        description="Turn text and chat datasets into uint16 token shards plus manifest.json. "
        "Interrupted jobs resume from their finished shards when re-run with the same options; "
        "the output bytes do not depend on --workers.",
    )
    s = p.add_subparsers(dest="tokenize_command", required=True, metavar="{pretrain,chat,merge}")
    cpus = os.cpu_count() or 1

    pt = s.add_parser(
        "pretrain",
        help="a text corpus -> pretraining shards",
        description="Tokenize a text corpus: each document becomes <|endoftext|> + its GPT-2 tokens. The first "
        "--val-tokens go to the validation split, then about --max-tokens to the training split (documents stay whole).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    pt.add_argument(
        "--source",
        default="HuggingFaceFW/fineweb-edu",
        help="a Hugging Face dataset id (streamed); a local .parquet/.jsonl/.json/.txt file, a glob of them, or a "
        "folder (every file of those types, in sorted order; a folder laid out like a hub dataset, e.g. "
        "train-00000-of-00002.parquet, reads the files of --split only); or 'embedded' (prose that ships with "
        "Python: works offline)",
    )
    pt.add_argument("--config", help="dataset config (default for fineweb-edu: sample-10BT)")
    pt.add_argument("--split", default="train", help="dataset split to read (hub datasets and hub-like folders)")
    pt.add_argument(
        "--txt-docs", choices=("file", "line", "blank-line"), default="file",
        help="what one document of a .txt file is: the whole file, each line, or each paragraph between blank lines",
    )
    pt.add_argument("--out", type=Path, default=Path("shards/pretrain"), help="output folder")
    pt.add_argument("--max-tokens", type=_count, default=3_000_000_000, help="training tokens to write (3B, 50M, ...); documents stay whole, so the split ends at the document that reaches it")
    pt.add_argument(
        "--val-tokens", type=_count, default=None, help="held-out validation tokens, taken first (default 10M; 100k for 'embedded')"
    )
    pt.add_argument("--shard-tokens", type=_count, default=100_000_000, help="tokens per shard (documents are never split)")
    pt.add_argument("--workers", type=int, default=cpus, help="tokenizer processes on this machine")
    pt.add_argument("--worker-index", type=int, default=0, help="this machine's part, 0..num-workers-1")
    pt.add_argument("--num-workers", type=int, default=1, help="machines sharing the job (then run `merge`)")
    pt.add_argument("--quiet", action="store_true", help="no progress bar")
    pt.set_defaults(handler=_pretrain)

    ch = s.add_parser(
        "chat",
        help="a chat mixture -> chat shards with role ids",
        description="Render a mixture of chat sources through the chat template into shards that store a role id "
        "per token (the loss trains on the assistant's tokens only). Rows that cannot be used are skipped and "
        "counted by reason in the manifest.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ch.add_argument("--mixture", default="sft", help="'midtrain', 'sft', 'demo' (shipped; demo is offline), or a mixture .toml file")
    ch.add_argument("--out", type=Path, required=True, help="output folder, e.g. shards/sft")
    ch.add_argument(
        "--source-path",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="read source NAME from local files of the same schema instead of the hub: a file, a glob or a folder "
        "(every .parquet/.jsonl/.json/.txt file; a hub-like folder's files of the source's split) (repeatable)",
    )
    ch.add_argument("--val-rows", type=_count, default=0, help="conversations held out for validation")
    ch.add_argument("--shard-tokens", type=_count, default=100_000_000, help="tokens per shard")
    ch.add_argument("--workers", type=int, default=cpus, help="rendering processes")
    ch.add_argument("--quiet", action="store_true", help="no progress bar")
    ch.set_defaults(handler=_chat)

    mg = s.add_parser(
        "merge",
        help="join the parts of a multi-machine pretrain job",
        description="After every machine ran `planck tokenize pretrain --worker-index i --num-workers n` into the "
        "same folder, write the folder's manifest.json from their part manifests.",
    )
    mg.add_argument("folder", type=Path)
    mg.set_defaults(handler=_merge)


def _summary(manifest) -> str:
    lines = []
    for split in ("val", "train"):
        shards = manifest.split(split)
        if shards:
            lines.append(
                f"  {split:<5} {len(shards):>4} shards {sum(s.documents for s in shards):>12,} documents "
                f"{sum(s.tokens for s in shards):>15,} tokens"
            )
    for s in manifest.sources:
        skipped = ", ".join(f"{k} {v:,}" for k, v in sorted(s.skipped.items())) or "none"
        lines.append(f"  source {s.name}: {s.rows_read:,} rows read, {s.documents:,} documents; skipped: {skipped}")
    return "\n".join(lines)


def _pretrain(args: argparse.Namespace) -> int:
    from .pretrain import PretrainJob, run_pretrain

    val = args.val_tokens if args.val_tokens is not None else (100_000 if args.source == "embedded" else 10_000_000)
    job = PretrainJob(
        source=args.source, out=args.out, config=args.config, split=args.split, max_tokens=args.max_tokens,
        val_tokens=val, shard_tokens=args.shard_tokens, workers=args.workers, worker_index=args.worker_index,
        num_workers=args.num_workers, txt_docs=args.txt_docs, command=args.command_line, show_progress=not args.quiet,
    )
    manifest = run_pretrain(job)
    print(f"{args.out}: done\n{_summary(manifest)}")
    if not manifest.split("train"):
        print(f"warning: the training split is empty: the source ran out within --val-tokens {val:,}", file=sys.stderr)
    return 0


def _chat(args: argparse.Namespace) -> int:
    from .chat import ChatJob, run_chat
    from .mixture import load_mixture, point_at_local

    mixture = load_mixture(args.mixture)
    point_at_local(mixture, args.source_path)
    job = ChatJob(
        mixture=mixture, out=args.out, val_rows=args.val_rows, shard_tokens=args.shard_tokens, workers=args.workers,
        command=args.command_line, show_progress=not args.quiet,
    )
    manifest = run_chat(job)
    print(f"{args.out}: done ({mixture.name} mixture)\n{_summary(manifest)}")
    return 0


def _merge(args: argparse.Namespace) -> int:
    from .merge import merge_parts

    manifest = merge_parts(args.folder)
    print(f"{args.folder}: merged\n{_summary(manifest)}")
    return 0
