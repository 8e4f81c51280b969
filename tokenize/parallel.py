"""An ordered, bounded parallel map over worker processes (results come back in input order)."""

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


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, in_flight: int = 0) -> Iterator[R]:
    """fn over items in `workers` processes, at most `in_flight` items pending, results in order.

    With workers <= 1 it runs in this process: on one core, inter-process copies only cost.
    Bounded, unlike Pool.imap, whose feeder would read a 3B-token stream into memory.
    """
    if workers <= 1:
        for item in items:
            yield fn(item)
        return
    in_flight = in_flight or 4 * workers
    # spawn, not fork: the parent may hold threads (datasets' streaming, tqdm) that fork would copy mid-lock.
    ex = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_ignore_sigint)
    pending: deque = deque()
    try:
        for item in items:
            pending.append(ex.submit(fn, item))
            if len(pending) >= in_flight:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        ex.shutdown(wait=False, cancel_futures=True)
