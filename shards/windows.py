"""Fixed-length token windows over one split of a shard folder: what training and evaluation read.

numpy only (no JAX, no grain): the trainer's grain pipeline (train/data.py) and the evaluation
batches below index the same source, so worker processes never import JAX.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import operator
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from planck.schemas.chat_template import TRAINED_ROLE_TABLE, Role
from planck.schemas.manifest import MANIFEST_NAME, ManifestError
from planck.schemas.tokenizer import ENDOFTEXT_ID, token_byte_lengths
from planck.shards.folder import ShardFolder
from planck.shards.reader import ShardError, check_content

PAD_ID = ENDOFTEXT_ID  # fills chat windows after the last whole conversation; its mask is 0

# Pretrain shards store no roles: every token is TEXT, so the mask is this constant.
_TEXT_TRAINED = float(TRAINED_ROLE_TABLE[Role.TEXT])


def pack_conversations(doc_offsets: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Greedy packing of one shard's conversations into windows: (token start, token count, truncated) per window."""
    offs = np.asarray(doc_offsets, dtype=np.int64)
    n = len(offs) - 1
    if n <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    # For every conversation i, the first conversation that no longer fits in a window
    # opened at i; a conversation longer than the window is alone in its own (truncated).
    end = np.searchsorted(offs, offs[:-1] + window, side="right") - 1
    end = np.maximum(end, np.arange(1, n + 1))
    # Greedy packing is a chain of jumps 0 -> end[0] -> ...: sequential by nature, but one
    # list lookup per window (not per conversation) keeps 1M conversations well under a second.
    nxt = end.tolist()
    starts: list[int] = []
    s = 0
    while s < n:
        starts.append(s)
        s = nxt[s]
    first = np.asarray(starts, dtype=np.int64)
    tok_start = offs[first]
    tok_count = np.minimum(offs[end[first]] - tok_start, window)
    truncated = int(np.count_nonzero(np.diff(offs) > window))
    return tok_start, tok_count, truncated


