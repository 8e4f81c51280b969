"""The task registry: each task's name, metric and what it compares against, and the code that prepares and runs it.

Preparing (reading rows, checking the shard folder) happens for every task before the model is
loaded, so a bad file or an unreachable hub fails in seconds, not after compilation.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import EvalError

MULTIPLE_CHOICE = ("arc_easy", "arc_challenge", "mmlu")
ROW_TASKS = (*MULTIPLE_CHOICE, "gsm8k")  # the tasks that read dataset rows (and take --source-path)


@dataclass
class Settings:
    """What the command line asked for."""

    limit: int | None = None
    batch_size: int = 8
    max_new_tokens: int = 256
    seed: int = 0
    data: Path | None = None
    source_paths: dict[str, str] = field(default_factory=dict)
    show_progress: bool = True


@dataclass
class TaskResult:
    """`summary` is what the table, --json and eval.json show; `details` holds per-row results (for tests and debugging)."""

    summary: dict[str, Any]
    details: list[Any] = field(default_factory=list)


class Context:
    """The loaded model and settings shared by the tasks, and a serving engine started on first use."""

    SLOTS = 8

    def __init__(self, loaded, settings: Settings):
        self.loaded, self.settings = loaded, settings
        self._batcher = None

    @property
    def batcher(self):
        """A Batcher over an 8-slot Engine (started on the first generating task)."""
        if self._batcher is None:
            from planck.serve.batcher import Batcher
            from planck.serve.engine import Engine

            self._batcher = Batcher(Engine(self.loaded, slots=self.SLOTS), chat=self.loaded.is_chat)
        return self._batcher

    def progress(self, total: int | None, desc: str, unit: str):
        """A tqdm bar on stderr for one task."""
        import sys

        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, disable=not self.settings.show_progress, file=sys.stderr,
                    dynamic_ncols=True, mininterval=0.5)

    def close(self) -> None:
        """Stop the engine thread, if one was started."""
        if self._batcher is not None:
            self._batcher.close()
            self._batcher = None


# ---- rows: multiple choice and gsm8k --------------------------------------------------------

@dataclass
class PreparedRows:
    """A row task's first valid rows (read before the model loads) and the reader to read on from."""

    items: list
    reader: Any  # sources.RowReader

    @property
    def empty(self) -> bool:
        """True when the source has ended without one valid row: nothing can be scored."""
        return not self.items and self.reader.ended


def _prepare_rows(name: str, settings: Settings, parse: Callable) -> PreparedRows:
    from planck.tokenize.sources import SourceError

    from .sources import RowReader, source_spec

    spec = source_spec(name, settings.source_paths.get(name))
    try:
        reader = RowReader(spec, parse)
        items = reader.take(settings.limit)
    except SourceError as exc:
        if spec.path is not None:
            raise
        raise SourceError(f"{exc}; without the hub, read local files of the same schema: --source-path {name}=PATH") from None
    return PreparedRows(items, reader)


def _fitting(prepared: PreparedRows, limit: int | None, prompt_of: Callable, fits: Callable[[list[int]], bool]):
    """The rows whose prompt fits the context: (row numbers, rows, prompts, rows too long).

    --limit counts scored rows: while rows too long for the context leave fewer than the limit,
    more are read from the source until enough fit or it ends.
    """
    numbers, kept, prompts, too_long = [], [], [], 0
    batch, seen = prepared.items, 0
    while True:
        for item in batch:
            p = prompt_of(item)
            if fits(p):
                numbers.append(seen)
                kept.append(item)
                prompts.append(p)
            else:
                too_long += 1
            seen += 1
        if limit is None or len(kept) >= limit or prepared.reader.ended:
            return numbers, kept, prompts, too_long
        batch = prepared.reader.take(limit - len(kept))


def _row_summary(prepared: PreparedRows, too_long: int, context: int) -> dict[str, Any]:
    """What every row task reports about its rows: how many were read, and the rejected ones by reason."""
    skipped = Counter(prepared.reader.skipped)
    if too_long:
        skipped["too_long"] += too_long
    return {"read": prepared.reader.read, "skipped": dict(sorted(skipped.items())), "context": context,
            "source": prepared.reader.spec.describe()}


