"""Training-loader throughput (train/data.py) beside its ceiling, raw memory-mapped window reads.

    .venv/bin/python bench/loader_throughput.py [--seconds S] [--out bench/results/loader.json]

Tokenizes the embedded prose (~400k tokens) into a temporary pretrain folder, then times, at
each batch shape: raw numpy slicing of windows from the memory-mapped shards in a loop (the
ceiling: no grain, no dicts, no masks), ShardWindows items stacked by hand (the source's own
cost), and make_batches in-process (unshuffled and shuffled) and with 2 worker processes. Worker start-up is timed
apart: the rates are steady-state. Prints a table and writes it to bench/results/loader.json, with
the tiny train step's consumption (tokens/s from bench/results/train_step_tiny.json, if present) beside
the loader the trainer uses (make_batches, workers=0, shuffled) at the tiny model's sequence length.
Runs in about a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import grain
import numpy as np

from planck.cli import main as planck
from planck.shards.folder import ShardFolder
from planck.shards.windows import ShardWindows
from planck.train.data import make_batches

SHAPES = ((4, 1024), (8, 64))
TRAINER = ("make_batches, workers=0", 64)  # the trainer's loader (loader_workers = 0) at the tiny preset's seq_len
TRAIN_STEP = Path(__file__).parent / "results" / "train_step_tiny.json"


def _rate(next_batch, seconds: float, repeat: int = 3) -> float:
    """Batches per second of calling next_batch: the best of `repeat` runs of seconds / repeat (this VM is noisy)."""
    best = 0.0
    for _ in range(repeat):
        n, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds / repeat or n < 10:
            next_batch()
            n += 1
        best = max(best, n / elapsed)
    return best


def _raw_reader(folder: Path, batch: int, seq_len: int, seed: int):
    """The ceiling: windows sliced from the memory maps in a random order, stacked as int32."""
    shards = ShardFolder(folder).shards("train")
    where = [(sh.tokens, k * seq_len) for sh in shards for k in range((sh.num_tokens - 1) // seq_len)]
    order = np.random.default_rng(seed).permutation(len(where)).tolist()
    pos = 0

    def next_batch() -> np.ndarray:
        nonlocal pos
        out = np.empty((batch, seq_len + 1), dtype=np.int32)
        for r in range(batch):
            tokens, start = where[order[pos % len(order)]]
            out[r] = tokens[start : start + seq_len + 1]
            pos += 1
        return out

    return next_batch


def _source_reader(src: ShardWindows, batch: int, seed: int):
    """ShardWindows items in a random order, stacked by hand: the source without grain."""
    order = np.random.default_rng(seed).permutation(len(src)).tolist()
    pos = 0

    def next_batch() -> dict[str, np.ndarray]:
        nonlocal pos
        items = [src[order[(pos + r) % len(order)]] for r in range(batch)]
        pos += batch
        return {k: np.stack([it[k] for it in items]) for k in items[0]}

    return next_batch


def _shuffle_cost(n: int, calls: int = 2000) -> float:
    """Seconds per call of grain's index shuffle over n windows (what MapDataset.shuffle calls per element)."""
    t0 = time.perf_counter()
    for i in range(calls):
        grain.experimental.index_shuffle(i % n, max_index=n - 1, seed=0, rounds=4)
    return (time.perf_counter() - t0) / calls


def main() -> None:
    """Measure and print."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=1.5, help="time per measurement (best of 3 thirds)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes of the multiprocess row")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "loader.json")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="planck-loader-bench-") as tmp:
        folder = Path(tmp) / "pretrain"
        code = planck(["tokenize", "pretrain", "--source", "embedded", "--out", str(folder), "--max-tokens", "400k",
                       "--val-tokens", "0", "--shard-tokens", "200k", "--workers", "1", "--quiet"])
        if code:
            raise SystemExit(code)
        tokens = sum(e.tokens for e in ShardFolder(folder).entries("train"))
        print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
              f"{tokens:,} train tokens; {args.seconds:g} s per measurement\n")
        sizes, shapes = [], []
        header = f"{'batch':>9}  {'loader':<40} {'batches/s':>10} {'tokens/s':>12} {'of ceiling':>10}  start-up"
        print(header)
        print("-" * len(header))
        for batch, seq_len in SHAPES:
            src = ShardWindows(folder, "train", seq_len)
            shape = f"{batch} x {seq_len}"
            rows = [("raw memmap slicing (ceiling)", _rate(_raw_reader(folder, batch, seq_len, 0), args.seconds), None),
                    ("ShardWindows, stacked by hand", _rate(_source_reader(src, batch, 0), args.seconds), None)]
            for workers, shuffle in ((0, False), (0, True), (args.workers, True)):
                t0 = time.perf_counter()
                it = iter(make_batches(src, batch_size=batch, seed=0, workers=workers, shuffle=shuffle))
                next(it)  # start-up (spawning workers) is paid once per run: timed apart
                startup = time.perf_counter() - t0
                name = f"make_batches, workers={workers}" + ("" if shuffle else ", no shuffle")
                try:
                    rows.append((name, _rate(lambda: next(it), args.seconds), startup))
                finally:
                    it.close()
            ceiling = rows[0][1]
            for name, rate, startup in rows:
                up = "" if startup is None else f"{startup:.2f} s"
                print(f"{shape:>9}  {name:<40} {rate:>10,.0f} {rate * batch * seq_len:>12,.0f} {rate / ceiling:>10.1%}  {up}")
            shapes.append({
                "batch": batch, "seq_len": seq_len, "ceiling_batches_per_s": ceiling,
                "rows": [{"loader": name, "batches_per_s": rate, "tokens_per_s": rate * batch * seq_len,
                          "fraction_of_ceiling": rate / ceiling, "startup_s": startup} for name, rate, startup in rows],
            })
            sizes.append(len(src))
        # grain's shuffle permutes one index per element (a Feistel network): its cost depends
        # on the number of windows, and this small corpus is the expensive end.
        sizes.append(3_000_000_000 // 2048)
        shuffle_us = {n: _shuffle_cost(n) * 1e6 for n in sizes}
        print("\ngrain shuffle, per element:  " + "   ".join(
            f"{n:,} windows {us:.0f} us" for n, us in shuffle_us.items()) + "  (the last: 3B tokens at T 2048)")

    # What the trainer consumes, for comparison: the loader must stay well ahead of it.
    step = json.loads(TRAIN_STEP.read_text()) if TRAIN_STEP.exists() else None
    sh, loader = next((sh, r) for sh in shapes if sh["seq_len"] == TRAINER[1] for r in sh["rows"] if r["loader"] == TRAINER[0])
    trainer = None if step is None else {
        "source_file": TRAIN_STEP.name, "train_step_tokens_per_s": step["tokens_per_s"],
        "loader": f"{loader['loader']}, {sh['batch']} x {sh['seq_len']}", "loader_tokens_per_s": loader["tokens_per_s"],
        "loader_over_train_step": loader["tokens_per_s"] / step["tokens_per_s"],
    }
    if trainer:
        print(f"trainer consumption (tiny train step): {trainer['train_step_tokens_per_s']:,.0f} tok/s; "
              f"the loader supplies {trainer['loader_over_train_step']:,.0f}x that")
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "python": platform.python_version(),
              "train_tokens": tokens, "seconds_per_measurement": args.seconds, "shapes": shapes,
              "shuffle_us_per_element": {str(n): us for n, us in shuffle_us.items()}, "trainer": trainer}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":  # grain's workers are spawned: they re-import this file
    main()
