"""Tokenizer-job throughput beside its ceiling, raw `tiktoken.encode_ordinary_batch` on the same text and cores.

    make bench            # or: .venv/bin/python bench/tokenize_throughput.py [--copies N]

Writes bench/results/tokenize.json and prints a table. The corpus is the embedded prose,
repeated into a local parquet file so the job reads it through `datasets` like real data.
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
from planck.tokenize.embedded import embedded_rows
from planck.shards.folder import read_manifest


def _time_job(source: Path, out: Path, workers: int):
    """Wall time of the whole `planck tokenize pretrain` command, as a user runs it."""
    cmd = [sys.executable, "-m", "planck.cli", "tokenize", "pretrain", "--source", str(source), "--out", str(out),
           "--max-tokens", "1000B", "--val-tokens", "0", "--shard-tokens", "1M", "--workers", str(workers), "--quiet"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0, read_manifest(out)


def main() -> None:
    """Measure and print."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=16, help="times the embedded corpus is repeated (16: ~10M tokens)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, default=Path("bench/results/tokenize.json"))
    args = ap.parse_args()

    texts = [r["text"] for r in embedded_rows()] * args.copies
    enc = get_tokenizer()
    tmp = Path(tempfile.mkdtemp(prefix="planck-bench-"))
    try:
        corpus = tmp / "corpus.parquet"
        pq.write_table(pa.table({"text": texts}), corpus)
        pq.write_table(pa.table({"text": texts[:1]}), tmp / "one.parquet")
        n_tokens = sum(len(t) for t in enc.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 1)) + len(texts)
        rows = []
        for w in args.workers:
            t0 = time.perf_counter()
            enc.encode_ordinary_batch(texts, num_threads=w)
            raw = n_tokens / (time.perf_counter() - t0)
            # The fixed cost (importing datasets, starting workers) is timed on a one-document
            # corpus and reported apart: a real run amortises it over billions of tokens.
            startup = _time_job(tmp / "one.parquet", tmp / f"startup-{w}", w)[0]
            elapsed, m = _time_job(corpus, tmp / f"shards-{w}", w)
            size = sum(s.bytes for s in m.shards)
            rows.append({
                "workers": w, "tokens": n_tokens, "raw_tokens_per_s": raw,
                "job_seconds": elapsed, "startup_seconds": startup,
                "job_tokens_per_s": n_tokens / elapsed,
                "steady_tokens_per_s": n_tokens / (elapsed - startup),
                "fraction_of_ceiling": n_tokens / (elapsed - startup) / raw,
                "shard_bytes_per_token": size / n_tokens,
            })
        result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "python": platform.python_version(), "rows": rows}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"tokenizer job vs raw tiktoken.encode_ordinary_batch ({n_tokens:,} tokens, {result['machine']})")
        print(f"{'workers':>7} {'raw tok/s':>12} {'job tok/s':>12} {'startup s':>9} {'steady tok/s':>13} {'of ceiling':>10} {'bytes/token':>11}")
        for r in rows:
            print(f"{r['workers']:>7} {r['raw_tokens_per_s']:>12,.0f} {r['job_tokens_per_s']:>12,.0f} {r['startup_seconds']:>9.2f} "
                  f"{r['steady_tokens_per_s']:>13,.0f} {100 * r['fraction_of_ceiling']:>9.1f}% {r['shard_bytes_per_token']:>11.4f}")
        print("job = whole command incl. startup; steady = after the fixed startup cost; ceiling = raw tiktoken on the same cores")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
