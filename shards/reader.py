"""The shard reader: memory-maps a shard with zero copy after checking its header, size and tokenizer."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from planck.schemas.errors import PlanckError
from planck.schemas.shard_header import CHECKSUM_SIZE, HEADER_SIZE, HeaderError, ShardHeader, layout

_CHUNK = 8 << 20


class ShardError(PlanckError, ValueError):
    """A shard that must not be read; the message starts with its path and says why."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


class Shard:
    """One memory-mapped shard: `tokens` (uint16), `roles` (uint8 or None), document offsets and sources."""

    def __init__(self, path: Path, header: ShardHeader):
        self.path = Path(path)
        self.header = header
        sections, _ = layout(header)
        raw = np.memmap(self.path, dtype=np.uint8, mode="r")

        def view(name: str) -> np.ndarray:
            s = sections[name]
            return raw[s.offset : s.offset + s.nbytes].view(s.dtype)

        self.tokens = view("tokens")
        self.roles = view("roles") if header.has_roles else None
        self.doc_offsets = view("doc_offsets")
        self.doc_sources = view("doc_sources")

    @property
    def num_tokens(self) -> int:
        return self.header.num_tokens

    @property
    def num_documents(self) -> int:
        return self.header.num_documents

    def __len__(self) -> int:
        return self.header.num_documents

    def document(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Token ids and role ids (None for plain text) of document i, as zero-copy views."""
        if not 0 <= i < self.num_documents:
            raise IndexError(f"{self.path.name} has {self.num_documents} documents, no document {i}")
        a, b = int(self.doc_offsets[i]), int(self.doc_offsets[i + 1])
        return self.tokens[a:b], None if self.roles is None else self.roles[a:b]

    def __repr__(self) -> str:
        return f"Shard({str(self.path)!r}, tokens={self.num_tokens}, documents={self.num_documents})"


def read_header(path: Path) -> ShardHeader:
    """The checked header of a shard, or ShardError naming the path and the reason."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(HEADER_SIZE)
    except FileNotFoundError:
        raise ShardError(path, "missing") from None
    except OSError as exc:
        raise ShardError(path, f"cannot be read ({exc.strerror})") from None
    try:
        return ShardHeader.unpack(data)
    except HeaderError as exc:
        raise ShardError(path, str(exc)) from None


def payload_checksum(path: Path) -> bytes:
    """blake2b-128 of every byte after the header, read in chunks."""
    h = hashlib.blake2b(digest_size=CHECKSUM_SIZE)
    with open(path, "rb") as f:
        f.seek(HEADER_SIZE)
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.digest()


def open_shard(
    path: Path,
    *,
    fingerprint: bytes | None = None,
    verify: bool = False,
) -> Shard:
    """Open a shard after checking header, exact size, document offsets and (if given) the tokenizer; `verify` also recomputes the checksum."""
    path = Path(path)
    header = read_header(path)
    _, size = layout(header)
    actual = path.stat().st_size
    if actual < size:
        raise ShardError(path, f"truncated: {actual} bytes, the header promises {size}")
    if actual > size:
        raise ShardError(path, f"{actual - size} unexpected bytes after the last section")
    if fingerprint is not None and header.tokenizer_fingerprint != fingerprint:
        raise ShardError(
            path,
            f"made with another tokenizer (fingerprint {header.tokenizer_fingerprint.hex()}, expected {fingerprint.hex()})",
        )
    if verify and payload_checksum(path) != header.checksum:
        raise ShardError(path, "checksum mismatch: the payload is corrupted")
    shard = Shard(path, header)
    offsets = shard.doc_offsets
    if offsets[0] != 0 or offsets[-1] != header.num_tokens or np.any(offsets[1:] < offsets[:-1]):
        raise ShardError(path, "document offsets are inconsistent: the payload is corrupted")
    return shard
