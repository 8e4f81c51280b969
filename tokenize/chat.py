"""`planck tokenize chat`: render a mixture of chat sources into shuffled shards with a role id per token.

Two passes keep memory bounded and make resuming cheap: each source is first rendered into
its own shard under `.work/`, then a seeded permutation of all documents (with repeats, and a
held-out validation set taken before repeating) is written into the final shards.
"""

from __future__ import annotations

import itertools
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from planck.schemas.atomic import atomic_write_text
from planck.schemas.manifest import MANIFEST_NAME, Manifest, SourceEntry
from planck.schemas.shard_header import FORMAT_VERSION
from planck.schemas.tokenizer import VOCAB_SIZE, tokenizer_fingerprint
from planck.shards.reader import ShardError, open_shard
from planck.shards.writer import ShardWriter

from .encode import render_chat_batch
from .mixture import Mixture
from .output import JobError, Progress, ShardOutput, build_manifest, clean_for_resume, finished, output_folder, publish
from .parallel import WorkerPool
from .progress_bar import progress_bar
from .sources import HubUnreachable, SourceError, SourceSpec, open_rows

BATCH_ROWS = 64


@dataclass
class ChatJob:
    mixture: Mixture
    out: Path
    val_rows: int = 0
    shard_tokens: int = 100_000_000
    workers: int = 1
    command: list[str] = field(default_factory=list)
    show_progress: bool = True

    def options(self) -> dict[str, Any]:
        """Everything that decides the output bytes."""
        return {
            "kind": "chat",
            "mixture": self.mixture.name,
            "seed": self.mixture.seed,
            "sources": [
                {"name": s.name, "source": s.describe(), "format": s.format, "max_rows": s.max_rows, "repeats": s.repeats}
                for s in self.mixture.sources
            ],
            "val_rows": self.val_rows,
            "shard_tokens": self.shard_tokens,
            "tokenizer": tokenizer_fingerprint().hex(),
            "shard_format": FORMAT_VERSION,
        }


def _render_source(job: ChatJob, index: int, spec: SourceSpec, work: Path, pool: WorkerPool) -> SourceEntry:
    """Pass 1 for one source: every valid row rendered once into `.work/NN-name.bin`."""
    stem = f"{index:02d}-{spec.name}"
    meta_path = work / f"{stem}.json"
    wanted = job.options()["sources"][index]
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta["spec"] == wanted:
            return SourceEntry(**meta["entry"])
    entry = SourceEntry(spec.name, spec.describe(), spec.format, repeats=spec.repeats)
    try:
        rows = itertools.islice(open_rows(spec), spec.max_rows)
    except HubUnreachable as exc:
        raise SourceError(f"{exc}; without the hub, read local files of the same schema: --source-path {spec.name}=PATH") from None
    batches = ((spec.format, list(b)) for b in iter(lambda: list(itertools.islice(rows, BATCH_ROWS)), []))
    bar = progress_bar(spec.max_rows, f"render {spec.name}", job.show_progress, unit="row")
    results = pool.map_ordered(render_chat_batch, batches)
    try:
        with ShardWriter(work / f"{stem}.bin", vocab_size=VOCAB_SIZE, fingerprint=tokenizer_fingerprint(), with_roles=True) as w:
            for batch in results:
                for result in batch:
                    entry.rows_read += 1
                    if isinstance(result, str):
                        entry.skipped[result] = entry.skipped.get(result, 0) + 1
                    else:
                        w.add(result[0], result[1], index)
                bar.update(len(batch))
            w.close()
        if bar.total is not None and bar.n < bar.total:  # the source ran out before max_rows: end the bar full
            bar.total = bar.n
            bar.refresh()
    finally:
        bar.close()
        results.close()
    # documents/tokens are filled in pass 2, counting what lands in the shards (repeats included)
    atomic_write_text(meta_path, json.dumps({"spec": wanted, "entry": asdict(entry)}, indent=1))
    return entry


