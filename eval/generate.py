"""Many generations at once through the serving batcher: every prompt is submitted up front so the slots batch them."""

from __future__ import annotations

import queue
from typing import Sequence

from planck.serve.batcher import Finished, SamplingParams, TextDelta

from .errors import EvalError


def generate_all(
    batcher, prompts: Sequence[Sequence[int]], params: SamplingParams | Sequence[SamplingParams],
    stop: Sequence[str] = (), progress=None,
) -> list[str]:
    """The reply text of every prompt (in order), generated together; `progress` (a tqdm bar) advances per finished reply."""
    per_prompt = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
    parts: list[list[str]] = [[] for _ in prompts]
    finished: queue.Queue[tuple[int, Finished]] = queue.Queue()  # (prompt index, its last event)

    def emitter(i: int):
        # Called on the engine thread: append or hand over, never block it.
        def emit(event) -> None:
            if isinstance(event, TextDelta):
                parts[i].append(event.text)
            elif isinstance(event, Finished):
                finished.put((i, event))
        return emit

    gens = [batcher.submit(list(p), sp, emitter(i), stop) for i, (p, sp) in enumerate(zip(prompts, per_prompt))]
    try:
        for _ in range(len(gens)):
            while True:
                try:
                    _, event = finished.get(timeout=0.5)  # a timeout keeps Ctrl-C responsive
                    break
                except queue.Empty:
                    continue
            if event.reason in ("error", "cancelled"):
                raise EvalError(f"generation {event.reason}: {event.error or 'the engine stopped'}")
            if progress is not None:
                progress.update(1)
    finally:
        for g in gens:  # after an error or Ctrl-C, free the slots; finished ones ignore this
            g.cancel()
    return ["".join(p) for p in parts]
