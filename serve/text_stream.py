"""Token bytes to streamed text: incomplete UTF-8 sequences and possible stop-string beginnings are held back."""

from __future__ import annotations

import codecs
from typing import Sequence


class TextStream:
    """Turns a request's token bytes into text pieces that are safe to show now.

    A multi-byte character split across tokens is emitted once complete. With stop strings, text
    that could be the start of one is held back until it is known not to be; when one appears,
    the text before it is the last piece and `stopped` becomes True.
    """

    def __init__(self, stop: Sequence[str] = ()):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(s for s in stop if s)
        self._held = ""
        self.stopped = False

    def push(self, data: bytes) -> str:
        """Feed one token's bytes; returns the text that can be shown now (maybe empty)."""
        if self.stopped:
            return ""
        return self._release(self._held + self._decoder.decode(data), final=False)

    def finish(self) -> str:
        """End of generation: everything still held back, with any dangling bytes as U+FFFD."""
        if self.stopped:
            return ""
        return self._release(self._held + self._decoder.decode(b"", final=True), final=True)

    def _release(self, text: str, final: bool) -> str:
        if not self._stop:
            self._held = ""
            return text
        hits = [i for i in (text.find(s) for s in self._stop) if i >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            return text[: min(hits)]
        keep = 0 if final else self._partial_stop_suffix(text)
        self._held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep]

    def _partial_stop_suffix(self, text: str) -> int:
        """Length of the longest end of `text` that is a proper beginning of some stop string."""
        best = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best
