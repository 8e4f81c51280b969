"""Continuous batching: one thread runs the engine; requests fill free slots and share every decode step.

A request is submitted with its prompt ids and sampling settings and receives events through a
callback, from the engine thread: `TextDelta`s as text becomes safe to show, then one `Finished`.
`stream()` (threads, the terminal chat) and `astream()` (asyncio, the HTTP server) wrap that
callback; leaving either early cancels the request and frees its slot at the next step.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Iterator, Sequence

import numpy as np

from planck.schemas.tokenizer import CHAT_TOKENS, ENDOFTEXT_ID, get_tokenizer

from .engine import Engine, SlotSampling
from .sampling import MAX_TOP_K
from .text_stream import TextStream

log = logging.getLogger(__name__)

ASSISTANT_END_ID = CHAT_TOKENS["<|assistant_end|>"]
DEFAULT_MAX_TOKENS = 4096


@dataclass
class SamplingParams:
    """How a request samples; defaults are the terminal chat's."""

    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 1.0
    max_tokens: int = DEFAULT_MAX_TOKENS
    seed: int | None = None

    def validate(self) -> None:
        """Raise ValueError naming the first setting out of range."""
        if not 0.0 <= self.temperature <= 100.0:
            raise ValueError(f"temperature {self.temperature}: expected 0 (greedy) to 100")
        if not 1 <= self.top_k <= MAX_TOP_K:
            raise ValueError(f"top_k {self.top_k}: expected 1 to {MAX_TOP_K}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p {self.top_p}: expected more than 0 and at most 1")
        if not 1 <= self.max_tokens <= 1_000_000:
            raise ValueError(f"max_tokens {self.max_tokens}: expected 1 to 1000000")
        if self.seed is not None and not 0 <= self.seed < 2**32:
            raise ValueError(f"seed {self.seed}: expected 0 to 2**32 - 1")


@dataclass
class TextDelta:
    """New text of the reply."""

    text: str


@dataclass
class Finished:
    """The last event of a request. reason: stop (end token or stop string), length, cancelled, timeout
    (waited in the queue longer than the batcher's queue_timeout) or error."""

    reason: str
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None
    # For logs, metrics and logprobs; not part of what makes two results equal.
    completion_ids: list[int] = field(default_factory=list, compare=False)  # sampled tokens, stop tokens excluded
    queued_s: float = field(default=0.0, compare=False)  # submit to taking a slot
    first_token_s: float | None = field(default=None, compare=False)  # submit to the first sampled token


Event = TextDelta | Finished


@dataclass(eq=False)
class Generation:
    """One submitted request; `cancel()` may be called from any thread."""

    id: int
    prompt_ids: list[int]
    params: SamplingParams
    stop_ids: frozenset[int]
    text: TextStream
    emit: Callable[[Event], None]
    seed: int
    cancelled: threading.Event = field(default_factory=threading.Event)
    completion_tokens: int = 0
    done: bool = False
    token_ids: list[int] = field(default_factory=list)
    submitted: float = field(default_factory=time.monotonic)
    admitted: float | None = None
    first_token: float | None = None

    def cancel(self) -> None:
        """Stop generating; a Finished('cancelled') event follows unless it already finished."""
        self.cancelled.set()


