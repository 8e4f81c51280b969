"""The shard file's fixed 64-byte little-endian header and the layout of the sections after it (format v1)."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

MAGIC = b"PLNCKSHD"
FORMAT_VERSION = 1
HEADER_SIZE = 64
ALIGN = 64  # every section starts on a 64-byte boundary, so memory maps are aligned views
FLAG_ROLES = 1  # a uint8 role id per token follows the tokens (chat shards)
KNOWN_FLAGS = FLAG_ROLES
TOKEN_DTYPES = {1: np.dtype("<u2")}  # code -> dtype; 65,535 is the largest storable id
ROLE_DTYPE = np.dtype("u1")
OFFSET_DTYPE = np.dtype("<u8")
SOURCE_DTYPE = np.dtype("<u2")
CHECKSUM_SIZE = 16  # blake2b-128 over every byte after the header

# magic, version, token dtype code, reserved, flags, vocab size, tokens, documents,
# tokenizer fingerprint, payload checksum, crc32 of the 60 bytes before it.
_STRUCT = struct.Struct("<8sHBBIIQQ8s16sI")
assert _STRUCT.size == HEADER_SIZE


class HeaderError(ValueError):
    """The header is not a PlanckGPT shard header this version can read; the message says why."""


@dataclass(frozen=True)
class ShardHeader:
    num_tokens: int
    num_documents: int
    vocab_size: int
    tokenizer_fingerprint: bytes
    flags: int = 0
    checksum: bytes = b"\0" * CHECKSUM_SIZE
    version: int = FORMAT_VERSION
    token_dtype_code: int = 1

    @property
    def has_roles(self) -> bool:
        return bool(self.flags & FLAG_ROLES)

    def pack(self) -> bytes:
        """The 64 header bytes, ending in their own crc32."""
        body = _STRUCT.pack(
            MAGIC, self.version, self.token_dtype_code, 0, self.flags, self.vocab_size,
            self.num_tokens, self.num_documents, self.tokenizer_fingerprint, self.checksum, 0,
        )[:-4]
        return body + struct.pack("<I", zlib.crc32(body))

    @classmethod
    def unpack(cls, data: bytes) -> "ShardHeader":
        """Parse and check 64 header bytes; HeaderError names what is wrong."""
        if len(data) < HEADER_SIZE:
            raise HeaderError(f"truncated: {len(data)} bytes, shorter than the {HEADER_SIZE}-byte header")
        (magic, version, dtype_code, _, flags, vocab, n_tok, n_doc, fp, checksum, crc) = _STRUCT.unpack(
            data[:HEADER_SIZE]
        )
        if magic != MAGIC:
            raise HeaderError(f"not a PlanckGPT shard (magic {magic!r}, expected {MAGIC!r})")
        if version > FORMAT_VERSION:
            raise HeaderError(
                f"written in shard format v{version}, newer than this planck reads (v{FORMAT_VERSION}): upgrade planck"
            )
        if zlib.crc32(data[: HEADER_SIZE - 4]) != crc:
            raise HeaderError("header checksum mismatch: the header is corrupted")
        if version != FORMAT_VERSION:
            raise HeaderError(f"unsupported shard format v{version}")
        if dtype_code not in TOKEN_DTYPES:
            raise HeaderError(f"unknown token dtype code {dtype_code}")
        if flags & ~KNOWN_FLAGS:
            raise HeaderError(f"unknown flags {flags:#x}")
        return cls(n_tok, n_doc, vocab, fp, flags, checksum, version, dtype_code)


@dataclass(frozen=True)
class Section:
    offset: int
    dtype: np.dtype
    count: int

    @property
    def nbytes(self) -> int:
        return self.dtype.itemsize * self.count


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def layout(h: ShardHeader) -> tuple[dict[str, Section], int]:
    """Where each array lies in the file, and the exact file size the header implies."""
    sections: dict[str, Section] = {}
    pos = HEADER_SIZE
    parts = [("tokens", TOKEN_DTYPES[h.token_dtype_code], h.num_tokens)]
    if h.has_roles:
        parts.append(("roles", ROLE_DTYPE, h.num_tokens))
    # doc_offsets[i] is where document i starts; the final entry is num_tokens.
    parts += [("doc_offsets", OFFSET_DTYPE, h.num_documents + 1), ("doc_sources", SOURCE_DTYPE, h.num_documents)]
    for name, dtype, count in parts:
        sections[name] = Section(pos, dtype, count)
        pos = _align(pos + dtype.itemsize * count)
    return sections, pos
