"""Integrity end to end: damaged and lying shard folders against `planck shards verify|stats|show` and the run pre-flight.

Every corruption below is applied to a fresh copy of a small pretrain or chat folder made by
`planck tokenize`. For each one, `preflight()` and `verify` must either refuse it with one clear
line naming the file, or leave what the trainer would read byte-identical to the original;
`stats` and `show` (in-process through planck.cli.main) refuse with one `planck: error:` line or
run (`show` never prints other text than the original's); the loader alone (ShardWindows) raises
only ShardError/ManifestError naming the file. Never a traceback, never a hang (each call runs
under an alarm), never a pass on changed data. A tally is printed at the end
(`pytest tests/test_shard_integrity.py -rP` shows it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import random
import shutil
import signal
import tempfile
import traceback
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from planck.cli import main
from planck.schemas.errors import PlanckError
from planck.schemas.manifest import CHECKSUM_HEX_CHARS, FINGERPRINT_HEX_CHARS, ManifestError
from planck.schemas.shard_header import HEADER_SIZE, ShardHeader, layout
from planck.schemas.tokenizer import VOCAB_SIZE, tokenizer_fingerprint
from planck.shards.folder import ShardFolder
from planck.shards.preflight import PreflightReport, preflight
from planck.shards.reader import NUM_ROLES, ShardError
from planck.shards.windows import ShardWindows

SEQ_LEN = 16
TIMEOUT_S = 20  # per call; the small folders take well under a second
TOOLS = ("preflight", "verify", "stats", "show", "windows")

# tool -> outcome -> count, and the details of every wrong outcome
TALLY: dict[str, Counter] = defaultdict(Counter)
WRONG: list[str] = []
KINDS_TRIED: Counter = Counter()


@pytest.fixture(scope="module")
def originals(module_inputs, tmp_path_factory) -> dict[str, Path]:
    """A pretrain folder (several shards per split) and a chat folder, built once for the module."""
    out = tmp_path_factory.mktemp("integrity")
    pretrain, chat = out / "pretrain", out / "chat"
    assert main([
        "tokenize", "pretrain", "--source", str(module_inputs["text_corpus"]), "--out", str(pretrain),
        "--max-tokens", "8k", "--val-tokens", "2k", "--shard-tokens", "3k", "--workers", "1", "--quiet",
    ]) == 0
    assert main([
        "tokenize", "chat", "--mixture", str(module_inputs["mixture_file"]), "--out", str(chat),
        "--val-rows", "5", "--shard-tokens", "1k", "--workers", "1", "--quiet",
    ]) == 0
    return {"pretrain": pretrain, "chat": chat}


@pytest.fixture(scope="module")
def baselines(originals) -> dict[str, dict]:
    """What the trainer reads from each original folder, and what stats and show print for it."""
    out = {}
    for kind, folder in originals.items():
        out[kind] = {
            "data": trainer_data(folder),
            "windows": windows_digest(folder),
            "stats": normalised(call_cli(["shards", "stats", folder, "--json"])[1], folder),
            "show": {split: normalised(call_cli(["shards", "show", folder, "--doc", "0", "--split", split, "--color", "never"])[1], folder)
                     for split in ("train", "val")},
        }
        assert out[kind]["data"].startswith("data:"), out[kind]["data"]
    return out


# --------------------------------------------------------------------------- running a tool, with an alarm


class Hang(Exception):
    pass


@contextlib.contextmanager
def alarm(seconds: int = TIMEOUT_S):
    def fire(signum, frame):
        raise Hang(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def call_cli(args) -> tuple[int, str, str]:
    """planck in this process under an alarm: (exit code, stdout, stderr); an escaping exception becomes rc -1 and its traceback."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            with alarm():
                rc = main([str(a) for a in args])
        except SystemExit as exc:  # argparse
            rc = exc.code if isinstance(exc.code, int) else 2
        except BaseException:  # noqa: BLE001 - any escape is a finding, reported with its traceback
            rc = -1
            err.write(traceback.format_exc())
    return rc, out.getvalue(), err.getvalue()


def normalised(text: str, folder: Path) -> str:
    return text.replace(str(folder), "<FOLDER>")


