"""Tokenizer-job throughput beside its ceiling, raw `tiktoken.encode_ordinary_batch` on the same text and cores.

    make bench            # or: .venv/bin/python bench/tokenize_throughput.py [--copies N]

The corpus is the embedded prose, repeated into local parquet files so the job reads it
through `datasets` like real data, and each job runs as the `planck` command a user types.
A job's fixed start-up cost (imports, worker processes) is cancelled by timing two corpus
sizes (best of 3 runs each): marginal tok/s = (tokens of big - tokens of small) / (time of big - time of small).
That is the rate a multi-billion-token run sees. Writes bench/results/tokenize.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from planck.schemas.tokenizer import get_tokenizer
from planck.shards.folder import read_manifest
from planck.tokenize.embedded import embedded_rows


def _time_job(source: Path, out: Path, workers: int, repeat: int) -> tuple[float, int, int]:
    """(best seconds of `repeat` runs, tokens, shard bytes) of the whole `planck tokenize pretrain` command."""
    cmd = [sys.executable, "-m", "planck.cli", "tokenize", "pretrain", "--source", str(source), "--out", str(out),
           "--max-tokens", "1000B", "--val-tokens", "0", "--shard-tokens", "1M", "--workers", str(workers), "--quiet"]
    best = float("inf")
    for _ in range(repeat):
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - t0)
    m = read_manifest(out)
    return best, sum(s.tokens for s in m.shards), sum(s.bytes for s in m.shards)


def main() -> None:
    """Measure and print."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=4, help="small corpus = the embedded prose x N (~2.4M tokens at 4); big = 4N")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the best counts (this VM is noisy)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, default=Path("bench/results/tokenize.json"))
    args = ap.parse_args()

    base = [r["text"] for r in embedded_rows()]
    small, big = base * args.copies, base * (4 * args.copies)
    enc = get_tokenizer()
    tmp = Path(tempfile.mkdtemp(prefix="planck-bench-"))
    try:
        pq.write_table(pa.table({"text": small}), tmp / "small.parquet")
        pq.write_table(pa.table({"text": big}), tmp / "big.parquet")
        rows = []
        for w in args.workers:
            raw_s = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                n_raw = sum(map(len, enc.encode_ordinary_batch(big, num_threads=w)))
                raw_s.append(time.perf_counter() - t0)
            raw = n_raw / min(raw_s)
            t_small, n_small, _ = _time_job(tmp / "small.parquet", tmp / f"small-{w}", w, args.repeat)
            t_big, n_big, size = _time_job(tmp / "big.parquet", tmp / f"big-{w}", w, args.repeat)
            marginal = (n_big - n_small) / (t_big - t_small)
            rows.append({
                "workers": w, "raw_tokens_per_s": raw, "tokens": n_big, "command_seconds": t_big,
                "command_tokens_per_s": n_big / t_big, "startup_seconds": t_small - n_small / marginal,
                "marginal_tokens_per_s": marginal, "fraction_of_ceiling": marginal / raw,
                "shard_bytes_per_token": size / n_big,
            })
        result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "python": platform.python_version(), "rows": rows}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"tokenizer job vs raw tiktoken.encode_ordinary_batch ({rows[0]['tokens']:,} tokens, {result['machine']})")
        print(f"{'workers':>7} {'raw tok/s':>11} {'command tok/s':>13} {'startup s':>9} {'marginal tok/s':>14} {'of ceiling':>10} {'bytes/token':>11}")
        for r in rows:
            print(f"{r['workers']:>7} {r['raw_tokens_per_s']:>11,.0f} {r['command_tokens_per_s']:>13,.0f} {r['startup_seconds']:>9.2f} "
                  f"{r['marginal_tokens_per_s']:>14,.0f} {100 * r['fraction_of_ceiling']:>9.1f}% {r['shard_bytes_per_token']:>11.4f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
