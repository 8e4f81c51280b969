"""Where each task's rows come from: the hub dataset by default, local files of the same schema with --source-path."""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, TypeVar

from planck.schemas.rows import RowError
from planck.tokenize.sources import SourceSpec, open_rows

T = TypeVar("T")

# name: (row format, hub id, hub config, split). The shipped mixtures train on the train splits
# of ARC and GSM8K (and MMLU's auxiliary_train); we score on the test splits, held out from all of them.
HUB_SOURCES: dict[str, tuple[str, str, str, str]] = {
    "arc_easy": ("arc", "allenai/ai2_arc", "ARC-Easy", "test"),
    "arc_challenge": ("arc", "allenai/ai2_arc", "ARC-Challenge", "test"),
    "mmlu": ("mmlu", "cais/mmlu", "all", "test"),
    "gsm8k": ("gsm8k", "openai/gsm8k", "main", "test"),
}


def source_spec(task: str, local_path: str | None = None) -> SourceSpec:
    """The SourceSpec of a task: its hub dataset, or `local_path` (files, a glob or a hub-like folder) instead."""
    fmt, hf, config, split = HUB_SOURCES[task]
    if local_path is None:
        return SourceSpec(name=task, format=fmt, hf=hf, config=config, split=split)
    # A hub config names a subset of the hub repository, not of local files; a hub-like folder
    # is read at the test split (test-00000-of-00001.parquet), single files whole.
    return SourceSpec(name=task, format=fmt, path=local_path, split=split)


class RowReader:
    """A source's valid rows, parsed and read on demand; invalid ones are counted by reason, not scored.

    Reading stops where the caller stops (`--limit`), so a hub stream is not read to its end, and a
    task whose rows turn out too long for the model's context can read on for more.
    """

    def __init__(self, spec: SourceSpec, parse: Callable[[Any], T]):
        self.spec, self._parse = spec, parse
        self._rows = iter(open_rows(spec))
        self.read = 0  # rows taken from the source, valid or not
        self.skipped: Counter = Counter()
        self.ended = False

    def take(self, n: int | None) -> list[T]:
        """Up to `n` more valid rows (every remaining one when n is None)."""
        out: list[T] = []
        while n is None or len(out) < n:
            try:
                row = next(self._rows)
            except StopIteration:
                self.ended = True
                break
            self.read += 1
            try:
                out.append(self._parse(row))
            except RowError as exc:
                self.skipped[exc.reason] += 1
        return out


def read_rows(spec: SourceSpec, parse: Callable[[Any], T], limit: int | None) -> tuple[list[T], Counter]:
    """The first `limit` valid rows of a source (all without a limit), parsed; invalid rows are counted by reason, not scored."""
    reader = RowReader(spec, parse)
    return reader.take(limit), reader.skipped
