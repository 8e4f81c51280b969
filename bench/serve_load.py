"""Loopback load on `planck serve`: requests/s and time to first token at several concurrency levels, and the
time to fit long conversations into the context.

    python bench/serve_load.py                         # a tiny random model (context 128), 1/8/32 clients
    python bench/serve_load.py --checkpoint runs/sft --clients 1 8 --requests 64 --max-tokens 32

Each client sends streamed chat requests one after another; TTFT is the time from sending a request to its
first content chunk. Bounded: --requests per level in all (default 96), --max-tokens each.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def fit_times() -> dict:
    """Seconds to fit conversations of 1,001 and 16,001 messages into a 1,024-token context."""
    from planck.schemas.rows import Message
    from planck.serve.prompt import chat_prompt

    out = {}
    for n in (1_001, 16_001):
        turns = [Message("user" if i % 2 == 0 else "assistant", f"message number {i} of a very long chat") for i in range(n - 2)]
        msgs = [Message("system", "Be brief."), *turns, Message("user", "And now?")]
        best = min(_timed(lambda: chat_prompt(msgs, 1024, 256)) for _ in range(3))
        out[f"fit_{n}_messages_s"] = round(best, 4)
    return out


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def one_level(url: str, clients: int, requests: int, max_tokens: int) -> dict:
    ttfts: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    per_client = max(1, requests // clients)

    def client(c: int) -> None:
        with httpx.Client(timeout=120) as http:
            for i in range(per_client):
                body = {"messages": [{"role": "user", "content": f"Client {c} asks question {i}"}],
                        "max_tokens": max_tokens, "stream": True, "temperature": 0.7, "seed": c * 1000 + i}
                sent = time.perf_counter()
                first = None
                with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                    if r.status_code != 200:
                        with lock:
                            errors.append(str(r.status_code))
                        continue
                    for line in r.iter_lines():
                        if first is None and line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                            first = time.perf_counter() - sent
                if first is not None:
                    with lock:
                        ttfts.append(first)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    done = len(ttfts)
    return {"clients": clients, "requests": per_client * clients, "completed": done, "errors": errors,
            "requests_per_s": round(done / wall, 2), "ttft_p50_ms": round(1000 * statistics.median(ttfts), 1) if ttfts else None,
            "ttft_p99_ms": round(1000 * percentile(ttfts, 99), 1) if ttfts else None, "wall_s": round(wall, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=None, help="a chat model (default: a tiny random one, context 128)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=96, help="requests per level, split among the clients")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--port", type=int, default=18931)
    args = ap.parse_args()

    results = {"fitting": fit_times(), "levels": []}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint
        if checkpoint is None:
            sys.path.insert(0, str(REPO / "tests"))
            from conftest import write_checkpoint  # the tests' tiny random model

            checkpoint = write_checkpoint(Path(tmp) / "chat", chat=True)
        log = open(Path(tmp) / "serve.log", "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "planck.cli", "serve", "--checkpoint", str(checkpoint), "--port", str(args.port),
             "--slots", str(args.slots), "--max-waiting", str(max(args.clients) * 2)],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        url = f"http://127.0.0.1:{args.port}"
        try:
            deadline = time.monotonic() + 300
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"planck serve exited:\n{(Path(tmp) / 'serve.log').read_text()}")
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("planck serve did not start")
                time.sleep(0.2)
            one_level(url, 2, 4, args.max_tokens)  # warm: first requests compile nothing more, but fill caches
            for clients in args.clients:
                results["levels"].append(one_level(url, clients, max(args.requests, clients), args.max_tokens))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