def trainer_data(folder: Path) -> str:
    """A digest of everything the trainer could read: each split's shards (tokens, roles, offsets) in manifest order, and
    ShardWindows' windows at a small context. 'error: ...' when the folder cannot be read that way."""
    h = hashlib.blake2b(digest_size=16)
    try:
        with alarm():
            sf = ShardFolder(folder)
            h.update(sf.manifest.kind.encode())
            for split in ("train", "val"):
                h.update(split.encode())
                for e in sf.entries(split):
                    shard = sf.open(e)
                    for arr in (shard.tokens, shard.roles, shard.doc_offsets):
                        h.update(b"-" if arr is None else np.ascontiguousarray(arr).tobytes())
                src = ShardWindows(folder, split, SEQ_LEN)
                for i in range(len(src)):
                    w = src[i]
                    for k in ("inputs", "targets", "mask"):
                        h.update(w[k].tobytes())
    except BaseException as exc:  # noqa: BLE001
        return f"error: {exc.__class__.__name__}: {exc}"
    return "data:" + h.hexdigest()


def windows_digest(folder: Path) -> str:
    """Every window ShardWindows gives for both splits (what the trainer's loader reads when no pre-flight ran)."""
    h = hashlib.blake2b(digest_size=16)
    with alarm():
        for split in ("train", "val"):
            src = ShardWindows(folder, split, SEQ_LEN)
            for i in range(len(src)):
                w = src[i]
                for k in ("inputs", "targets", "mask"):
                    h.update(w[k].tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- judging each tool


def one_line_naming(msg: str, folder: Path) -> bool:
    return "\n" not in msg.strip() and str(folder) in msg and "Traceback" not in msg


def judge(kind: str, folder: Path, base: dict, label: str, show_split: str) -> dict[str, str]:
    """Run the tools on a damaged copy; each outcome is 'refused', 'unaffected', 'ran' (stats printed, or the loader
    read, what the files hold) or 'WRONG: ...'."""
    outcomes: dict[str, str] = {}
    data_after: str | None = None

    def unchanged() -> bool:
        nonlocal data_after
        if data_after is None:
            data_after = trainer_data(folder)
        return data_after == base["data"]

    # the pre-flight a run makes
    try:
        with alarm():
            report = preflight(folder, workers=2)
        assert isinstance(report, PreflightReport)
        outcomes["preflight"] = "unaffected" if unchanged() else f"WRONG: passed on changed data ({data_after})"
    except PlanckError as exc:
        outcomes["preflight"] = "refused" if one_line_naming(str(exc), folder) else f"WRONG: unclear refusal {str(exc)!r}"
    except BaseException:  # noqa: BLE001
        outcomes["preflight"] = "WRONG: " + traceback.format_exc()

    # planck shards verify
    rc, out, err = call_cli(["shards", "verify", folder])
    lines = out.splitlines()
    if rc == 1:
        bad = [ln for ln in lines if ln.startswith("BAD ")]
        clean = bad and all(ln.startswith("BAD ") and one_line_naming(ln, folder) for ln in lines)
        clean = clean and all(ln.startswith("warning: ") for ln in err.splitlines())
        outcomes["verify"] = "refused" if clean else f"WRONG: verify rc 1 with out={out!r} err={err!r}"
    elif rc == 0:
        ok = lines == [f"ok  {folder}: every shard matches its checksum and the manifest"]
        outcomes["verify"] = ("unaffected" if unchanged() else f"WRONG: verify ok on changed data ({data_after})") if ok else f"WRONG: {out!r}"
    else:
        outcomes["verify"] = f"WRONG: verify rc {rc}: {err}"

    # planck shards stats / show: one clear line, or a report of what they read
    for tool, args, expect in (
        ("stats", ["shards", "stats", folder, "--json"], base["stats"]),
        ("show", ["shards", "show", folder, "--doc", "0", "--split", show_split, "--color", "never"], base["show"][show_split]),
    ):
        rc, out, err = call_cli(args)
        if rc == 1:
            ok = out == "" and err.startswith("planck: error: ") and one_line_naming(err, folder)
            outcomes[tool] = "refused" if ok else f"WRONG: {tool} rc 1 with out={out!r} err={err!r}"
        elif rc == 0 and "Traceback" not in err and err == "":
            outcomes[tool] = "unaffected" if normalised(out, folder) == expect else "ran"
        else:
            outcomes[tool] = f"WRONG: {tool} rc {rc}: {err[-3000:]}"
    # the loader alone (no pre-flight): ShardError/ManifestError naming the file, or windows (maybe of changed data:
    # only the pre-flight reads every byte); never a raw exception or a hang
    try:
        outcomes["windows"] = "unaffected" if windows_digest(folder) == base["windows"] else "ran"
    except PlanckError as exc:
        ok = one_line_naming(str(exc), folder) and isinstance(exc, ValueError)
        outcomes["windows"] = "refused" if ok else f"WRONG: unclear refusal {str(exc)!r}"
    except BaseException:  # noqa: BLE001
        outcomes["windows"] = "WRONG: " + traceback.format_exc()

    # show checks every byte of the shard it decodes and the manifest's claims about it: it never prints other text
    if outcomes["show"] == "ran":
        outcomes["show"] = "WRONG: show printed another document than the original's"

    KINDS_TRIED[label] += 1
    for tool, outcome in outcomes.items():
        key = "wrong" if outcome.startswith("WRONG") else outcome
        TALLY[tool][key] += 1
        TALLY[tool]["tried"] += 1
        if key == "wrong":
            WRONG.append(f"{label} on {kind} / {tool}: {outcome}")
    return outcomes


# --------------------------------------------------------------------------- corruptions


class NotApplicable(Exception):
    pass


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def save_manifest(folder: Path, m) -> None:
    (folder / "manifest.json").write_text(json.dumps(m, indent=2))


def pick_entry(folder: Path, r: random.Random, split: str | None = None, has_tokens: bool = True) -> dict:
    entries = [e for e in manifest_of(folder)["shards"] if (split is None or e["split"] == split) and (e["tokens"] or not has_tokens)]
    if not entries:
        raise NotApplicable("no such shard")
    return r.choice(entries)


def sections_of(path: Path) -> tuple[ShardHeader, dict]:
    h = ShardHeader.unpack(path.read_bytes()[:HEADER_SIZE])
    return h, layout(h)[0]


def flip(path: Path, pos: int, r: random.Random) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= r.randint(1, 255)
    path.write_bytes(bytes(data))


def flip_in(section: str):
    def corrupt(folder: Path, r: random.Random) -> None:
        e = pick_entry(folder, r)
        path = folder / e["file"]
        _, secs = sections_of(path)
        if section not in secs or secs[section].nbytes == 0:
            raise NotApplicable(f"no {section}")
        s = secs[section]
        flip(path, r.randrange(s.offset, s.offset + s.nbytes), r)
    corrupt.__name__ = f"c_flip_{section}"
    return corrupt


def rewrite_with_checksum(folder: Path, e: dict, mutate) -> None:
    """Change a shard's payload with `mutate(data, header, sections)`, then recompute its checksum in the header and the
    manifest: only a content check can tell."""
    path = folder / e["file"]
    h, secs = sections_of(path)
    data = bytearray(path.read_bytes())
    mutate(data, h, secs)
    checksum = hashlib.blake2b(bytes(data[HEADER_SIZE:]), digest_size=16).digest()
    data[:HEADER_SIZE] = dataclasses.replace(h, checksum=checksum).pack()
    path.write_bytes(bytes(data))
    m = manifest_of(folder)
    for x in m["shards"]:
        if x["file"] == e["file"]:
            x["checksum"] = checksum.hex()
    save_manifest(folder, m)


def c_truncate(folder, r):
    path = folder / pick_entry(folder, r)["file"]
    data = path.read_bytes()
    path.write_bytes(data[: r.randrange(0, len(data))])


def c_append(folder, r):
    path = folder / pick_entry(folder, r)["file"]
    with open(path, "ab") as f:
        f.write(bytes(r.randrange(256) for _ in range(r.randint(1, 100))))


def c_flip_header(folder, r):
    e = pick_entry(folder, r)
    flip(folder / e["file"], r.randrange(0, HEADER_SIZE), r)


def c_flip_anywhere(folder, r):
    path = folder / pick_entry(folder, r)["file"]
    flip(path, r.randrange(0, path.stat().st_size), r)


def c_ids_out_of_range(folder, r):
    e = pick_entry(folder, r)
    value = r.choice([65535, VOCAB_SIZE, r.randint(VOCAB_SIZE, 65535)])

    def mutate(data, h, secs):
        s = secs["tokens"]
        for _ in range(r.randint(1, 3)):
            i = r.randrange(h.num_tokens)
            data[s.offset + 2 * i : s.offset + 2 * i + 2] = value.to_bytes(2, "little")
    rewrite_with_checksum(folder, e, mutate)


def c_roles_out_of_range(folder, r):
    e = pick_entry(folder, r)
    h, secs = sections_of(folder / e["file"])
    if not h.has_roles:
        raise NotApplicable("pretrain shards store no roles")

    def mutate(data, h, secs):
        data[secs["roles"].offset + r.randrange(h.num_tokens)] = r.randint(NUM_ROLES, 255)
    rewrite_with_checksum(folder, e, mutate)


def c_sources_out_of_range(folder, r):
    e = pick_entry(folder, r)
    n_sources = len(manifest_of(folder)["sources"])

    def mutate(data, h, secs):
        s = secs["doc_sources"]
        i = r.randrange(h.num_documents)
        data[s.offset + 2 * i : s.offset + 2 * i + 2] = r.randint(n_sources, 65535).to_bytes(2, "little")
    rewrite_with_checksum(folder, e, mutate)


def c_offsets_disorder(folder, r):
    e = pick_entry(folder, r)

    def mutate(data, h, secs):
        s = secs["doc_offsets"]
        offs = np.frombuffer(bytes(data[s.offset : s.offset + s.nbytes]), "<u8").copy()
        i = r.randrange(len(offs))
        offs[i] = offs[i] + r.randint(1, 1 << 40) if i < len(offs) - 1 or r.random() < 0.5 else offs[i] - 1
        data[s.offset : s.offset + s.nbytes] = offs.tobytes()
    rewrite_with_checksum(folder, e, mutate)


def c_header_count_lie(folder, r):
    """A header rewritten with a valid crc and checksum but other counts (and the manifest told the same lie)."""
    e = pick_entry(folder, r)
    path = folder / e["file"]
    h, _ = sections_of(path)
    field = r.choice(["num_tokens", "num_documents"])
    delta = r.choice([-1, 1, 7])
    new = dataclasses.replace(h, **{field: max(0, getattr(h, field) + delta)})
    data = path.read_bytes()
    path.write_bytes(new.pack() + data[HEADER_SIZE:])
    if r.random() < 0.5:
        m = manifest_of(folder)
        for x in m["shards"]:
            if x["file"] == e["file"]:
                x["tokens"], x["documents"] = new.num_tokens, new.num_documents
        save_manifest(folder, m)


def c_foreign_fingerprint_header(folder, r):
    e = pick_entry(folder, r)
    path = folder / e["file"]
    h, _ = sections_of(path)
    data = path.read_bytes()
    path.write_bytes(dataclasses.replace(h, tokenizer_fingerprint=bytes(r.randrange(256) for _ in range(8))).pack() + data[HEADER_SIZE:])


def c_foreign_tokenizer_everywhere(folder, r):
    """A folder consistently made by another tokenizer: every header and the manifest agree with each other."""
    fp = bytes(r.randrange(256) for _ in range(8))
    m = manifest_of(folder)
    for e in m["shards"]:
        path = folder / e["file"]
        h, _ = sections_of(path)
        data = path.read_bytes()
        path.write_bytes(dataclasses.replace(h, tokenizer_fingerprint=fp).pack() + data[HEADER_SIZE:])
    m["tokenizer"]["fingerprint"] = fp.hex()
    save_manifest(folder, m)


def c_delete_shard(folder, r):
    (folder / pick_entry(folder, r, has_tokens=False)["file"]).unlink()


def c_shard_is_directory(folder, r):
    path = folder / pick_entry(folder, r, has_tokens=False)["file"]
    path.unlink()
    path.mkdir()
    (path / "inner.bin").write_bytes(b"x")


def c_shard_is_fifo(folder, r):
    path = folder / pick_entry(folder, r, has_tokens=False)["file"]
    path.unlink()
    os.mkfifo(path)


def c_shard_symlink_dev_zero(folder, r):
    path = folder / pick_entry(folder, r, has_tokens=False)["file"]
    path.unlink()
    path.symlink_to("/dev/zero")


def c_shard_replaced_by_another(folder, r):
    m = manifest_of(folder)
    if len(m["shards"]) < 2:
        raise NotApplicable("one shard")
    a, b = r.sample(m["shards"], 2)
    if r.random() < 0.5:
        shutil.copy(folder / b["file"], folder / a["file"])
    else:
        (folder / a["file"]).unlink()
        (folder / a["file"]).symlink_to(b["file"])


def c_rename_shard(folder, r):
    e = pick_entry(folder, r, has_tokens=False)
    (folder / e["file"]).rename(folder / e["file"].replace("_0", "_9", 1))


def c_swap_splits(folder, r):
    m = manifest_of(folder)
    for e in m["shards"]:
        e["split"] = {"train": "val", "val": "train"}[e["split"]]
    save_manifest(folder, m)


def c_swap_two_entries_splits(folder, r):
    m = manifest_of(folder)
    t = [e for e in m["shards"] if e["split"] == "train"]
    v = [e for e in m["shards"] if e["split"] == "val"]
    a, b = r.choice(t), r.choice(v)
    a["split"], b["split"] = "val", "train"
    save_manifest(folder, m)


def c_reorder_entries(folder, r):
    m = manifest_of(folder)
    train = [i for i, e in enumerate(m["shards"]) if e["split"] == "train"]
    if len(train) < 2:
        raise NotApplicable("one train shard")
    i, j = r.sample(train, 2)
    m["shards"][i], m["shards"][j] = m["shards"][j], m["shards"][i]
    save_manifest(folder, m)


def c_manifest_count(folder, r):
    m = manifest_of(folder)
    e = r.choice(m["shards"])
    key = r.choice(["tokens", "documents", "bytes"])
    e[key] += r.choice([-1, 1, 1000]) if e[key] else 1
    save_manifest(folder, m)


def c_manifest_checksum(folder, r):
    m = manifest_of(folder)
    e = r.choice(m["shards"])
    e["checksum"] = "".join(r.choice("0123456789abcdef") for _ in range(CHECKSUM_HEX_CHARS))
    save_manifest(folder, m)


def c_source_totals(folder, r):
    m = manifest_of(folder)
    s = r.choice(m["sources"])
    key = r.choice(["documents", "tokens"])
    s[key] += r.choice([1, 5, -1]) if s[key] else 1
    save_manifest(folder, m)


def c_drop_entry(folder, r):
    m = manifest_of(folder)
    m["shards"].pop(r.randrange(len(m["shards"])))
    save_manifest(folder, m)


def c_unlisted_shard(folder, r):
    e = pick_entry(folder, r)
    shutil.copy(folder / e["file"], folder / f"{r.choice(['train', 'val'])}_0{r.randint(7000, 9999)}.bin")


def c_kind_flip(folder, r):
    m = manifest_of(folder)
    m["kind"] = {"pretrain": "chat", "chat": "pretrain"}[m["kind"]]
    save_manifest(folder, m)


def c_vocab_lie(folder, r):
    m = manifest_of(folder)
    m["tokenizer"][r.choice(["vocab_size", "padded_vocab_size"])] = r.choice([0, -5, 65536, 50264, "50263", None, 1.5])
    save_manifest(folder, m)


def c_manifest_random_bytes(folder, r):
    (folder / "manifest.json").write_bytes(bytes(r.randrange(256) for _ in range(r.randint(0, 300))))


def c_manifest_non_utf8(folder, r):
    text = (folder / "manifest.json").read_text()
    i = text.index('"name"')
    (folder / "manifest.json").write_bytes(text[:i].encode() + b'"\xff\xfe' + r.choice([b"\xc3", b"\x80", b"\xe9t\xe9"]) + b'": 1, ' + text[i:].encode())


def c_manifest_directory(folder, r):
    (folder / "manifest.json").unlink()
    (folder / "manifest.json").mkdir()


def c_manifest_fifo(folder, r):
    (folder / "manifest.json").unlink()
    os.mkfifo(folder / "manifest.json")


def c_manifest_symlink_dev_zero(folder, r):
    (folder / "manifest.json").unlink()
    (folder / "manifest.json").symlink_to("/dev/zero")


def c_manifest_missing(folder, r):
    (folder / "manifest.json").unlink()


def c_manifest_truncated(folder, r):
    data = (folder / "manifest.json").read_bytes()
    (folder / "manifest.json").write_bytes(data[: r.randrange(len(data))])


def edit(fn):
    def corrupt(folder, r):
        m = manifest_of(folder)
        fn(m, r)
        save_manifest(folder, m)
    corrupt.__name__ = fn.__name__
    return corrupt


@edit
def c_fingerprint_zz(m, r):
    m["tokenizer"]["fingerprint"] = r.choice(["zz", "", "ZZ" * 8, "0" * (FINGERPRINT_HEX_CHARS + 2), 7, None])


@edit
def c_tokenizer_empty(m, r):
    m["tokenizer"] = r.choice([{}, [], "gpt2", None])


@edit
def c_file_null(m, r):
    r.choice(m["shards"])["file"] = r.choice([None, 3, [], ""])


@edit
def c_file_traversal(m, r):
    r.choice(m["shards"])["file"] = r.choice(["../x.bin", "/etc/passwd", "sub/train_00000.bin", "..", ".bin", "train_00000", "a\nb.bin"])


@edit
def c_missing_key(m, r):
    where = r.choice(["top", "shard", "source", "tokenizer"])
    if where == "top":
        del m[r.choice(["kind", "tokenizer", "shards", "sources", "trained_roles", "made_by", "format", "version"])]
    elif where == "shard":
        del r.choice(m["shards"])[r.choice(["file", "split", "tokens", "documents", "bytes", "checksum"])]
    elif where == "source":
        del r.choice(m["sources"])[r.choice(["name", "spec", "format"])]
    else:
        del m["tokenizer"][r.choice(["name", "fingerprint", "vocab_size", "padded_vocab_size"])]


@edit
def c_wrong_type(m, r):
    bad = r.choice(["12", 1.5, True, -1, None, [], {}, 2**70])
    where = r.choice(["shard", "source", "top", "roles", "version"])
    if where == "shard":
        e = r.choice(m["shards"])
        e[r.choice(["tokens", "documents", "bytes", "split", "checksum"])] = bad
    elif where == "source":
        s = r.choice(m["sources"])
        s[r.choice(["documents", "tokens", "rows_read", "repeats", "skipped", "name"])] = bad
    elif where == "top":
        m[r.choice(["shards", "sources", "kind", "made_by", "options"])] = r.choice(["x", 3, None, True])
    elif where == "roles":
        m["trained_roles"] = r.choice([["5"], [256], [-1], "05", None, [True]])
    else:
        m["version"] = r.choice([99, 0, "1", None, True, 1.0])


@edit
def c_extra_key(m, r):
    r.choice(m["shards"])["extra"] = 1


@edit
def c_duplicate_entry(m, r):
    m["shards"].append(dict(r.choice(m["shards"])))


# harmless changes: what the trainer reads stays byte-identical


def c_harmless_tmp(folder, r):
    (folder / f"train_{r.randint(0, 99):05d}.bin.tmp").write_bytes(bytes(r.randrange(256) for _ in range(r.randint(0, 200))))


@edit
def c_harmless_made_by(m, r):
    m["made_by"]["command"] = ["planck", "something", "else"]
    m["sources"][0]["rows_read"] += r.randint(1, 9)


def c_harmless_other_file(folder, r):
    (folder / "notes.txt").write_text("hello")
    (folder / "subdir").mkdir()


CORRUPTIONS = {f.__name__[2:]: f for f in [
    c_truncate, c_append, c_flip_header, flip_in("tokens"), flip_in("roles"), flip_in("doc_offsets"),
    flip_in("doc_sources"), c_flip_anywhere, c_ids_out_of_range, c_roles_out_of_range, c_sources_out_of_range,
    c_offsets_disorder, c_header_count_lie, c_foreign_fingerprint_header, c_foreign_tokenizer_everywhere,
    c_delete_shard, c_shard_is_directory, c_shard_is_fifo, c_shard_symlink_dev_zero, c_shard_replaced_by_another,
    c_rename_shard, c_swap_splits, c_swap_two_entries_splits, c_reorder_entries, c_manifest_count,
    c_manifest_checksum, c_source_totals, c_drop_entry, c_unlisted_shard, c_kind_flip, c_vocab_lie,
    c_manifest_random_bytes, c_manifest_non_utf8, c_manifest_directory, c_manifest_fifo,
    c_manifest_symlink_dev_zero, c_manifest_missing, c_manifest_truncated, c_fingerprint_zz, c_tokenizer_empty,
    c_file_null, c_file_traversal, c_missing_key, c_wrong_type, c_extra_key, c_duplicate_entry,
    c_harmless_tmp, c_harmless_made_by, c_harmless_other_file,
]}
HARMLESS = {name for name in CORRUPTIONS if name.startswith("harmless")}


def attempt(originals, baselines, kind: str, name: str, seed: int, show_split: str) -> dict[str, str] | None:
    r = random.Random(seed)
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / kind
        shutil.copytree(originals[kind], folder, symlinks=True)
        try:
            CORRUPTIONS[name](folder, r)
        except NotApplicable:
            return None
        label = f"{name}(seed={seed})"
        try:
            return judge(kind, folder, baselines[kind], label, show_split)
        finally:
            for p in folder.iterdir():  # a FIFO left in a temporary folder is harmless, but leave nothing open
                if p.is_fifo():
                    p.unlink()


def assert_no_wrong(outcomes: dict[str, str] | None, name: str) -> None:
    if outcomes is None:
        return
    wrong = {t: o for t, o in outcomes.items() if o.startswith("WRONG")}
    assert not wrong, f"{name}: {wrong}"
    if name in HARMLESS:
        assert outcomes["preflight"] == "unaffected", outcomes


# --------------------------------------------------------------------------- the tests


def test_fixtures_are_valid(originals, baselines):
    for kind, folder in originals.items():
        report = preflight(folder, workers=2)
        assert report.kind == kind and report.shards == len(manifest_of(folder)["shards"])
        assert report.bytes == sum(p.stat().st_size for p in folder.glob("*.bin"))
        assert len(report.fingerprint) == 32 and report.tokens == sum(e["tokens"] for e in manifest_of(folder)["shards"])
        assert call_cli(["shards", "verify", folder])[0] == 0
    assert len(manifest_of(originals["pretrain"])["shards"]) >= 4
    assert len([e for e in manifest_of(originals["chat"])["shards"] if e["split"] == "train"]) >= 2
    assert FINGERPRINT_HEX_CHARS == len(tokenizer_fingerprint().hex())


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_every_corruption_kind(originals, baselines, name):
    """Each kind once on each folder (where it applies), with a fixed seed."""
    ran = 0
    for i, kind in enumerate(("pretrain", "chat")):
        outcomes = attempt(originals, baselines, kind, name, seed=1000 + i, show_split=("train", "val")[i])
        assert_no_wrong(outcomes, name)
        ran += outcomes is not None
    assert ran, f"{name} applies to neither folder"


@settings(derandomize=True, max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    kind=st.sampled_from(["pretrain", "chat"]),
    name=st.sampled_from(sorted(CORRUPTIONS)),
    seed=st.integers(0, 2**32 - 1),
    show_split=st.sampled_from(["train", "val"]),
)
def test_random_corruptions(originals, baselines, kind, name, seed, show_split):
    assert_no_wrong(attempt(originals, baselines, kind, name, seed, show_split), name)


def test_preflight_report_and_progress(originals):
    calls = []
    report = preflight(originals["pretrain"], workers=2, progress=lambda *a: calls.append(a))
    n = report.shards
    assert len(calls) == n and calls[-1] == (n, n, report.bytes, report.bytes)
    assert [c[0] for c in calls] == list(range(1, n + 1))
    val = preflight(originals["pretrain"], splits=("val",), workers=1)
    assert val.splits == ("val",) and 0 < val.shards < n and val.fingerprint != report.fingerprint
    assert preflight(originals["pretrain"], workers=1).fingerprint == report.fingerprint  # workers do not change it
    d = report.as_dict()
    assert json.loads(json.dumps(d)) == d and d["fingerprint"] == report.fingerprint
    assert report.seconds > 0 and report.mb_per_s > 0


def test_preflight_names_the_file_and_the_id(originals, tmp_path):
    folder = tmp_path / "chat"
    shutil.copytree(originals["chat"], folder)
    e = [x for x in manifest_of(folder)["shards"] if x["split"] == "train"][1]

    def mutate(data, h, secs):
        data[secs["tokens"].offset + 2 * 3 : secs["tokens"].offset + 2 * 4] = (65535).to_bytes(2, "little")
    rewrite_with_checksum(folder, e, mutate)
    with pytest.raises(ShardError) as info:
        preflight(folder)
    assert str(info.value) == f"{folder / e['file']}: token 3 has id 65535, outside the tokenizer's 50,263 ids (0..50262)"
    assert isinstance(info.value, ValueError)  # the old contract: ShardError is a ValueError
    rc, out, _ = call_cli(["shards", "verify", folder])
    assert rc == 1 and out.strip() == f"BAD {info.value}"


def test_verify_collects_every_problem(originals, tmp_path):
    folder = tmp_path / "pretrain"
    shutil.copytree(originals["pretrain"], folder)
    entries = manifest_of(folder)["shards"]
    (folder / entries[0]["file"]).unlink()
    with open(folder / entries[-1]["file"], "ab") as f:
        f.write(b"x")
    os.mkfifo(folder / entries[1]["file"].replace("_0", "_8", 1))
    rc, out, _ = call_cli(["shards", "verify", folder])
    assert rc == 1
    bad = out.splitlines()
    assert len(bad) == 3, out
    assert f"{folder / entries[0]['file']}: missing" in out
    assert f"{folder / entries[-1]['file']}: 1 unexpected bytes" in out
    assert "not listed in the manifest" in out
    with pytest.raises(ShardError, match="missing"):
        preflight(folder)


def test_swapped_splits_are_named(originals, tmp_path):
    folder = tmp_path / "pretrain"
    shutil.copytree(originals["pretrain"], folder)
    c_swap_splits(folder, random.Random(0))
    with pytest.raises(ShardError, match=r"the manifest lists it in the 'train' split but its name says 'val'"):
        preflight(folder)


def test_manifest_fifo_and_directory_are_refused_without_opening(originals, tmp_path):
    for make, words in ((os.mkfifo, "a FIFO, not a regular file"), (os.mkdir, "a directory, not a regular file")):
        folder = tmp_path / make.__name__
        shutil.copytree(originals["chat"], folder)
        (folder / "manifest.json").unlink()
        make(folder / "manifest.json")
        with alarm(10), pytest.raises(ManifestError) as info:
            preflight(folder)
        assert str(info.value) == f"{folder / 'manifest.json'}: cannot be read: {words}"


def test_windows_raise_only_planck_errors(originals, tmp_path):
    """ShardWindows' constructor: ShardError/ManifestError naming the file (still ValueErrors); a bad role id read later names its shard."""
    folder = tmp_path / "chat"
    shutil.copytree(originals["chat"], folder)
    with pytest.raises(ShardError, match="no window of") as info:
        ShardWindows(originals["pretrain"], "val", 100_000)
    assert str(info.value).startswith(f"{originals['pretrain']}: the 'val' split has no window")
    m = manifest_of(folder)
    m["shards"] = [e for e in m["shards"] if e["split"] == "train"]
    save_manifest(folder, m)
    with pytest.raises(ManifestError, match="no 'val' shards"):
        ShardWindows(folder, "val", SEQ_LEN)
    e = m["shards"][0]

    def mutate(data, h, secs):
        data[secs["roles"].offset : secs["roles"].offset + h.num_tokens] = bytes([200]) * h.num_tokens
    rewrite_with_checksum(folder, e, mutate)
    src = ShardWindows(folder, "train", SEQ_LEN)  # not a full check: the pre-flight's job
    with pytest.raises(ShardError, match=e["file"]):
        src[0]
    with pytest.raises(ShardError, match="role id 200"):
        ShardWindows(folder, "train", SEQ_LEN, verify=True)


def test_zz_tally():
    """The tally over every attempt above (printed; `-rP` shows it): no tool may ever be wrong."""
    kinds = {label.split("(")[0] for label in KINDS_TRIED}
    lines = [f"corruption kinds tried: {len(kinds)}, attempts: {sum(KINDS_TRIED.values())}"]
    for tool in TOOLS:
        t = TALLY[tool]
        lines.append(
            f"{tool:<10} tried {t['tried']:>4}  refused {t['refused']:>4}  unaffected {t['unaffected']:>4}  "
            f"ran {t['ran']:>4}  wrong {t['wrong']:>4}"
        )
    print("\n".join(lines))
    assert sum(TALLY[t]["tried"] for t in TOOLS) > 0
    assert not WRONG, "\n".join(WRONG[:20])
