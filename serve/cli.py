"""`planck chat` (terminal) and `planck serve` (HTTP): both load a finished model into the batching engine."""

from __future__ import annotations

import argparse
from pathlib import Path

CHECKPOINT_HELP = "a run folder (its final/ is used), a final/ folder, or a .npz from `planck export`"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `chat` and `serve` subcommands."""
    c = sub.add_parser(
        "chat",
        help="talk to a finished model in the terminal",
        description="A terminal chat with streaming replies. Chat models (midtrain/sft) get the chat template and "
        "remember the conversation; base (pretrain-only) models complete plain text. Type /help inside for commands; "
        "Ctrl-C stops a reply, Ctrl-D leaves.",
    )
    c.add_argument("--checkpoint", type=Path, required=True, help=CHECKPOINT_HELP)
    c.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default 0.7)")
    c.add_argument("--top-k", type=int, default=50, help="sample among the k likeliest tokens (default 50, at most 200)")
    c.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (default 1.0: off)")
    c.add_argument("--max-tokens", type=int, default=4096, help="longest reply in tokens (default 4096; the context also ends a reply)")
    c.add_argument("--seed", type=int, default=None, help="seed for reproducible replies (default: random)")
    c.add_argument("--system", default=None, help="a system prompt that opens the conversation")
    c.add_argument("--no-memory", action="store_true", help="answer each question on its own (no multi-turn context)")
    _add_engine_args(c, slots=1)
    c.set_defaults(handler=_chat)

    s = sub.add_parser(
        "serve",
        help="serve a finished model over HTTP (OpenAI-compatible API and a web chat page)",
        description="An OpenAI-compatible HTTP API (POST /v1/chat/completions, POST /v1/completions, GET /v1/models, "
        "GET /health) and a chat page at /. Concurrent requests share decode steps in --slots slots.",
    )
    s.add_argument("--checkpoint", type=Path, required=True, help=CHECKPOINT_HELP)
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 for all)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument("--max-body-bytes", type=int, default=1_000_000, help="largest request body accepted (default 1 MB)")
    _add_engine_args(s, slots=8)
    s.set_defaults(handler=_serve)


def _add_engine_args(p: argparse.ArgumentParser, slots: int) -> None:
    p.add_argument("--slots", type=int, default=slots, help=f"requests decoded together (default {slots})")
    p.add_argument("--dtype", choices=("bfloat16", "float32", "float16"), default=None,
                   help="dtype of the weights and the compute (default: float32 on a CPU, where XLA's bf16 decode is ~8x "
                   "slower; the model's own, bf16 for planck150m, on a GPU)")
    p.add_argument("--no-warm-up", action="store_true", help="compile on the first request instead of at start-up")


def _start(args: argparse.Namespace):
    """Load the checkpoint and start the engine thread (the slow part: a few seconds of compilation)."""
    from .batcher import Batcher
    from .engine import Engine
    from .weights import load_for_serving

    loaded = load_for_serving(args.checkpoint, dtype=args.dtype)
    engine = Engine(loaded, slots=args.slots)
    if not args.no_warm_up:
        engine.warm_up()
    return loaded, Batcher(engine, chat=loaded.is_chat)


def _chat(args: argparse.Namespace) -> int:
    from .batcher import SamplingParams
    from .repl import ReplSettings, run_repl

    params = SamplingParams(args.temperature, args.top_k, args.top_p, args.max_tokens, args.seed)
    try:
        params.validate()
    except ValueError as exc:
        print(f"planck chat: error: {exc}")
        return 2
    loaded, batcher = _start(args)
    try:
        return run_repl(batcher, loaded, ReplSettings(params=params, system=args.system, memory=not args.no_memory))
    finally:
        batcher.close()


def _serve(args: argparse.Namespace) -> int:
    from .api import create_app, run_server

    loaded, batcher = _start(args)
    try:
        run_server(create_app(batcher, loaded, max_body_bytes=args.max_body_bytes), args.host, args.port)
    finally:
        batcher.close()
    return 0
