"""The run pre-flight's cost (shards/preflight.py) per GB, beside its ceilings.

    .venv/bin/python bench/preflight_throughput.py [--gb 1] [--shard-tokens 64M] [--out bench/results/preflight.json]

Writes a pretrain-like folder of random valid tokens (~1 GB: 8 shards of 64M tokens, documents
of ~4k tokens) with the shard writer and a manifest, then times `preflight()` on it:
cold-ish (each shard's pages dropped from the page cache with posix_fadvise first, so the
disk is read) and warm (the files in the page cache), with one thread and with the default
pool. Beside it, the ceilings: reading the files alone, and blake2b-128 alone over a buffer in
memory (one thread). Prints a table and writes it to --out. numpy and hashlib only (no JAX).
Takes about a minute here, most of it writing the folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from planck.schemas.manifest import Manifest, ShardEntry, SourceEntry
from planck.schemas.tokenizer import VOCAB_SIZE, tokenizer_fingerprint
from planck.shards.folder import write_manifest
from planck.shards.preflight import preflight
from planck.shards.writer import ShardWriter
from planck.tokenize.output import shard_name, tokenizer_record


def _tokens(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 10**3, "m": 10**6, "g": 10**9}.get(text[-1:], 1)
    return int(float(text.rstrip("kmg")) * scale)


def make_folder(folder: Path, total_bytes: float, shard_tokens: int, seed: int = 0) -> Manifest:
    """Random valid ids in shards of shard_tokens (val gets the first shard), documents of 1..8k tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_shards = max(2, round(total_bytes / (2 * shard_tokens)))
    entries: list[ShardEntry] = []
    docs_total = tokens_total = 0
    for s in range(n_shards):
        split = "val" if s == 0 else "train"
        index = 0 if s == 0 else s - 1
        path = folder / shard_name(split, "", index)
        w = ShardWriter(path, vocab_size=VOCAB_SIZE, fingerprint=tokenizer_fingerprint(), with_roles=False)
        ids = rng.integers(0, VOCAB_SIZE, shard_tokens, dtype=np.uint16)
        cuts = np.cumsum(rng.integers(1, 8192, shard_tokens // 1024 + 2))
        cuts = np.concatenate([[0], cuts[cuts < shard_tokens], [shard_tokens]])
        for a, b in zip(cuts[:-1], cuts[1:]):
            w.add(ids[a:b], source=0)
        done = w.close()
        entries.append(ShardEntry(path.name, split, done.tokens, done.documents, done.bytes, done.checksum))
        docs_total += done.documents
        tokens_total += done.tokens
    manifest = Manifest(
        kind="pretrain",
        tokenizer=tokenizer_record(),
        shards=entries,
        sources=[SourceEntry("random", "random ids (bench/preflight_throughput.py)", "text", docs_total, docs_total, tokens_total)],
        trained_roles=[0],
        made_by={"command": ["bench/preflight_throughput.py"]},
    )
    write_manifest(folder, manifest)
    return manifest


def drop_from_page_cache(folder: Path) -> None:
    """Evict the shards' pages (only these files'): the next read comes from the disk, or its cache below us."""
    for p in folder.glob("*.bin"):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_rate(folder: Path) -> float:
    """MB/s of reading the shard files alone (8 MiB chunks, one thread)."""
    buf = bytearray(8 << 20)
    n, t0 = 0, time.perf_counter()
    for p in sorted(folder.glob("*.bin")):
        with open(p, "rb", buffering=0) as f:
            while k := f.readinto(buf):
                n += k
    return n / 1e6 / (time.perf_counter() - t0)


def blake2b_rate(mb: int = 256) -> float:
    """MB/s of blake2b-128 over data in memory, one thread: the checksum's ceiling."""
    data = np.random.default_rng(1).integers(0, 256, mb << 20, dtype=np.uint8).tobytes()
    t0 = time.perf_counter()
    h = hashlib.blake2b(digest_size=16)
    for i in range(0, len(data), 8 << 20):
        h.update(data[i : i + (8 << 20)])
    return len(data) / 1e6 / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=1.0, help="folder size in GB (default 1)")
    ap.add_argument("--shard-tokens", default="64M", help="tokens per shard (default 64M: 128 MB shards)")
    ap.add_argument("--dir", type=Path, help="where to write the folder (default: a temporary folder, removed after)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement, the best is kept (default 3)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "preflight.json")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp) / "pretrain"
        t0 = time.perf_counter()
        manifest = make_folder(folder, args.gb * 1e9, _tokens(args.shard_tokens))
        size = sum(e.bytes for e in manifest.shards)
        print(f"wrote {len(manifest.shards)} shards, {size / 1e9:.2f} GB in {time.perf_counter() - t0:.1f} s")

        rows = []
        default_workers = min(8, os.cpu_count() or 1)
        for workers in sorted({1, default_workers}):
            for state in ("cold-ish", "warm"):
                best = None
                for _ in range(args.repeat):
                    if state == "cold-ish":
                        drop_from_page_cache(folder)
                    else:
                        preflight(folder, workers=workers)  # make sure every page is cached
                    r = preflight(folder, workers=workers)
                    best = r if best is None or r.seconds < best.seconds else best
                rows.append({"what": f"preflight, {state}, {workers} thread(s)", "seconds": best.seconds,
                             "mb_per_s": best.mb_per_s, "s_per_gb": best.seconds / (best.bytes / 1e9)})
        drop_from_page_cache(folder)
        cold_read = read_rate(folder)
        warm_read = max(read_rate(folder) for _ in range(args.repeat))
        hash_rate = max(blake2b_rate() for _ in range(args.repeat))

    ceilings = {"read, cold-ish, 1 thread": cold_read, "read, warm, 1 thread": warm_read, "blake2b-128 in memory, 1 thread": hash_rate}
    print(f"\n{'measurement':<40}{'MB/s':>10}{'s per GB':>10}")
    for row in rows:
        print(f"{row['what']:<40}{row['mb_per_s']:>10,.0f}{row['s_per_gb']:>10.2f}")
    for name, rate in ceilings.items():
        print(f"{'ceiling: ' + name:<40}{rate:>10,.0f}{1000 / rate:>10.2f}")
    result = {
        "benchmark": "preflight",
        "folder_bytes": size,
        "shards": len(manifest.shards),
        "rows": rows,
        "ceilings_mb_per_s": ceilings,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