def mixture_order(counts: list[int], repeats: list[int], val_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(source, document) of every output document in order; the first `n_val` are validation.

    Validation rows are drawn before repeating, so no repeated row is in both splits.
    """
    rng = np.random.default_rng(seed)
    src = np.concatenate([np.full(n, i, np.int64) for i, n in enumerate(counts)] or [np.zeros(0, np.int64)])
    doc = np.concatenate([np.arange(n, dtype=np.int64) for n in counts] or [np.zeros(0, np.int64)])
    perm = rng.permutation(len(src))
    n_val = min(val_rows, len(src))
    val, rest = perm[:n_val], perm[n_val:]
    train = np.repeat(rest, np.asarray(repeats, np.int64)[src[rest]])
    train = train[rng.permutation(len(train))]
    order = np.concatenate([val, train])
    return src[order], doc[order], n_val


def run_chat(job: ChatJob) -> Manifest:
    """Render (or resume rendering) a chat mixture into `job.out`; returns the manifest."""
    options = job.options()
    with output_folder(job.out) as folder:
        return _run(job, folder, options)


def _refuse_empty_sources(specs: list[SourceSpec], entries: list[SourceEntry], rendered: list, work: Path) -> None:
    """A source that kept no row is a mistake (wrong file, format or column names): stop before writing any shard."""
    empty = [i for i, r in enumerate(rendered) if r.num_documents == 0]
    if not empty:
        return
    lines = []
    for i in empty:
        e = entries[i]
        skipped = ", ".join(f"{k} {v:,}" for k, v in sorted(e.skipped.items())) or "none"
        lines.append(f"source {e.name!r} ({e.spec}) kept no rows: {e.rows_read:,} read, skipped: {skipped}")
        for suffix in (".json", ".bin"):  # re-read it next time, once its path or format is fixed
            (work / f"{i:02d}-{specs[i].name}{suffix}").unlink(missing_ok=True)
    raise JobError("; ".join(lines) + "; nothing written: check that source's path and `format` (the skip reasons say what its rows lack)")


def _run(job: ChatJob, folder: Path, options: dict[str, Any]) -> Manifest:
    done = finished(folder, options)
    if done is not None:
        return done
    work = folder / ".work"
    work.mkdir(exist_ok=True)
    specs = job.mixture.sources
    with WorkerPool(job.workers) as pool:
        entries = [_render_source(job, i, s, work, pool) for i, s in enumerate(specs)]
    try:
        rendered = [open_shard(work / f"{i:02d}-{s.name}.bin", verify=True) for i, s in enumerate(specs)]
    except ShardError as exc:
        raise JobError(f"intermediate shard damaged ({exc}); delete {work} and re-run") from None
    _refuse_empty_sources(specs, entries, rendered, work)

    src_order, doc_order, n_val = mixture_order(
        [r.num_documents for r in rendered], [s.repeats for s in specs], job.val_rows, job.mixture.seed
    )
    progress = Progress(folder, options)
    if progress.load():
        progress.check_finished_shards(folder)
    else:
        progress.sources = entries
    clean_for_resume(folder, progress, "")
    sources = progress.sources
    k = progress.position

    def checkpoint() -> None:
        progress.position = k
        progress.save()

    out = ShardOutput(folder, part="", shard_tokens=job.shard_tokens, with_roles=True, entries=progress.shards, on_shard=checkpoint)
    bar = progress_bar(len(src_order), "write shards", job.show_progress, initial=k, unit="doc")
    try:
        while k < len(src_order):
            i, j = int(src_order[k]), int(doc_order[k])
            ids, roles = rendered[i].document(j)
            out.add("val" if k < n_val else "train", ids, roles, i)
            sources[i].documents += 1
            sources[i].tokens += len(ids)
            k += 1
            bar.update(1)
        out.finish_shard()
    except BaseException:
        out.abort()
        raise
    finally:
        bar.close()
    manifest = build_manifest("chat", progress.shards, sources, options, job.command)
    publish(folder / MANIFEST_NAME, manifest, progress)
    shutil.rmtree(work, ignore_errors=True)
    return manifest
