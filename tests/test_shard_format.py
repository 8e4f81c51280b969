"""The shard file format: header, layout, streaming writer and checked reader (schemas/shard_header.py, shards/)."""

from __future__ import annotations

import dataclasses
import os
import struct
import tempfile
import zlib
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from planck.schemas import shard_header as sh
from planck.schemas.shard_header import HEADER_SIZE, MAGIC, ShardHeader, layout
from planck.shards import writer as writer_mod
from planck.shards.reader import ShardError, open_shard, payload_checksum, read_header
from planck.shards.writer import ShardWriter

VOCAB = 50263
FP = bytes.fromhex("0123456789abcdef")
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def align(n: int) -> int:
    return (n + 63) // 64 * 64


def write(path: Path, docs, *, with_roles: bool, vocab_size: int = VOCAB, fingerprint: bytes = FP):
    """Write docs [(ids, roles|None, source)] and return what close() reported."""
    w = ShardWriter(path, vocab_size=vocab_size, fingerprint=fingerprint, with_roles=with_roles)
    for ids, roles, source in docs:
        w.add(np.asarray(ids, dtype=np.int64), None if roles is None else np.asarray(roles, np.uint8), source)
    return w.close()


@st.composite
def documents(draw):
    """(with_roles, [(ids, roles|None, source)]): empty documents and empty shards included."""
    with_roles = draw(st.booleans())
    docs = []
    for _ in range(draw(st.integers(0, 12))):
        ids = draw(st.lists(st.integers(0, VOCAB - 1), max_size=70))
        roles = draw(st.lists(st.integers(0, 255), min_size=len(ids), max_size=len(ids))) if with_roles else None
        docs.append((ids, roles, draw(st.integers(0, 65535))))
    return with_roles, docs


# --------------------------------------------------------------------------- round trip


@SETTINGS
@given(documents(), st.sampled_from([writer_mod._FLUSH_BYTES, 7]))
def test_round_trip(case, flush_bytes):
    with_roles, docs = case
    with tempfile.TemporaryDirectory() as d, mock.patch.object(writer_mod, "_FLUSH_BYTES", flush_bytes):
        path = Path(d) / "s.bin"
        written = write(path, docs, with_roles=with_roles)
        assert sorted(os.listdir(d)) == ["s.bin"]  # no temporary files left behind

        shard = open_shard(path, verify=True, fingerprint=FP)
        n = sum(len(ids) for ids, _, _ in docs)
        assert shard.num_tokens == n == written.tokens
        assert len(shard) == shard.num_documents == len(docs) == written.documents
        all_ids = [t for ids, _, _ in docs for t in ids]
        assert shard.tokens.dtype == np.dtype("<u2")
        assert shard.tokens.tolist() == all_ids
        if with_roles:
            assert shard.header.has_roles
            assert shard.roles.dtype == np.uint8
            assert shard.roles.tolist() == [r for _, roles, _ in docs for r in roles]
        else:
            assert shard.roles is None and not shard.header.has_roles
        assert shard.doc_offsets.tolist() == np.cumsum([0] + [len(ids) for ids, _, _ in docs]).tolist()
        assert shard.doc_sources.tolist() == [s for _, _, s in docs]
        for i, (ids, roles, _) in enumerate(docs):
            got_ids, got_roles = shard.document(i)
            assert got_ids.tolist() == ids
            assert (got_roles is None) if roles is None else got_roles.tolist() == roles
        with pytest.raises(IndexError):
            shard.document(len(docs))
        with pytest.raises(IndexError):
            shard.document(-1)

        h = shard.header
        assert (h.vocab_size, h.tokenizer_fingerprint, h.version) == (VOCAB, FP, 1)
        size = path.stat().st_size
        assert size == layout(h)[1] == written.bytes
        assert h.checksum == payload_checksum(path) and written.checksum == h.checksum.hex()
        # Every section starts on a 64-byte boundary.
        assert all(s.offset % 64 == 0 for s in layout(h)[0].values())
        if not with_roles:
            # Plain text: 2 bytes per token, plus the header and the document index.
            sections = layout(h)[0]
            assert sections["tokens"].offset == HEADER_SIZE and sections["tokens"].nbytes == 2 * n
            d_ = len(docs)
            assert size == 64 + align(2 * n) + align(8 * (d_ + 1)) + align(2 * d_)
        else:
            assert size == 64 + align(2 * n) + align(n) + align(8 * (len(docs) + 1)) + align(2 * len(docs))