class Batcher:
    """Owns an Engine; a background thread admits requests into free slots and steps all busy slots together."""

    def __init__(self, engine: Engine, chat: bool = True, queue_timeout: float | None = None):
        self.engine = engine
        self.queue_timeout = queue_timeout  # seconds a request may wait for a slot; then it finishes as "timeout"
        # A chat model stops at the end of its turn; any model stops at <|endoftext|>.
        self.stop_ids = frozenset({ENDOFTEXT_ID, ASSISTANT_END_ID} if chat else {ENDOFTEXT_ID})
        tok = get_tokenizer()
        self._token_bytes = tok.decode_single_token_bytes
        self._special_ids = frozenset(tok._special_tokens.values())
        self._pending: deque[Generation] = deque()
        self._slots: list[Generation | None] = [None] * engine.slots
        self._positions = np.zeros(engine.slots, np.int32)  # where each slot's next token is written
        self._next_tokens = np.zeros(engine.slots, np.int32)
        self._sampling = SlotSampling.zeros(engine.slots)
        self._wake = threading.Condition()
        self._closed = False
        self._ids = itertools.count(1)
        self._thread = threading.Thread(target=self._run, name="planck-engine", daemon=True)
        self._thread.start()

    # ---- public API (any thread) -------------------------------------------------------------

    def submit(
        self, prompt_ids: Sequence[int], params: SamplingParams, emit: Callable[[Event], None],
        stop: Sequence[str] = (),
    ) -> Generation:
        """Queue a request; events go to `emit` (called on the engine thread: it must not block)."""
        params.validate()
        if not 1 <= len(prompt_ids) < self.engine.context:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens: expected 1 to {self.engine.context - 1}")
        seed = params.seed if params.seed is not None else secrets.randbelow(2**32)
        gen = Generation(next(self._ids), list(prompt_ids), params, self.stop_ids, TextStream(stop), emit, seed)
        with self._wake:
            if self._closed:
                raise RuntimeError("the engine is shut down")
            self._pending.append(gen)
            self._wake.notify()
        return gen

    def stream(self, prompt_ids: Sequence[int], params: SamplingParams, stop: Sequence[str] = ()) -> Iterator[Event]:
        """Events of one request, for threaded callers; closing the iterator early cancels the request."""
        events: queue.Queue[Event] = queue.Queue()
        gen = self.submit(prompt_ids, params, events.put, stop)
        try:
            while True:
                event = events.get()
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            gen.cancel()

    async def astream(self, prompt_ids: Sequence[int], params: SamplingParams, stop: Sequence[str] = ()) -> AsyncIterator[Event]:
        """Events of one request, for asyncio callers; cancelling the consumer cancels the request."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()
        gen = self.submit(prompt_ids, params, lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev), stop)
        try:
            while True:
                event = await events.get()
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            gen.cancel()

    def generate(self, prompt_ids: Sequence[int], params: SamplingParams, stop: Sequence[str] = ()) -> tuple[str, Finished]:
        """The whole reply text and its Finished event (blocking)."""
        parts, last = [], None
        for event in self.stream(prompt_ids, params, stop):
            if isinstance(event, TextDelta):
                parts.append(event.text)
            else:
                last = event
        return "".join(parts), last

    def load(self) -> dict[str, int]:
        """Slots in use and requests waiting (for /health and tests)."""
        with self._wake:
            return {"slots": self.engine.slots, "busy": sum(g is not None for g in self._slots), "waiting": len(self._pending)}

    def close(self) -> None:
        """Stop the engine thread; unfinished requests end as cancelled."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=30)

    # ---- engine thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._pending and not any(self._slots):
                    self._wake.wait()
                if self._closed:
                    break
            try:
                self._expire()
                self._admit()
                self._drop_cancelled()
                if any(self._slots):
                    self._step()
            except Exception as exc:  # never leave clients waiting on a dead thread
                log.exception("engine step failed")
                self._fail_all(f"{type(exc).__name__}: {exc}")
        self._fail_all(None)

    def _expire(self) -> None:
        """Finish requests that waited for a slot longer than queue_timeout (oldest first in the queue)."""
        if self.queue_timeout is None:
            return
        cutoff = time.monotonic() - self.queue_timeout
        expired = []
        with self._wake:
            while self._pending and self._pending[0].submitted < cutoff:
                expired.append(self._pending.popleft())
        for gen in expired:
            self._finish(gen, "cancelled" if gen.cancelled.is_set() else "timeout")

    def _admit(self) -> None:
        """Prefill waiting requests into free slots."""
        for slot in range(self.engine.slots):
            if self._slots[slot] is not None:
                continue
            with self._wake:
                if not self._pending:
                    return
                gen = self._pending.popleft()
            if gen.cancelled.is_set():
                self._finish(gen, "cancelled")
                continue
            s, p = self._sampling, gen.params
            s.seed[slot], s.counter[slot] = gen.seed, 0
            s.temperature[slot], s.top_k[slot], s.top_p[slot] = p.temperature, p.top_k, p.top_p
            self._slots[slot] = gen
            gen.admitted = time.monotonic()
            self._positions[slot] = len(gen.prompt_ids)
            token, _ = self.engine.prefill(slot, gen.prompt_ids, s)
            self._accept(slot, int(token))

    def _drop_cancelled(self) -> None:
        for slot, gen in enumerate(self._slots):
            if gen is not None and gen.cancelled.is_set():
                self._release(slot, "cancelled")

    def _step(self) -> None:
        tokens, _ = self.engine.decode(self._next_tokens, self._positions, self._sampling)
        tokens = np.asarray(tokens)
        for slot, gen in enumerate(self._slots):
            if gen is not None:
                self._positions[slot] += 1
                self._accept(slot, int(tokens[slot]))

    def _accept(self, slot: int, token: int) -> None:
        """A slot sampled `token`: stream it, or finish the request."""
        gen = self._slots[slot]
        if gen.first_token is None:
            gen.first_token = time.monotonic()
        if token in gen.stop_ids:
            self._release(slot, "stop")
            return
        gen.completion_tokens += 1
        gen.token_ids.append(token)
        self._sampling.counter[slot] = gen.completion_tokens
        self._next_tokens[slot] = token
        # Other special tokens (a chat token inside a base model's text, say) are not shown as text.
        text = "" if token in self._special_ids else gen.text.push(self._token_bytes(token))
        if text:
            self._emit(gen, TextDelta(text))
        if gen.text.stopped:
            self._release(slot, "stop")
        elif gen.completion_tokens >= gen.params.max_tokens or self._positions[slot] >= self.engine.context:
            self._release(slot, "length")

    def _release(self, slot: int, reason: str) -> None:
        gen = self._slots[slot]
        self._slots[slot] = None
        self._finish(gen, reason)

    def _finish(self, gen: Generation, reason: str, error: str | None = None) -> None:
        if gen.done:
            return
        gen.done = True
        if reason in ("stop", "length"):
            tail = gen.text.finish()
            if tail:
                self._emit(gen, TextDelta(tail))
        start = gen.admitted if gen.admitted is not None else time.monotonic()
        first = None if gen.first_token is None else gen.first_token - gen.submitted
        self._emit(gen, Finished(reason, len(gen.prompt_ids), gen.completion_tokens, error, gen.token_ids,
                                 start - gen.submitted, first))

    def _emit(self, gen: Generation, event: Event) -> None:
        # A client's broken callback (its event loop gone, say) ends that request, not the engine.
        try:
            gen.emit(event)
        except Exception:
            log.warning("request %d: event callback failed; cancelling it", gen.id, exc_info=True)
            gen.cancel()

    def _fail_all(self, error: str | None) -> None:
        with self._wake:
            waiting = list(self._pending)
            self._pending.clear()
        for slot in range(self.engine.slots):
            if self._slots[slot] is not None:
                gen = self._slots[slot]
                self._slots[slot] = None
                self._finish(gen, "error" if error else "cancelled", error)
        for gen in waiting:
            self._finish(gen, "error" if error else "cancelled", error)
