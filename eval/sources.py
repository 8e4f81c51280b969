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


def read_rows(spec: SourceSpec, parse: Callable[[Any], T], limit: int | None) -> tuple[list[T], Counter]:
    """The first `limit` valid rows of a source (all without a limit), parsed; invalid rows are counted by reason, not scored."""
    items: list[T] = []
    skipped: Counter = Counter()
    for row in open_rows(spec):
        try:
            items.append(parse(row))
        except RowError as exc:
            skipped[exc.reason] += 1
            continue
        if limit is not None and len(items) >= limit:
            break  # stop streaming from the hub as soon as enough rows were read
    return items, skipped