def _prepare_multiple_choice(name: str, settings: Settings):
    from .multiple_choice import PARSERS
    from .sources import HUB_SOURCES

    return _prepare_rows(name, settings, PARSERS[HUB_SOURCES[name][0]])


def _run_multiple_choice(name: str, prepared: PreparedRows, ctx: Context) -> TaskResult:
    from . import multiple_choice as mc

    chat, context = ctx.loaded.is_chat, ctx.loaded.config.seq_len
    # Cutting the start of a prompt would cut the question; rows longer than the context are counted, not scored.
    numbers, items, prompts, too_long = _fitting(prepared, ctx.settings.limit, lambda row: mc.prompt_ids(row, chat),
                                                 lambda p: len(p) <= context)
    with ctx.progress(len(items), name, "row") as bar:
        logits = mc.letter_logits(ctx.loaded, prompts, mc.letter_ids(chat), ctx.settings.batch_size, bar) if items else []
    scored = mc.score(items, logits)
    details = [
        {"row": i, "prediction": p, "answer": a, "correct": p == a}
        for i, p, a in zip(numbers, scored.predictions, scored.answers)
    ]
    return TaskResult(
        {"metric": "accuracy", "value": scored.accuracy, "baseline": scored.baseline, "n": len(items),
         "correct": scored.correct, **_row_summary(prepared, too_long, context)},
        details,
    )


def _prepare_gsm8k(name: str, settings: Settings):
    from planck.schemas import rows

    return _prepare_rows(name, settings, rows.gsm8k)


def _run_gsm8k(name: str, prepared: PreparedRows, ctx: Context) -> TaskResult:
    from planck.serve.batcher import SamplingParams

    from . import gsm8k
    from .generate import generate_all

    chat, context = ctx.loaded.is_chat, ctx.loaded.config.seq_len
    # The engine needs room for at least one new token after the prompt.
    numbers, items, prompts, too_long = _fitting(prepared, ctx.settings.limit, lambda row: gsm8k.prompt_ids(row[0], chat),
                                                 lambda p: len(p) < context)
    params = SamplingParams(temperature=0.0, max_tokens=ctx.settings.max_new_tokens, seed=ctx.settings.seed)
    with ctx.progress(len(items), name, "row") as bar:
        texts = generate_all(ctx.batcher, prompts, params, () if chat else gsm8k.BASE_STOP, bar) if items else []
    scored = gsm8k.score([answer for _, answer in items], texts)
    details = [
        {"row": i, "question": q, "reference": r, "prediction": p, "correct": p is not None and p == r, "text": t}
        for i, (q, _), r, p, t in zip(numbers, items, scored.references, scored.predictions, texts)
    ]
    return TaskResult(
        {"metric": "accuracy", "value": scored.accuracy, "baseline": 0.0, "n": len(items), "correct": scored.correct,
         **_row_summary(prepared, too_long, context), "max_new_tokens": ctx.settings.max_new_tokens},
        details,
    )


# ---- bits per byte -----------------------------------------------------------------------------

def _prepare_bpb(name: str, settings: Settings):
    from .bpb import check_folder

    if settings.data is None:
        raise EvalError("the bpb task needs --data SHARD_FOLDER (a folder made by `planck tokenize`, with a val split)")
    check_folder(settings.data)
    return settings.data


def _run_bpb(name: str, folder: Path, ctx: Context) -> TaskResult:
    from . import bpb

    source = bpb.windows(folder, ctx.loaded.config.seq_len)
    with ctx.progress(None, name, "batch") as bar:
        got = bpb.bits_per_byte(ctx.loaded.model, source, ctx.settings.batch_size, ctx.settings.limit, bar)
    loss_base, bpb_base = bpb.uniform_baseline(got["tokens"], got["bytes"])
    return TaskResult({
        "metric": "bpb", "value": got["val_bpb"], "baseline": bpb_base, "n": got["windows"],
        "val_loss": got["val_loss"], "val_loss_baseline": loss_base, "tokens": got["tokens"], "bytes": got["bytes"],
        "batches": got["batches"], "seq_len": source.seq_len, "data": str(folder),
    })