def test_round_trip_across_real_flushes(tmp_path):
    """Documents bigger than the 8 MiB write buffer (roles spill through their own temporary file)."""
    rng = np.random.default_rng(0)
    docs = [
        (rng.integers(0, VOCAB, 2_500_000), rng.integers(0, 6, 2_500_000), i) for i in range(3)
    ]
    w = ShardWriter(tmp_path / "big.bin", vocab_size=VOCAB, fingerprint=FP, with_roles=True)
    for ids, roles, s in docs:
        w.add(ids, roles.astype(np.uint8), s)
    w.close()
    shard = open_shard(tmp_path / "big.bin", verify=True)
    for i, (ids, roles, s) in enumerate(docs):
        got_ids, got_roles = shard.document(i)
        assert np.array_equal(got_ids, ids) and np.array_equal(got_roles, roles)
        assert shard.doc_sources[i] == s
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin"]


def test_plain_text_costs_two_bytes_per_token(tmp_path):
    docs = [(list(range(1000)), None, 0), (list(range(50_000, 50_263)), None, 1)]
    write(tmp_path / "p.bin", docs, with_roles=False)
    n = 1263
    # 64-byte header, 2n token bytes (aligned), 3 offsets of 8 bytes, 2 sources of 2 bytes.
    assert (tmp_path / "p.bin").stat().st_size == 64 + align(2 * n) + 64 + 64
    raw = (tmp_path / "p.bin").read_bytes()
    assert np.frombuffer(raw[64 : 64 + 2 * n], "<u2").tolist() == list(range(1000)) + list(range(50_000, 50_263))


def test_header_pack_unpack_round_trip():
    h = ShardHeader(num_tokens=12345, num_documents=7, vocab_size=VOCAB, tokenizer_fingerprint=FP, flags=1, checksum=b"c" * 16)
    data = h.pack()
    assert len(data) == HEADER_SIZE and data[:8] == MAGIC
    assert struct.unpack("<I", data[60:])[0] == zlib.crc32(data[:60])
    assert ShardHeader.unpack(data) == h


# --------------------------------------------------------------------------- corruption


@pytest.fixture
def good(tmp_path) -> Path:
    """A small valid chat shard."""
    path = tmp_path / "good.bin"
    docs = [([50256, 10, 11, 12], [1, 3, 3, 5], 0), ([50256, 99, 100], [1, 4, 5], 2), ([7] * 40, [5] * 40, 1)]
    write(path, docs, with_roles=True)
    open_shard(path, verify=True, fingerprint=FP)  # sanity: it is valid before we damage it
    return path


def refused(path: Path, reason_part: str, **kw) -> ShardError:
    with pytest.raises(ShardError) as info:
        open_shard(path, **kw)
    exc = info.value
    # the message is the path, then the reason (checked on the reason alone: test paths hold words too)
    assert str(exc) == f"{path}: {exc.reason}"
    assert exc.path == path
    assert reason_part in exc.reason, exc.reason
    return exc


def test_truncated_file_is_refused(good):
    size = good.stat().st_size
    for cut in (1, 2, 64, size - HEADER_SIZE):
        data = good.read_bytes()
        good.write_bytes(data[: size - cut] if cut != size - HEADER_SIZE else data[:HEADER_SIZE])
        refused(good, "truncated")
        good.write_bytes(data)
    open_shard(good, verify=True)


@pytest.mark.parametrize("keep", [0, 1, 30, 63])
def test_cut_inside_header_is_refused(good, keep):
    good.write_bytes(good.read_bytes()[:keep])
    exc = refused(good, "truncated")
    assert f"{keep} bytes" in exc.reason
    with pytest.raises(ShardError):
        read_header(good)


def flip(path: Path, pos: int, mask: int = 0x5A) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= mask
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("section", ["tokens", "roles", "doc_offsets", "doc_sources", "padding"])
def test_flipped_payload_byte_fails_checksum(good, section):
    sections, _ = layout(read_header(good))
    if section == "padding":
        s = sections["tokens"]
        pos = s.offset + s.nbytes  # the zero bytes between tokens and roles
        assert pos % 64 != 0
    else:
        pos = sections[section].offset + 1
    flip(good, pos)
    refused(good, "checksum mismatch", verify=True)


