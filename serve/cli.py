"""`planck chat` (terminal) and `planck serve` (HTTP): both load a finished model into the batching engine."""

from __future__ import annotations

import argparse
import os
import sys
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
    s.add_argument("--api-key", default=os.environ.get("PLANCK_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on every /v1/ request (default: $PLANCK_API_KEY; none: open)")
    s.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a Host name clients may use (repeatable; default: the --host address, localhost and 127.0.0.1; "
                   "'*': any). Other names get a 421 (closes DNS rebinding)")
    s.add_argument("--allowed-origin", action="append", default=[], metavar="ORIGIN",
                   help="a web page origin, like https://app.example.org, allowed to call the API (CORS; repeatable; default none)")
    s.add_argument("--max-waiting", type=int, default=None,
                   help="requests waiting for a slot before new ones get 429 (default 4 x --slots)")
    s.add_argument("--queue-timeout", type=float, default=60.0,
                   help="seconds a request may wait for a slot before a 503 (default 60)")
    s.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a connection has to send a request's headers (default 10)")
    s.add_argument("--body-timeout", type=float, default=30.0,
                   help="seconds a request has to send its body after its headers (default 30)")
    s.add_argument("--log-json", action="store_true", help="access-log lines as JSON objects")
    _add_engine_args(s, slots=8)
    s.set_defaults(handler=_serve)


def _add_engine_args(p: argparse.ArgumentParser, slots: int) -> None:
    p.add_argument("--slots", type=int, default=slots, help=f"requests decoded together (default {slots})")
    p.add_argument("--dtype", choices=("bfloat16", "float32", "float16"), default=None,
                   help="dtype of the weights and the compute (default: float32 on a CPU, where XLA's bf16 decode is ~8x "
                   "slower; the model's own, bf16 for planck150m, on a GPU)")
    p.add_argument("--no-warm-up", action="store_true", help="compile on the first request instead of at start-up")


def _start(args: argparse.Namespace, queue_timeout: float | None = None):
    """Load the checkpoint and start the engine thread (the slow part: a few seconds of compilation)."""
    from .batcher import Batcher
    from .engine import Engine
    from .weights import load_for_serving

    loaded = load_for_serving(args.checkpoint, dtype=args.dtype)
    engine = Engine(loaded, slots=args.slots)
    if not args.no_warm_up:
        engine.warm_up()
    return loaded, Batcher(engine, chat=loaded.is_chat, queue_timeout=queue_timeout)


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
    from planck.schemas.errors import PlanckError

    from .http import bind_socket

    for name in ("max_waiting", "queue_timeout", "header_timeout", "body_timeout", "max_body_bytes", "slots"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise PlanckError(f"--{name.replace('_', '-')} {value}: expected a positive number")
    if args.api_key is not None and not args.api_key.strip():
        raise PlanckError("--api-key is empty: give a key, or leave the option (and PLANCK_API_KEY) out")
    # The port first: a taken port is one line in a second, not after the model loaded.
    sock = bind_socket(args.host, args.port)
    if args.api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"planck serve: warning: listening on {args.host} without --api-key: anyone who can reach this machine "
              "can use the model (set --api-key or PLANCK_API_KEY)", file=sys.stderr, flush=True)
    from .api import ServeOptions, create_app, run_server
    from .guard import Access

    access = Access.for_bind(args.host, tuple(h.lower() for h in args.allowed_host), api_key=args.api_key,
                             allowed_origins=tuple(o.rstrip("/") for o in args.allowed_origin))
    options = ServeOptions(access=access, max_body_bytes=args.max_body_bytes, max_waiting=args.max_waiting,
                           log_json=args.log_json)
    try:
        loaded, batcher = _start(args, queue_timeout=args.queue_timeout)
    except BaseException:
        sock.close()
        raise
    try:
        run_server(create_app(batcher, loaded, options=options), args.host, args.port, sock=sock,
                   header_timeout=args.header_timeout, body_timeout=args.body_timeout, log_json=args.log_json)
    finally:
        batcher.close()
    return 0
