"""The pre-flight check of a shard folder: everything a run will read, checked once before it reads it.

`preflight(folder)` reads every byte of the shards of the given splits and refuses, with one
line naming the file, anything that would make training or evaluation read bad or lying data:

- manifest.json: a regular UTF-8 file whose every field has the right type and range
  (schemas/manifest.py), made with this planck's tokenizer (fingerprint and vocabulary size);
- each listed shard: a regular file (never a FIFO, device or directory: no hang), a valid
  header of this tokenizer, the exact size its header implies and the manifest lists, the
  header's counts and checksum equal to its manifest entry, a name whose `train_`/`val_` prefix
  matches the split the manifest gives it (swapped splits), role ids present exactly in chat
  folders;
- each shard's payload, in one sequential read: the blake2b-128 checksum, every token id below
  the tokenizer's VOCAB_SIZE (50,263), every role id a Role, document offsets rising from 0 to
  the token count, every document's source listed in the manifest;
- the folder: no unlisted shard of a checked split, and (when both splits are checked) the
  manifest's per-source document and token totals equal to what the shards hold.

Shards are checked in parallel threads (file reads, hashlib and numpy release the GIL).
`verify_problems` runs the same checks but collects every problem: `planck shards verify`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from planck.schemas.errors import PlanckError
from planck.schemas.manifest import MANIFEST_NAME, SPLITS, Manifest, ManifestError, ShardEntry
from planck.schemas.shard_header import layout
from planck.schemas.tokenizer import VOCAB_SIZE

from .folder import read_manifest
from .reader import NUM_ROLES, ShardError, check_content, open_shard, read_header, regular_file, scan_payload

# progress(shards_done, shards_total, bytes_done, bytes_total), called from the calling thread after each shard
Progress = Callable[[int, int, int, int], None]


@dataclass(frozen=True)
class PreflightReport:
    """What a pre-flight checked: record it in the run folder (`as_dict()`)."""

    folder: str
    kind: str
    splits: tuple[str, ...]
    shards: int  # shard files checked
    tokens: int
    documents: int
    bytes: int  # bytes read (whole shard files)
    seconds: float
    workers: int  # threads that read shards
    fingerprint: str  # blake2b-128 hex of (kind, tokenizer fingerprint, [(split, file, checksum, tokens, documents)])

    @property
    def mb_per_s(self) -> float:
        """Throughput in MB/s (10^6 bytes)."""
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else float("inf")

    def as_dict(self) -> dict:
        """JSON-ready."""
        return {**asdict(self), "splits": list(self.splits)}


@dataclass(frozen=True)
class _Checked:
    entry: ShardEntry
    bytes: int
    source_documents: np.ndarray  # documents per manifest source
    source_tokens: np.ndarray  # tokens per manifest source


def content_fingerprint(manifest: Manifest, entries: Sequence[ShardEntry]) -> str:
    """What a run read, as 32 hex digits: equal fingerprints mean byte-identical checked shards (their checksums were verified)."""
    content = json.dumps(
        [manifest.kind, manifest.tokenizer["fingerprint"], [(e.split, e.file, e.checksum, e.tokens, e.documents) for e in entries]]
    )
    return hashlib.blake2b(content.encode(), digest_size=16).hexdigest()


def _split_of_name(name: str) -> str | None:
    """The split a shard's file name says it belongs to (tokenize/output.py names them train_... and val_...)."""
    for split in SPLITS:
        if name.startswith(split + "_"):
            return split
    return None


