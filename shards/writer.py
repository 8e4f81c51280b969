"""The streaming shard writer: bounded memory, temporary name until finished, ids checked."""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from planck.schemas.atomic import fsync_dir
from planck.schemas.shard_header import (
    ALIGN,
    CHECKSUM_SIZE,
    FLAG_ROLES,
    HEADER_SIZE,
    OFFSET_DTYPE,
    SOURCE_DTYPE,
    ShardHeader,
    layout,
)

_FLUSH_BYTES = 8 << 20  # buffer this much before writing: few syscalls, bounded memory
MAX_TOKEN_ID = np.iinfo(np.uint16).max


@dataclass(frozen=True)
class WrittenShard:
    path: Path
    tokens: int
    documents: int
    bytes: int
    checksum: str


class ShardWriter:
    """Append documents, then `close()` publishes the shard under its final name; until then it does not exist."""

    def __init__(self, path: Path, *, vocab_size: int, fingerprint: bytes, with_roles: bool):
        if vocab_size - 1 > MAX_TOKEN_ID:
            raise ValueError(f"vocab size {vocab_size} does not fit uint16 tokens")
        self.path = Path(path)
        self.vocab_size = vocab_size
        self.fingerprint = fingerprint
        self.with_roles = with_roles
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._roles_tmp = self.path.with_name(self.path.name + ".roles.tmp")
        self._f = open(self._tmp, "wb")
        self._f.write(b"\0" * HEADER_SIZE)
        self._roles_f = open(self._roles_tmp, "w+b") if with_roles else None
        self._hash = hashlib.blake2b(digest_size=CHECKSUM_SIZE)
        self._buf = bytearray()
        self._roles_buf = bytearray()
        self._offsets = [0]
        self._sources: list[int] = []
        self.num_tokens = 0

    @property
    def num_documents(self) -> int:
        return len(self._sources)

    def add(self, ids: np.ndarray, roles: np.ndarray | None = None, source: int = 0) -> None:
        """Append one document's token ids (and role ids for chat shards)."""
        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise ValueError("a document is a 1-D array of token ids")
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            bad = int(ids.max()) if int(ids.max()) >= self.vocab_size else int(ids.min())
            limit = "uint16 holds ids up to 65535" if bad > MAX_TOKEN_ID else f"vocab size is {self.vocab_size}"
            raise ValueError(f"{self.path.name}: token id {bad} out of range ({limit})")
        if self.with_roles:
            if roles is None or np.shape(roles) != ids.shape:
                raise ValueError("chat shards need one role id per token")
            self._roles_buf += np.asarray(roles, dtype=np.uint8).tobytes()
        elif roles is not None:
            raise ValueError("this shard stores no roles (plain text)")
        self._buf += ids.astype("<u2", copy=False).tobytes()
        self.num_tokens += ids.size
        self._offsets.append(self.num_tokens)
        self._sources.append(source)
        if len(self._buf) >= _FLUSH_BYTES:
            self._flush()

    def _flush(self) -> None:
        self._hash.update(self._buf)
        self._f.write(self._buf)
        self._buf.clear()
        if self._roles_f is not None and self._roles_buf:
            self._roles_f.write(self._roles_buf)
            self._roles_buf.clear()

    def _pad(self, written: int) -> None:
        pad = b"\0" * ((-written) % ALIGN)
        self._hash.update(pad)
        self._f.write(pad)

    def close(self) -> WrittenShard:
        """Finish the sections, write the header, fsync, and rename into place."""
        self._flush()
        self._pad(HEADER_SIZE + 2 * self.num_tokens)
        if self._roles_f is not None:
            self._roles_f.seek(0)
            while chunk := self._roles_f.read(_FLUSH_BYTES):
                self._hash.update(chunk)
                self._f.write(chunk)
            self._pad(self.num_tokens)
            self._roles_f.close()
            os.unlink(self._roles_tmp)
        for arr in (np.asarray(self._offsets, OFFSET_DTYPE), np.asarray(self._sources, SOURCE_DTYPE)):
            data = arr.tobytes()
            self._hash.update(data)
            self._f.write(data)
            self._pad(len(data))
        header = ShardHeader(
            num_tokens=self.num_tokens,
            num_documents=self.num_documents,
            vocab_size=self.vocab_size,
            tokenizer_fingerprint=self.fingerprint,
            flags=FLAG_ROLES if self.with_roles else 0,
            checksum=self._hash.digest(),
        )
        size = self._f.tell()
        assert size == layout(header)[1], "writer and layout disagree"
        self._f.seek(0)
        self._f.write(header.pack())
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self._tmp, self.path)
        fsync_dir(self.path.parent)
        return WrittenShard(self.path, self.num_tokens, self.num_documents, size, header.checksum.hex())

    def abort(self) -> None:
        """Drop the unfinished shard and its temporary files."""
        for f in (self._f, self._roles_f):
            if f is not None and not f.closed:
                f.close()
        for p in (self._tmp, self._roles_tmp):
            if p.exists():
                p.unlink()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def remove_partial_files(folder: Path) -> int:
    """Delete temporary files a killed writer left behind; returns how many."""
    n = 0
    for p in Path(folder).glob("*.tmp"):
        p.unlink()
        n += 1
    for p in Path(folder).glob("*.tmpdir"):
        shutil.rmtree(p)
        n += 1
    return n
