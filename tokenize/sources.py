"""Where rows come from: a Hugging Face dataset streamed through `datasets`, local files of the same schema, a JSON identity file, or the embedded corpus."""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from planck.schemas.errors import PlanckError
from planck.schemas.rows import CHAT_FORMATS, SCHEMAS, missing_columns

from . import embedded

EMBEDDED = "embedded"
# Chat sets generated in code, named in mixtures as `path = "builtin:NAME"` (no file to read).
BUILTIN_PREFIX = "builtin:"
_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".txt": "text"}


class SourceError(PlanckError, RuntimeError):
    """A source that cannot be read at all; the message names the file or dataset."""


@dataclass
class SourceSpec:
    """One input: a hub dataset (`hf`, `config`, `split`) or a local `path`, in a row `format`."""

    name: str
    format: str
    hf: str | None = None
    config: str | None = None
    split: str = "train"
    path: str | None = None
    max_rows: int | None = None
    repeats: int = 1

    def describe(self) -> str:
        """A one-line, stable description recorded in the manifest."""
        if self.path == EMBEDDED:
            return embedded.describe()
        if self.path and self.path.startswith(BUILTIN_PREFIX):
            from . import demo_chat

            return demo_chat.describe()
        if self.path is not None:
            return f"local: {self.path}" + (f" (split {self.split})" if Path(self.path).is_dir() else "")
        return f"hf: {self.hf}" + (f" config {self.config}" if self.config else "") + f" split {self.split}"


def _local_files(pattern: str) -> list[Path]:
    p = Path(pattern)
    if p.is_file():
        return [p]
    files = sorted(Path(f) for f in glob.glob(pattern, recursive=True) if Path(f).is_file())
    if not files:
        raise SourceError(f"{pattern}: no such file, folder or glob match")
    return files


def _check_readable(path: Path, builder: str) -> None:
    """Fail early, naming the file, when a local file cannot be read at all."""
    try:
        if builder == "parquet":
            import pyarrow.parquet as pq

            pq.read_metadata(path)
            return
        with open(path, "rb") as f:
            first_line = f.readline(1 << 20)
        first_line.decode("utf-8")
        if path.suffix.lower() == ".jsonl" and first_line.strip():
            json.loads(first_line)
    except Exception as exc:  # pyarrow, OS and decoding errors all mean "unreadable"
        raise SourceError(f"{path}: cannot be read as {builder} ({exc.__class__.__name__}: {exc})") from None


def _dataset(spec: SourceSpec):
    """The `datasets.IterableDataset` for a hub id or local files (the same code path for both)."""
    import datasets

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    try:
        if spec.path is None:
            return datasets.load_dataset(spec.hf, name=spec.config, split=spec.split, streaming=True)
        if Path(spec.path).is_dir():
            # A folder laid out like a hub repository (e.g. train-00000.parquet) loads exactly like the hub.
            return datasets.load_dataset(str(spec.path), name=spec.config, split=spec.split, streaming=True)
        files = _local_files(spec.path)
        kinds = {_BUILDERS.get(f.suffix.lower()) for f in files}
        if None in kinds or len(kinds) != 1:
            raise SourceError(f"{spec.path}: expected .parquet, .jsonl/.json or .txt files of one kind, got {[f.name for f in files]}")
        builder = kinds.pop()
        for f in files:
            _check_readable(f, builder)
        extra = {"sample_by": "document"} if builder == "text" else {}
        return datasets.load_dataset(
            builder, data_files=[str(f) for f in files], split="train", streaming=True, **extra
        )
    except SourceError:
        raise
    except Exception as exc:
        raise SourceError(f"{spec.describe()}: cannot open ({exc.__class__.__name__}: {exc})") from None


def _identity_rows(spec: SourceSpec) -> Iterator[Any]:
    path = Path(spec.path or "")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SourceError(f"{path}: cannot be read as an identity file ({exc})") from None
    if not isinstance(data, list):
        raise SourceError(f"{path}: an identity file is a JSON list of conversations")
    yield from data


def open_rows(spec: SourceSpec, *, worker_index: int = 0, num_workers: int = 1) -> Iterator[Any]:
    """Iterate a source's rows in a fixed order; with n workers, only this worker's disjoint part."""
    if spec.format not in CHAT_FORMATS + ("pretrain",):
        raise SourceError(f"source {spec.name!r}: unknown format {spec.format!r}")
    if spec.path == EMBEDDED:
        rows: Iterator[Any] = embedded.embedded_rows()
        return (r for i, r in enumerate(rows) if i % num_workers == worker_index)
    if spec.path and spec.path.startswith(BUILTIN_PREFIX):
        from . import demo_chat

        if spec.path != BUILTIN_PREFIX + demo_chat.NAME:
            raise SourceError(f"source {spec.name!r}: unknown built-in set {spec.path!r}; there is {BUILTIN_PREFIX}{demo_chat.NAME}")
        return (r for i, r in enumerate(demo_chat.demo_chat_rows()) if i % num_workers == worker_index)
    if spec.format == "identity" and spec.path and spec.path.endswith(".json"):
        return (r for i, r in enumerate(_identity_rows(spec)) if i % num_workers == worker_index)
    ds = _dataset(spec)
    columns = ds.column_names  # known up front for parquet and the hub; None for JSON until read
    if columns is not None and (missing := missing_columns(spec.format, columns)):
        raise SourceError(
            f"{spec.describe()}: no column {', '.join(missing)} (it has {', '.join(columns)}); "
            f"a {spec.format} source has this schema:\n{SCHEMAS[spec.format]}"
        )
    if num_workers > 1:
        from datasets.distributed import split_dataset_by_node

        # Whole files per worker when they divide evenly, every n-th row otherwise.
        ds = split_dataset_by_node(ds, rank=worker_index, world_size=num_workers)
    return _guarded(ds, spec)


def _guarded(ds, spec: SourceSpec) -> Iterator[Any]:
    """Rows of a dataset, with read failures turned into a SourceError naming the source."""
    it = iter(ds)
    while True:
        try:
            row = next(it)
        except StopIteration:
            return
        except Exception as exc:
            raise SourceError(f"{spec.describe()}: reading failed ({exc.__class__.__name__}: {exc})") from None
        yield row
