"""`planck tokenize pretrain`: stream a text corpus into <|endoftext|>-separated uint16 shards, validation split first."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from planck.schemas.manifest import Manifest, SourceEntry
from planck.schemas.shard_header import FORMAT_VERSION
from planck.schemas.tokenizer import tokenizer_fingerprint

from .encode import encode_pretrain_batch
from .output import (
    JobError,
    Progress,
    ShardOutput,
    build_manifest,
    clean_for_resume,
    finished,
    output_folder,
    part_suffix,
    publish,
)
from .parallel import WorkerPool
from .progress_bar import progress_bar
from .sources import EMBEDDED, LOCAL_SUFFIXES, TXT_DOCS, HubUnreachable, SourceError, SourceSpec, local_files, local_name, open_rows

DEFAULT_SOURCE = "HuggingFaceFW/fineweb-edu"
DEFAULT_CONFIG = "sample-10BT"
BATCH_ROWS = 64  # rows per worker task; fixed, so output never depends on it


@dataclass
class PretrainJob:
    source: str = DEFAULT_SOURCE
    out: Path = Path("shards/pretrain")
    config: str | None = None
    split: str = "train"
    max_tokens: int = 3_000_000_000  # training tokens; the validation split comes on top
    val_tokens: int = 10_000_000
    shard_tokens: int = 100_000_000
    workers: int = 1
    worker_index: int = 0
    num_workers: int = 1
    txt_docs: str = "file"  # a document per .txt file, per line, or per blank-line-separated paragraph
    command: list[str] = field(default_factory=list)
    show_progress: bool = True

    def spec(self) -> SourceSpec:
        """The source as a SourceSpec: hub id, local files/folder, or the embedded corpus."""
        if self.source == EMBEDDED:
            return SourceSpec("embedded", "pretrain", path=EMBEDDED)
        looks_local = self.source.startswith(("/", ".", "~")) or Path(self.source).suffix.lower() in LOCAL_SUFFIXES
        if Path(self.source).exists() or any(c in self.source for c in "*?[") or looks_local:
            return SourceSpec(local_name(self.source), "pretrain", path=self.source, split=self.split, config=self.config,
                              txt_docs=self.txt_docs)
        config = self.config if self.config is not None else (DEFAULT_CONFIG if self.source == DEFAULT_SOURCE else None)
        return SourceSpec(self.source.rstrip("/").split("/")[-1], "pretrain", hf=self.source, config=config, split=self.split)

    def options(self) -> dict[str, Any]:
        """Everything that decides the output bytes (and nothing that does not, like --workers)."""
        spec = self.spec()
        txt = {"txt_docs": self.txt_docs} if self._reads_txt(spec) else {}
        return {
            "kind": "pretrain",
            "source": spec.describe(),
            **txt,
            "max_tokens": self.max_tokens,
            "val_tokens": self.val_tokens,
            "shard_tokens": self.shard_tokens,
            "worker_index": self.worker_index,
            "num_workers": self.num_workers,
            "tokenizer": tokenizer_fingerprint().hex(),
            "shard_format": FORMAT_VERSION,
        }

    def _reads_txt(self, spec: SourceSpec) -> bool:
        """Whether the source holds .txt files (only then does --txt-docs change the output, and is it recorded)."""
        if self.txt_docs not in TXT_DOCS:
            raise JobError(f"--txt-docs {self.txt_docs!r}: expected one of {', '.join(TXT_DOCS)}")
        has_txt = spec.is_local_files() and any(f.suffix.lower() == ".txt" for f in local_files(spec).files)
        if self.txt_docs != "file" and not has_txt:
            raise JobError(f"--txt-docs {self.txt_docs}: {self.source} holds no .txt files (it cuts .txt files into documents)")
        return has_txt


def _batches(rows: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while batch := list(itertools.islice(rows, size)):
        # Ship only the text: metadata columns would only cost pickling.
        yield [{"text": r["text"]} if isinstance(r, dict) and "text" in r else r for r in batch]


def run_pretrain(job: PretrainJob) -> Manifest:
    """Tokenize (or resume tokenizing) a pretraining corpus into `job.out`; returns the manifest."""
    if not 0 <= job.worker_index < job.num_workers:
        raise JobError(f"--worker-index {job.worker_index} is not in 0..{job.num_workers - 1}")
    for name in ("max_tokens", "shard_tokens"):
        if getattr(job, name) <= 0:
            raise JobError(f"--{name.replace('_', '-')} must be positive")
    options = job.options()  # before the folder exists: a source that cannot be resolved leaves nothing behind
    with output_folder(job.out) as folder:
        return _run(job, folder, options)


def _run(job: PretrainJob, folder: Path, options: dict[str, Any]) -> Manifest:
    part = part_suffix(job.worker_index, job.num_workers)
    manifest_name = f"manifest.{part}.json" if part else "manifest.json"
    done = finished(folder, options, manifest_name)
    if done is not None:
        return done
    if part:  # a part adds shards to the folder: refuse one that holds another job's finished shards
        finished(folder, {**options, "worker_index": None})

    spec = job.spec()
    progress = Progress(folder, options, part)
    if progress.load():
        progress.check_finished_shards(folder)
    else:
        progress.sources = [SourceEntry(spec.name, spec.describe(), "pretrain")]
        progress.extra = {"val": 0, "train": 0}
    clean_for_resume(folder, progress, part)
    src = progress.sources[0]
    tokens = progress.extra
    # Each machine of a multi-machine job takes its share of the budgets.
    val_target = job.val_tokens // job.num_workers
    train_target = job.max_tokens // job.num_workers
    row_index = progress.position

    def checkpoint() -> None:
        progress.position = row_index
        progress.save()

    out = ShardOutput(
        folder, part=part, shard_tokens=job.shard_tokens, with_roles=False, entries=progress.shards, on_shard=checkpoint
    )
    try:
        rows = open_rows(spec, worker_index=job.worker_index, num_workers=job.num_workers)
    except HubUnreachable as exc:
        raise SourceError(f"{exc}; offline, tokenize local files instead: --source FILE, 'GLOB' or DIR/ "
                          "(.parquet/.jsonl/.json/.txt), or --source embedded") from None
    rows = itertools.islice(rows, progress.position, None)  # resume: skip rows already in finished shards
    bar = progress_bar(
        # A hub stream outlasts any budget, so the budget is the total; a local source's size is unknown
        # until read, and the default 3B budget would promise an ETA of months.
        total=val_target + train_target if spec.path is None else None,
        initial=min(tokens["val"], val_target) + tokens["train"],
        desc=f"tokenize {spec.name}",
        enabled=job.show_progress,
    )
    with WorkerPool(job.workers) as pool, bar:
        results = pool.map_ordered(encode_pretrain_batch, _batches(rows, BATCH_ROWS))
        try:
            for result in itertools.chain.from_iterable(results):  # one result per row, in row order
                if isinstance(result, str):
                    src.skipped[result] = src.skipped.get(result, 0) + 1
                else:
                    split = "val" if tokens["val"] < val_target else "train"
                    if split == "train" and tokens["train"] >= train_target:
                        break
                    out.add(split, result, None, 0)
                    tokens[split] += len(result)
                    src.documents += 1
                    src.tokens += len(result)
                    bar.update(len(result))
                row_index += 1
                src.rows_read = row_index
                if row_index % BATCH_ROWS == 0:
                    bar.set_postfix(docs=f"{src.documents:,}", skipped=sum(src.skipped.values()), refresh=False)
            bar.set_postfix(docs=f"{src.documents:,}", skipped=sum(src.skipped.values()), refresh=False)  # the final figures
            out.finish_shard()
        except BaseException:
            out.abort()
            raise
        finally:
            results.close()
    if src.documents == 0:
        skipped = ", ".join(f"{k} {v:,}" for k, v in sorted(src.skipped.items())) or "none"
        raise JobError(f"{spec.describe()}: no usable document in {src.rows_read:,} rows read (skipped: {skipped}); "
                       "nothing written. A pretrain source needs a non-empty string column `text`")
    manifest = build_manifest("pretrain", progress.shards, [src], options, job.command)
    publish(folder / manifest_name, manifest, progress)
    return manifest