class ShardWindows:
    """A random-access source (len, getitem) of {"inputs", "targets", "mask"} windows over one split of a shard folder."""

    def __init__(self, folder: Path | str, split: str, seq_len: int, *, verify: bool = False):
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.split = split
        self.seq_len = int(seq_len)
        self._folder = ShardFolder(Path(folder), verify=verify)
        self._entries = self._folder.entries(split)
        self.kind = self._folder.manifest.kind
        # Every failure below is a ShardError or ManifestError (both ValueErrors) naming the file.
        if not self._entries:
            raise ManifestError(f"{self._folder.folder / MANIFEST_NAME}: no {split!r} shards in the manifest")
        if self.kind not in ("pretrain", "chat"):
            raise ManifestError(f"{self._folder.folder / MANIFEST_NAME}: unknown shard kind {self.kind!r}")
        window = self.seq_len + 1
        # Open every shard once here, in the parent: a bad or stale file fails at start-up, not
        # inside a worker mid-run. The maps are dropped afterwards and reopened lazily.
        shards = [self._folder.open(e) for e in self._entries]
        if verify:  # the checksums were checked by open(); the ids too (shards/preflight.py checks all of it, in parallel)
            for sh in shards:
                check_content(sh, num_sources=len(self._folder.manifest.sources))
        self._folder.verify = False  # checksums (if asked for) were checked just now; reopening skips them
        self.truncated = 0  # chat conversations longer than seq_len + 1, cut to one window
        if self.kind == "pretrain":
            for sh in shards:
                if sh.roles is not None:
                    raise ShardError(sh.path, "a pretrain folder holds a shard with role ids")
            per_shard = np.array([max(sh.num_tokens - 1, 0) // self.seq_len for sh in shards], dtype=np.int64)
            # first[s] = index of shard s's first window; windows of shard s are first[s]..first[s+1]-1.
            # A list of ints: bisect on it is faster per item than np.searchsorted.
            self._first = [0, *np.cumsum(per_shard).tolist()]
            self._len = self._first[-1]
        else:
            parts_shard, parts_start, parts_count = [], [], []
            for s, sh in enumerate(shards):
                if sh.roles is None:
                    raise ShardError(sh.path, "a chat folder holds a shard without role ids")
                # Packed per shard: a window is then one contiguous slice of one file.
                start, count, truncated = pack_conversations(sh.doc_offsets, window)
                parts_shard.append(np.full(len(start), s, dtype=np.int32))
                parts_start.append(start)
                parts_count.append(count.astype(np.int32))
                self.truncated += truncated
            self._win_shard = np.concatenate(parts_shard)
            self._win_start = np.concatenate(parts_start)
            self._win_count = np.concatenate(parts_count)
            self._len = len(self._win_start)
        if self._len == 0:
            raise ShardError(
                self._folder.folder, f"the {split!r} split has no window of {window} tokens (seq_len {self.seq_len})"
            )
        self._arrays: list[tuple[np.ndarray, np.ndarray | None]] | None = None

    def __len__(self) -> int:
        return self._len

    def _open(self) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """(tokens, roles) of the split's shards, memory-mapped on first use in this process."""
        arrays = self._arrays
        if arrays is None:
            # Plain ndarray views of the maps: slicing an np.memmap costs several microseconds
            # more per window in __array_finalize__. Two grain reader threads may race here;
            # both build valid lists and one wins.
            arrays = []
            for e in self._entries:
                sh = self._folder.open(e)
                arrays.append((sh.tokens.view(np.ndarray), None if sh.roles is None else sh.roles.view(np.ndarray)))
            self._arrays = arrays
        return arrays

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """Window `index` as int32 inputs/targets and float32 mask, each of length seq_len."""
        i = operator.index(index)
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(f"window {index} out of range for {self._len} windows")
        arrays = self._open()
        L = self.seq_len
        if self.kind == "pretrain":
            s = bisect.bisect_right(self._first, i) - 1
            start = (i - self._first[s]) * L
            w = arrays[s][0][start : start + L + 1].astype(np.int32)
            mask = np.full(L, _TEXT_TRAINED, dtype=np.float32)
        else:
            tokens, roles = arrays[int(self._win_shard[i])]
            start, count = int(self._win_start[i]), int(self._win_count[i])
            w = np.full(L + 1, PAD_ID, dtype=np.int32)
            w[:count] = tokens[start : start + count]
            mask = np.zeros(L, dtype=np.float32)
            # Target t is token t + 1: its role decides whether the loss counts it.
            try:
                mask[: count - 1] = TRAINED_ROLE_TABLE[roles[start + 1 : start + count]]
            except IndexError:  # a role id beyond the Role enum: the pre-flight refuses such a shard up front
                e = self._entries[int(self._win_shard[i])]
                raise ShardError(self._folder.folder / e.file, f"role id out of range in tokens {start}..{start + count - 1}") from None
        return {"inputs": w[:-1], "targets": w[1:], "mask": mask}

    def __getstate__(self) -> dict[str, Any]:
        # Grain pickles the source into each worker: ship the plan, never the mapped files.
        state = self.__dict__.copy()
        state["_arrays"] = None
        return state

    def __repr__(self) -> str:
        # Grain's checkpoints compare repr(source): built from content (checksums), not paths
        # or object ids, so a folder moved to another machine still resumes.
        content = json.dumps(
            [self.kind, self._folder.manifest.tokenizer.get("fingerprint"), [(e.file, e.tokens, e.checksum) for e in self._entries]]
        )
        digest = hashlib.blake2b(content.encode(), digest_size=8).hexdigest()
        return (
            f"ShardWindows(kind={self.kind!r}, split={self.split!r}, seq_len={self.seq_len}, "
            f"shards={len(self._entries)}, tokens={sum(e.tokens for e in self._entries)}, content={digest})"
        )


def eval_batches(source: ShardWindows, *, batch_size: int, num_batches: int) -> Iterator[dict[str, np.ndarray]]:
    """The first num_batches batches of the source in order (fewer if the split is smaller): the same set on every call."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    # A small validation split (the demo's holds one window) gives what it has, not an error:
    # the set stays fixed for the run.
    num_batches = max(0, min(num_batches, len(source) // batch_size))
    for b in range(num_batches):
        rows = [source[b * batch_size + r] for r in range(batch_size)]
        yield {k: np.stack([row[k] for row in rows]) for k in rows[0]}


def target_bytes(batch: dict[str, np.ndarray]) -> int:
    """UTF-8 bytes of the targets the mask counts: the denominator of bits per byte."""
    lengths = token_byte_lengths()
    return int(lengths[np.asarray(batch["targets"])][np.asarray(batch["mask"]) > 0].sum())