def check_shard(folder: Path, entry: ShardEntry, manifest: Manifest) -> _Checked:
    """Every check of one listed shard, its payload read once; ShardError names the file and what is wrong."""
    path = Path(folder) / entry.file
    named = _split_of_name(entry.file)
    if named != entry.split:
        says = f"its name says {named!r}" if named else "its name has no train_/val_ prefix"
        raise ShardError(path, f"the manifest lists it in the {entry.split!r} split but {says}: splits swapped or renamed")
    st = regular_file(path)
    header = read_header(path)
    _, size = layout(header)
    if st.st_size < size:
        raise ShardError(path, f"truncated: {st.st_size} bytes, the header promises {size}")
    if st.st_size > size:
        raise ShardError(path, f"{st.st_size - size} unexpected bytes after the last section")
    claims = {"tokens": header.num_tokens, "documents": header.num_documents, "bytes": size}
    for key, value in claims.items():
        listed = getattr(entry, key)
        if value != listed:
            raise ShardError(
                path, f"does not match the manifest: holds {value:,} {key}, the manifest lists {listed:,} (a replaced or stale file, or a lying manifest)"
            )
    if header.checksum.hex() != entry.checksum:
        raise ShardError(path, "does not match the manifest: the checksums differ (a replaced or stale file, or a lying manifest)")
    fp = manifest.tokenizer["fingerprint"]
    if header.tokenizer_fingerprint.hex() != fp:
        raise ShardError(path, f"made with another tokenizer (fingerprint {header.tokenizer_fingerprint.hex()}, the manifest's is {fp})")
    if header.vocab_size != VOCAB_SIZE:
        raise ShardError(path, f"its header gives vocabulary size {header.vocab_size:,}, this tokenizer has {VOCAB_SIZE:,}")
    if header.has_roles != (manifest.kind == "chat"):
        has = "holds role ids" if header.has_roles else "holds no role ids"
        raise ShardError(path, f"{has}, but the manifest says this is a {manifest.kind} folder")
    scan_payload(path, header, vocab_size=VOCAB_SIZE, num_roles=NUM_ROLES)
    n_src = len(manifest.sources)
    shard = open_shard(path, fingerprint=header.tokenizer_fingerprint)
    check_content(shard, ids=False, num_sources=n_src)
    src = shard.doc_sources.astype(np.int64)
    lengths = np.diff(shard.doc_offsets.astype(np.int64))
    docs = np.bincount(src, minlength=n_src)[:n_src]
    tokens = np.bincount(src, weights=lengths, minlength=n_src)[:n_src].astype(np.int64)
    return _Checked(entry, size, docs, tokens)


def _name_key(name: str) -> list:
    """train_w001_00012.bin sorts by its numbers (00012 < 100000 even when the digits outgrow their padding)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _manifest_problems(manifest: Manifest, where: Path, splits: Sequence[str]) -> list[PlanckError]:
    """The manifest against this planck's tokenizer, and each split's shards in the order `planck tokenize` lists them."""
    from planck.schemas.tokenizer import tokenizer_fingerprint

    ours = tokenizer_fingerprint().hex()
    tok = manifest.tokenizer
    problems: list[PlanckError] = []
    if tok["fingerprint"] != ours:
        problems.append(ManifestError(
            f"{where}: tokenized with another tokenizer (fingerprint {tok['fingerprint']}, this planck's is {ours}): its ids would mean other text"
        ))
    if tok["vocab_size"] != VOCAB_SIZE:
        problems.append(ManifestError(f"{where}: tokenizer vocab_size {tok['vocab_size']:,} is not this tokenizer's {VOCAB_SIZE:,}"))
    for split in splits:
        # Windows are numbered across a split's shards in manifest order: a reordered list is other training data.
        names = [e.file for e in manifest.split(split)]
        for a, b in zip(names, names[1:]):
            if _name_key(a) > _name_key(b):
                problems.append(ManifestError(f"{where}: the {split!r} shards are listed out of order ({b} after {a})"))
                break
    return problems


def check_manifest(folder: Path | str, manifest: Manifest, splits: Sequence[str] = SPLITS) -> None:
    """The manifest-wide checks (this planck's tokenizer, shards listed in order): the first problem as a ManifestError."""
    problems = _manifest_problems(manifest, Path(folder) / MANIFEST_NAME, splits)
    if problems:
        raise problems[0]


def _run(
    folder: Path,
    manifest: Manifest,
    entries: list[ShardEntry],
    workers: int | None,
    progress: Progress | None,
    stop_at_first: bool,
) -> tuple[list[_Checked], list[tuple[int, PlanckError]], int]:
    """Check entries in parallel: (results in order, (entry index, error) pairs in order, threads used)."""
    total_bytes = sum(e.bytes for e in entries)
    n = len(entries)
    workers = max(1, min(workers or min(8, os.cpu_count() or 1), n or 1))
    results: dict[int, _Checked] = {}
    errors: dict[int, PlanckError] = {}
    done_bytes = 0

    def record(i: int, fut_result: Callable[[], _Checked]) -> None:
        nonlocal done_bytes
        try:
            results[i] = fut_result()
        except PlanckError as exc:
            errors[i] = exc
        except OSError as exc:  # a file that vanished or changed under us mid-check
            errors[i] = ShardError(folder / entries[i].file, f"cannot be read ({exc.__class__.__name__}: {exc.strerror or exc})")
        done_bytes += entries[i].bytes
        if progress is not None:
            progress(len(results) + len(errors), n, done_bytes, total_bytes)

    if workers == 1:
        for i, e in enumerate(entries):
            record(i, lambda e=e: check_shard(folder, e, manifest))
            if errors and stop_at_first:
                break
    else:
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="planck-preflight")
        try:
            pending: dict[Future, int] = {pool.submit(check_shard, folder, e, manifest): i for i, e in enumerate(entries)}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for i, fut in sorted((pending.pop(f), f) for f in done):
                    record(i, fut.result)
                if errors and stop_at_first:
                    break
        finally:
            # On the first error (or Ctrl-C) shards not yet started are skipped; running ones finish their read.
            pool.shutdown(wait=True, cancel_futures=True)
    return [results[i] for i in sorted(results)], sorted(errors.items()), workers