@pytest.mark.parametrize("pos", [11, 12, 16, 20, 28, 36, 43, 44, 59, 60, 63])
def test_flipped_header_byte_fails_header_checksum(good, pos):
    flip(good, pos)
    refused(good, "header checksum")


@pytest.mark.parametrize("pos", [0, 3, 7])
def test_flipped_magic_is_not_a_shard(good, pos):
    flip(good, pos)
    refused(good, "not a PlanckGPT shard")


@SETTINGS
@given(st.data())
def test_any_single_byte_flip_is_refused(data):
    """Whatever byte is damaged, and however, a verified open refuses the file with a ShardError."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.bin"
        write(path, [([1, 2, 3] * 7, [5] * 21, 3), ([50262], [5], 0)], with_roles=True)
        size = path.stat().st_size
        flip(path, data.draw(st.integers(0, size - 1)), data.draw(st.integers(1, 255)))
        with pytest.raises(ShardError) as info:
            open_shard(path, verify=True)
        assert str(info.value).startswith(str(path)) and info.value.reason


def test_foreign_text_file(tmp_path):
    p = tmp_path / "notes.bin"
    p.write_text("These are my notes, not a shard. " * 10)
    refused(p, "not a PlanckGPT shard")


@SETTINGS
@given(st.binary(max_size=300))
def test_random_bytes_are_refused(blob):
    assume(not blob.startswith(MAGIC))
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "random.bin"
        p.write_bytes(blob)
        with pytest.raises(ShardError) as info:
            open_shard(p, verify=True)
        expected = "truncated" if len(blob) < HEADER_SIZE else "not a PlanckGPT shard"
        assert str(info.value).startswith(str(p)) and expected in info.value.reason


def test_newer_format_version(good):
    h = read_header(good)
    data = good.read_bytes()
    newer = dataclasses.replace(h, version=2).pack()
    assert zlib.crc32(newer[:60]) == struct.unpack("<I", newer[60:])[0]  # a valid header of v2
    good.write_bytes(newer + data[HEADER_SIZE:])
    exc = refused(good, "newer")
    assert "v2" in exc.reason


def test_older_unsupported_version_with_valid_crc(good):
    h = read_header(good)
    data = good.read_bytes()
    good.write_bytes(dataclasses.replace(h, version=0).pack() + data[HEADER_SIZE:])
    refused(good, "unsupported shard format v0")


def test_unknown_flags_and_dtype_are_refused(good):
    h = read_header(good)
    data = good.read_bytes()
    good.write_bytes(dataclasses.replace(h, flags=h.flags | 4).pack() + data[HEADER_SIZE:])
    refused(good, "unknown flags")
    good.write_bytes(dataclasses.replace(h, token_dtype_code=9).pack() + data[HEADER_SIZE:])
    refused(good, "unknown token dtype")


def test_wrong_tokenizer_fingerprint(good):
    exc = refused(good, "another tokenizer", fingerprint=b"x" * 8)
    assert FP.hex() in exc.reason and (b"x" * 8).hex() in exc.reason
    open_shard(good, fingerprint=FP)  # the right one is accepted


def test_trailing_bytes(good):
    with open(good, "ab") as f:
        f.write(b"\0" * 3)
    refused(good, "3 unexpected bytes")


def test_missing_file(tmp_path):
    exc = refused(tmp_path / "nowhere.bin", "missing")
    assert exc.reason == "missing"


def test_a_folder_is_not_a_shard(tmp_path):
    (tmp_path / "dir.bin").mkdir()
    refused(tmp_path / "dir.bin", "cannot be read")


def test_header_counts_that_disagree_with_the_offsets(good):
    """A header rewritten with a valid crc but a wrong token count is caught by the offset check."""
    h = read_header(good)
    data = good.read_bytes()
    good.write_bytes(dataclasses.replace(h, num_tokens=h.num_tokens + 1).pack() + data[HEADER_SIZE:])
    assert layout(read_header(good))[1] == good.stat().st_size  # same size: only the offsets tell
    refused(good, "document offsets are inconsistent")


# --------------------------------------------------------------------------- writer


@pytest.mark.parametrize(
    "bad, expected",
    [(70_000, "65535"), (65_536, "65535"), (VOCAB, "vocab size is 50263"), (60_000, "vocab size is 50263"), (-1, "out of range")],
)
def test_writer_refuses_out_of_range_ids(tmp_path, bad, expected):
    w = ShardWriter(tmp_path / "s.bin", vocab_size=VOCAB, fingerprint=FP, with_roles=False)
    with pytest.raises(ValueError, match=expected) as info:
        w.add(np.array([1, bad, 2], dtype=np.int64))
    assert "s.bin" in str(info.value) and str(bad) in str(info.value)
    # the refused document was not half-written
    w.add(np.array([5, 6]))
    w.close()
    assert open_shard(tmp_path / "s.bin", verify=True).tokens.tolist() == [5, 6]


def test_writer_refuses_a_vocab_that_does_not_fit_uint16(tmp_path):
    with pytest.raises(ValueError, match="uint16"):
        ShardWriter(tmp_path / "s.bin", vocab_size=65_537, fingerprint=FP, with_roles=False)
    assert list(tmp_path.iterdir()) == []
    ShardWriter(tmp_path / "ok.bin", vocab_size=65_536, fingerprint=FP, with_roles=False).close()


def test_writer_role_rules(tmp_path):
    w = ShardWriter(tmp_path / "c.bin", vocab_size=VOCAB, fingerprint=FP, with_roles=True)
    with pytest.raises(ValueError, match="role"):
        w.add(np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="role"):
        w.add(np.array([1, 2, 3]), np.array([1, 2], np.uint8))
    w.abort()
    w = ShardWriter(tmp_path / "p.bin", vocab_size=VOCAB, fingerprint=FP, with_roles=False)
    with pytest.raises(ValueError, match="no roles"):
        w.add(np.array([1, 2, 3]), np.array([1, 2, 3], np.uint8))
    w.abort()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("with_roles", [False, True])
def test_with_block_that_raises_leaves_nothing(tmp_path, with_roles):
    roles = np.array([1, 5, 5], np.uint8) if with_roles else None
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(tmp_path / "s.bin", vocab_size=VOCAB, fingerprint=FP, with_roles=with_roles) as w:
            w.add(np.array([1, 2, 3]), roles)
            assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    # an error raised by the writer itself inside the block
    with pytest.raises(ValueError):
        with ShardWriter(tmp_path / "s.bin", vocab_size=VOCAB, fingerprint=FP, with_roles=with_roles) as w:
            w.add(np.array([1, 2, 3]), roles)
            w.add(np.array([1, 70_000, 3]), roles)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("with_roles", [False, True])
def test_final_name_appears_only_on_close(tmp_path, with_roles):
    final = tmp_path / "train_00000.bin"
    roles = np.array([1, 5, 5], np.uint8) if with_roles else None
    with ShardWriter(final, vocab_size=VOCAB, fingerprint=FP, with_roles=with_roles) as w:
        for _ in range(3):
            w.add(np.array([1, 2, 3]), roles)
        assert not final.exists()
        assert all(p.name.endswith(".tmp") for p in tmp_path.iterdir())
        # what a crash now would leave behind is not something the reader accepts as a shard
        for p in tmp_path.iterdir():
            with pytest.raises(ShardError):
                open_shard(p)
        written = w.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name]
    assert written.path == final and written.tokens == 9 and written.documents == 3
    assert open_shard(final, verify=True).doc_offsets.tolist() == [0, 3, 6, 9]


def test_remove_partial_files(tmp_path):
    w = ShardWriter(tmp_path / "a.bin", vocab_size=VOCAB, fingerprint=FP, with_roles=True)
    w.add(np.array([1]), np.array([5], np.uint8))
    write(tmp_path / "b.bin", [([1], None, 0)], with_roles=False)
    assert writer_mod.remove_partial_files(tmp_path) == 2  # a.bin.tmp and a.bin.roles.tmp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin"]


def test_layout_constants():
    assert sh.HEADER_SIZE == 64 and sh.ALIGN == 64 and sh.FORMAT_VERSION == 1
    h = ShardHeader(num_tokens=0, num_documents=0, vocab_size=VOCAB, tokenizer_fingerprint=FP)
    sections, size = layout(h)
    assert sections["tokens"].count == 0 and sections["doc_offsets"].count == 1 and size == 128