# ---- samples -----------------------------------------------------------------------------------

def _prepare_samples(name: str, settings: Settings):
    from .samples import PROMPTS

    return list(PROMPTS[: settings.limit]) if settings.limit else list(PROMPTS)


def _run_samples(name: str, prompts, ctx: Context) -> TaskResult:
    from planck.serve.batcher import SamplingParams

    from . import samples
    from .generate import generate_all

    chat, context = ctx.loaded.is_chat, ctx.loaded.config.seq_len
    ids = [samples.prompt_ids(p.text, chat, context) for p in prompts]
    params = [
        SamplingParams(temperature=p.temperature, max_tokens=samples.MAX_NEW_TOKENS, seed=ctx.settings.seed)
        for p in prompts
    ]
    with ctx.progress(len(prompts), name, "prompt") as bar:
        texts = generate_all(ctx.batcher, ids, params, (), bar)
    out = [{"prompt": p.text, "completion": t, "temperature": p.temperature} for p, t in zip(prompts, texts)]
    return TaskResult({"metric": "samples", "value": None, "baseline": None, "n": len(out), "samples": out}, out)


@dataclass(frozen=True)
class Task:
    """One evaluation: `prepare(name, settings)` runs before the model loads, `run(name, prepared, context)` after."""

    name: str
    metric: str
    about: str
    prepare: Callable[[str, Settings], Any]
    run: Callable[[str, Any, Context], TaskResult]


TASKS: dict[str, Task] = {
    "bpb": Task("bpb", "bpb", "bits per byte on --data's val split (baseline: every token equally likely)",
                _prepare_bpb, _run_bpb),
    "arc_easy": Task("arc_easy", "accuracy", "ARC-Easy test (allenai/ai2_arc), letter of the answer (baseline: random guess)",
                     _prepare_multiple_choice, _run_multiple_choice),
    "arc_challenge": Task("arc_challenge", "accuracy", "ARC-Challenge test (allenai/ai2_arc), as arc_easy",
                          _prepare_multiple_choice, _run_multiple_choice),
    "mmlu": Task("mmlu", "accuracy", "MMLU test, all subjects (cais/mmlu), as arc_easy",
                 _prepare_multiple_choice, _run_multiple_choice),
    "gsm8k": Task("gsm8k", "accuracy", "GSM8K main test (openai/gsm8k), exact final number of a greedy solution (baseline 0)",
                  _prepare_gsm8k, _run_gsm8k),
    "sample": Task("sample", "samples", "completions of a few fixed prompts, to read", _prepare_samples, _run_samples),
}


def parse_tasks(text: str | None, has_data: bool) -> list[str]:
    """Task names from 'a,b,c' in order, without repeats; default: every task (bpb only with --data)."""
    if text is None:
        return [t for t in TASKS if t != "bpb" or has_data]
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise EvalError(f"--tasks {text!r}: unknown task(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(TASKS)}")
    return list(dict.fromkeys(names))


def parse_source_paths(items: list[str]) -> dict[str, str]:
    """`TASK=PATH` overrides: read that task's rows from local files of the same schema instead of the hub."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise EvalError(f"--source-path {item!r}: expected TASK=PATH")
        if name not in ROW_TASKS:
            raise EvalError(f"--source-path {item!r}: {name!r} reads no rows; tasks that do: {', '.join(ROW_TASKS)}")
        out[name] = path
    return out


def run_task(name: str, prepared: Any, ctx: Context) -> TaskResult:
    """Run one prepared task; its summary gains the seconds it took and the --limit it ran under."""
    start = time.perf_counter()
    result = TASKS[name].run(name, prepared, ctx)
    result.summary["limit"] = ctx.settings.limit
    result.summary["seconds"] = round(time.perf_counter() - start, 3)
    return result
