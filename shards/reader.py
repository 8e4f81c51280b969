"""The shard reader: memory-maps a shard with zero copy after checking its header, size and tokenizer."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import numpy as np

from planck.schemas.chat_template import Role
from planck.schemas.errors import PlanckError
from planck.schemas.shard_header import CHECKSUM_SIZE, HEADER_SIZE, HeaderError, ShardHeader, layout
from planck.schemas.tokenizer import VOCAB_SIZE

_CHUNK = 8 << 20  # bytes per read (even: token boundaries stay aligned across chunks)
NUM_ROLES = len(Role)  # valid role ids are 0 .. NUM_ROLES - 1


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


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a plain file"


def regular_file(path: Path) -> os.stat_result:
    """stat() of a shard that may be opened: a regular file (or a symlink to one), checked before any open(), so a FIFO or device named like a shard never hangs a reader."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ShardError(path, "missing") from None
    except OSError as exc:
        raise ShardError(path, f"cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ShardError(path, f"cannot be read: {file_kind(st.st_mode)}, not a regular file")
    return st


def read_header(path: Path) -> ShardHeader:
    """The checked header of a shard, or ShardError naming the path and the reason."""
    path = Path(path)
    regular_file(path)
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
    regular_file(path)
    h = hashlib.blake2b(digest_size=CHECKSUM_SIZE)
    try:
        with open(path, "rb") as f:
            f.seek(HEADER_SIZE)
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError as exc:
        raise ShardError(path, f"cannot be read ({exc.strerror})") from None
    return h.digest()


def _first_at_or_above(values: np.ndarray, limit: int) -> int | None:
    """Index of the first value >= limit, or None (one vectorised max; argmax only on failure)."""
    if values.size == 0 or int(values.max()) < limit:
        return None
    return int(np.argmax(values >= limit))


def _id_error(path: Path, what: str, index: int, value: int, limit: int) -> "ShardError":
    if what == "token":
        return ShardError(path, f"token {index:,} has id {value}, outside the tokenizer's {limit:,} ids (0..{limit - 1})")
    return ShardError(path, f"token {index:,} has role id {value}, outside the {limit} roles (0..{limit - 1})")


def scan_payload(path: Path, header: ShardHeader, *, vocab_size: int = VOCAB_SIZE, num_roles: int = NUM_ROLES) -> None:
    """One sequential read of the payload: its blake2b-128 must equal the header's, and in the same pass every
    token id must be < vocab_size and every role id < num_roles. ShardError names the file: "checksum mismatch" when
    the bytes changed, else the first id out of range (a shard whose checksum was recomputed over bad ids).

    The reads, hashlib and numpy release the GIL: several shards scan in parallel threads.
    """
    path = Path(path)
    sections, size = layout(header)
    ranges = [("token", sections["tokens"], vocab_size)]
    if header.has_roles:
        ranges.append(("role", sections["roles"], num_roles))
    h = hashlib.blake2b(digest_size=CHECKSUM_SIZE)
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    pos = HEADER_SIZE
    bad_id: ShardError | None = None
    try:
        with open(path, "rb", buffering=0) as f:
            f.seek(HEADER_SIZE)
            while pos < size:
                n = f.readinto(view[: min(_CHUNK, size - pos)])
                if not n:
                    raise ShardError(path, f"truncated: {pos} bytes, the header promises {size}")
                chunk = view[:n]
                h.update(chunk)
                for what, sec, limit in ranges if bad_id is None else ():
                    a, b = max(pos, sec.offset), min(pos + n, sec.offset + sec.nbytes)
                    if a < b:
                        # chunks start at HEADER_SIZE + k * _CHUNK, even offsets: uint16 tokens never straddle two
                        arr = np.frombuffer(chunk[a - pos : b - pos], dtype=sec.dtype)
                        bad = _first_at_or_above(arr, limit)
                        if bad is not None:
                            index = (a - sec.offset) // sec.dtype.itemsize + bad
                            bad_id = _id_error(path, what, index, int(arr[bad]), limit)
                pos += n
            if f.read(1):
                raise ShardError(path, "grew while being read: unexpected bytes after the last section")
    except OSError as exc:
        raise ShardError(path, f"cannot be read ({exc.strerror})") from None
    if h.digest() != header.checksum:
        raise ShardError(path, "checksum mismatch: the payload is corrupted")
    if bad_id is not None:
        raise bad_id


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
    actual = regular_file(path).st_size
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
    try:
        shard = Shard(path, header)
    except (OSError, ValueError) as exc:  # np.memmap of a file that vanished or cannot be mapped
        raise ShardError(path, f"cannot be mapped ({exc.__class__.__name__}: {exc})") from None
    offsets = shard.doc_offsets
    if offsets[0] != 0 or offsets[-1] != header.num_tokens or np.any(offsets[1:] < offsets[:-1]):
        raise ShardError(path, "document offsets are inconsistent: the payload is corrupted")
    return shard


def check_content(
    shard: Shard, *, vocab_size: int = VOCAB_SIZE, num_roles: int = NUM_ROLES, num_sources: int | None = None, ids: bool = True
) -> None:
    """Every value an opened shard holds is in range: token ids < vocab_size, role ids < num_roles (chat shards),
    document offsets rising from 0 to num_tokens, document sources < num_sources (if given). Vectorised numpy over
    the memory map in chunks; `ids=False` skips the token and role ids (scan_payload checked them). ShardError names
    the file and the first bad value."""
    if ids:
        step = _CHUNK // 2
        arrays = [("token", shard.tokens, vocab_size)]
        if shard.roles is not None:
            arrays.append(("role", shard.roles, num_roles))
        for what, arr, limit in arrays:
            for a in range(0, len(arr), step):
                bad = _first_at_or_above(arr[a : a + step], limit)
                if bad is not None:
                    raise _id_error(shard.path, what, a + bad, int(arr[a + bad]), limit)
    offsets = shard.doc_offsets
    if offsets[0] != 0 or offsets[-1] != shard.num_tokens or np.any(offsets[1:] < offsets[:-1]):
        raise ShardError(shard.path, "document offsets are inconsistent: the payload is corrupted")
    if num_sources is not None:
        bad = _first_at_or_above(shard.doc_sources, num_sources)
        if bad is not None:
            raise ShardError(
                shard.path,
                f"document {bad:,} comes from source {int(shard.doc_sources[bad])}, but the manifest lists {num_sources} source(s)",
            )
