"""`planck shards stats|verify|show`: inspect shard folders (numpy only, no JAX)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `shards` command and its subcommands."""
    p = sub.add_parser(
        "shards",
        help="inspect and check shard folders",
        description="Inspect and check the token shards that `planck tokenize` writes.",
    )
    s = p.add_subparsers(dest="shards_command", required=True, metavar="{stats,verify,show}")

    st = s.add_parser(
        "stats",
        help="tokens, documents and lengths per split and source",
        description="Count what a shard folder holds: tokens, documents, shards and bytes per split and "
        "per source, the fraction of tokens the loss trains on, and document-length percentiles "
        "with a histogram.",
    )
    st.add_argument("folder", type=Path, help="a shard folder (holds manifest.json), e.g. shards/pretrain")
    st.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    st.add_argument("--plot", type=Path, metavar="PNG", help="also write the length histogram to this PNG")
    st.set_defaults(handler=_stats)

    v = s.add_parser(
        "verify",
        help="read every byte: checksums, ids in range, manifest cross-checks",
        description="Read every byte of every shard, the checks a training run's pre-flight makes: "
        "checksums, token ids below the tokenizer's vocabulary, role ids, document offsets and sources, "
        "sizes, tokenizer, counts and splits against manifest.json; list files the manifest does not "
        "know. Exits 1 naming each bad file.",
    )
    v.add_argument("folders", type=Path, nargs="+", metavar="folder", help="shard folder(s) to check")
    v.set_defaults(handler=_verify)

    sh = s.add_parser(
        "show",
        help="decode one document with its roles marked",
        description="Decode one document. Chat documents show each token's role: coloured on a "
        "terminal, [role]...[/role] brackets otherwise; a * marks the roles the loss trains on.",
    )
    sh.add_argument("folder", type=Path, help="a shard folder")
    sh.add_argument("--doc", type=int, required=True, metavar="N", help="document index within the split (from 0)")
    sh.add_argument("--split", default="train", choices=("train", "val"), help="which split (default: train)")
    sh.add_argument(
        "--color", default="auto", choices=("auto", "always", "never"), help="colour roles (default: on a terminal)"
    )
    sh.set_defaults(handler=_show)


def _stats(args: argparse.Namespace) -> int:
    from .stats import folder_stats, format_stats, plot_stats

    st = folder_stats(args.folder)
    if args.plot:
        plot_stats(st, args.plot)
    print(json.dumps(st, indent=2) if args.json else format_stats(st))
    if args.plot and not args.json:
        print(f"\n  histogram written to {args.plot}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from .folder import verify_folder

    bad = 0
    for folder in args.folders:
        problems, warnings = verify_folder(folder)
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        for p in problems:
            print(f"BAD {p}")
        if problems:
            bad += 1
        else:
            print(f"ok  {folder}: every shard matches its checksum and the manifest")
    return 1 if bad else 0


def _show(args: argparse.Namespace) -> int:
    from .show import render_document

    colour = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    print(render_document(args.folder, args.doc, args.split, colour=colour))  # NoSuchDocument is a PlanckError
    return 0
