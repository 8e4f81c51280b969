"""Worker processes for the tokenizer job: an ordered, bounded parallel map (results come back in input order)."""

from __future__ import annotations

import multiprocessing as mp
import signal
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def _ignore_sigint() -> None:
    # Ctrl-C reaches the whole process group: let the parent stop cleanly, without a traceback per worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class WorkerPool:
    """`workers` processes started once and reused by every map (a spawn costs about a second of imports).

    With workers <= 1 everything runs in this process: on one core, inter-process copies only cost.
    """

    def __init__(self, workers: int):
        self.workers = workers
        self._ex: ProcessPoolExecutor | None = None

    def __enter__(self) -> "WorkerPool":
        if self.workers > 1:
            # spawn, not fork: the parent may hold threads (datasets' streaming, tqdm) that fork would copy mid-lock.
            self._ex = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"), initializer=_ignore_sigint)
        return self

    def __exit__(self, *exc) -> None:
        if self._ex is not None:
            self._ex.shutdown(wait=False, cancel_futures=True)

    def map_ordered(self, fn: Callable[[T], R], items: Iterable[T], in_flight: int = 0) -> Iterator[R]:
        """fn over items, results in input order, at most `in_flight` items pending.

        Bounded, unlike Pool.imap, whose feeder would read a 3B-token stream into memory.
        """
        if self._ex is None:
            for item in items:
                yield fn(item)
            return
        in_flight = in_flight or 4 * self.workers
        pending: deque = deque()
        try:
            for item in items:
                pending.append(self._ex.submit(fn, item))
                if len(pending) >= in_flight:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()