def _folder_problems(
    folder: Path, manifest: Manifest, splits: Sequence[str], checked: list[_Checked], every_bin: bool = False
) -> list[PlanckError]:
    """Unlisted shards of the checked splits (every *.bin if every_bin); per-source totals (only when every split was
    checked and every shard passed)."""
    problems: list[PlanckError] = []
    listed = {e.file for e in manifest.shards}
    try:
        names = sorted(p.name for p in folder.iterdir())
    except OSError as exc:
        return [ManifestError(f"{folder}: cannot list the folder ({exc.strerror})")]
    for name in names:
        if name.endswith(".bin") and name not in listed and (every_bin or _split_of_name(name) in splits):
            problems.append(ShardError(folder / name, "not listed in the manifest: a stale or foreign shard, or an entry deleted from manifest.json"))
    if set(SPLITS) <= set(splits) and len(checked) == len(manifest.shards):
        docs = sum((c.source_documents for c in checked), np.zeros(len(manifest.sources), np.int64))
        tokens = sum((c.source_tokens for c in checked), np.zeros(len(manifest.sources), np.int64))
        for i, src in enumerate(manifest.sources):
            for what, have, listed_n in (("documents", docs[i], src.documents), ("tokens", tokens[i], src.tokens)):
                if int(have) != listed_n:
                    problems.append(ManifestError(
                        f"{folder / MANIFEST_NAME}: source {src.name!r} lists {listed_n:,} {what}, the shards hold {int(have):,}"
                    ))
    return problems


def _entries(manifest: Manifest, splits: Sequence[str]) -> list[ShardEntry]:
    return [e for e in manifest.shards if e.split in splits]


def preflight(
    folder: Path | str,
    splits: Sequence[str] = ("train", "val"),
    workers: int | None = None,
    progress: Progress | None = None,
) -> PreflightReport:
    """Check every byte a run will read from these splits of a shard folder; ShardError or ManifestError (one line naming
    the file and what is wrong) at the first problem, else a report of what was checked.

    workers: threads reading shards (default: min(8, CPUs)). progress(shards_done, shards_total, bytes_done,
    bytes_total) is called from the calling thread after each shard.
    """
    start = time.perf_counter()
    folder = Path(folder)
    splits = tuple(splits)
    for s in splits:
        if s not in SPLITS:
            raise ValueError(f"unknown split {s!r} (expected one of {', '.join(SPLITS)})")
    manifest = read_manifest(folder)
    check_manifest(folder, manifest, splits)
    entries = _entries(manifest, splits)
    checked, errors, used = _run(folder, manifest, entries, workers, progress, stop_at_first=True)
    if errors:
        raise errors[0][1]
    problems = _folder_problems(folder, manifest, splits, checked)
    if problems:
        raise problems[0]
    return PreflightReport(
        folder=str(folder),
        kind=manifest.kind,
        splits=splits,
        shards=len(entries),
        tokens=sum(e.tokens for e in entries),
        documents=sum(e.documents for e in entries),
        bytes=sum(c.bytes for c in checked),
        seconds=time.perf_counter() - start,
        workers=used,
        fingerprint=content_fingerprint(manifest, entries),
    )


def verify_problems(folder: Path | str, workers: int | None = None, progress: Progress | None = None) -> tuple[list[str], list[str]]:
    """The pre-flight's checks over every split, collecting every problem: (problems, warnings), each a line naming its file."""
    folder = Path(folder)
    try:
        manifest = read_manifest(folder)
    except PlanckError as exc:
        return [str(exc)], []
    problems: list[PlanckError] = _manifest_problems(manifest, folder / MANIFEST_NAME, SPLITS)
    checked, errors, _ = _run(folder, manifest, list(manifest.shards), workers, progress, stop_at_first=False)
    problems += [exc for _, exc in errors]
    problems += _folder_problems(folder, manifest, SPLITS, checked, every_bin=True)
    warnings = []
    try:
        for p in sorted(folder.glob("*.tmp")):
            warnings.append(f"{p}: leftover of an interrupted job (harmless; a re-run removes it)")
    except OSError:
        pass
    return [str(p) for p in problems], warnings
