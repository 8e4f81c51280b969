"""The training loader (shards/windows.py, train/data.py): windows and masks, packing, shuffling, exact resume, host sharding, pickling."""

from __future__ import annotations

import ast
import json
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from planck.cli import main
from planck.schemas.chat_template import TRAINED_ROLE_TABLE, Role
from planck.schemas.tokenizer import CHAT_TOKENS, ENDOFTEXT_ID, get_tokenizer
from planck.shards.folder import ShardFolder
from planck.shards.windows import ShardWindows, eval_batches, pack_conversations, target_bytes
from planck.train.data import make_batches

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pretrain_dir(tmp_path_factory) -> Path:
    """Embedded prose: 4 train shards of ~10k tokens (one shorter) and a val shard."""
    d = tmp_path_factory.mktemp("loader") / "pretrain"
    args = ["--max-tokens", "30k", "--val-tokens", "3k", "--shard-tokens", "10k", "--workers", "1", "--quiet"]
    assert main(["tokenize", "pretrain", "--source", "embedded", "--out", str(d), *args]) == 0
    return d


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory, module_inputs) -> Path:
    """The test mixture (conversations of 17-49 tokens) in several small shards, with a val split."""
    d = tmp_path_factory.mktemp("loader") / "chat"
    mixture = str(module_inputs["mixture_file"])
    args = ["--val-rows", "10", "--shard-tokens", "1000", "--workers", "1", "--quiet"]
    assert main(["tokenize", "chat", "--mixture", mixture, "--out", str(d), *args]) == 0
    return d


def take(iterator, n: int) -> list[dict]:
    return [next(iterator) for _ in range(n)]


def rows(batches: list[dict]) -> list[bytes]:
    """Each example of the batches, in order, as the bytes of its inputs (identifies a window)."""
    return [row.tobytes() for b in batches for row in b["inputs"]]


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


# --- windows ------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "val"])
def test_pretrain_windows_are_the_shard_tokens_at_stride_seq_len(pretrain_dir, split):
    L = 64
    src = ShardWindows(pretrain_dir, split, L)
    shards = ShardFolder(pretrain_dir).shards(split)
    assert len(src) == sum((sh.num_tokens - 1) // L for sh in shards)
    i = 0
    for sh in shards:
        for k in range((sh.num_tokens - 1) // L):
            w = np.asarray(sh.tokens[k * L : k * L + L + 1], dtype=np.int32)
            item = src[i]
            assert item["inputs"].dtype == np.int32 and item["targets"].dtype == np.int32
            assert item["mask"].dtype == np.float32
            np.testing.assert_array_equal(item["inputs"], w[:-1])
            np.testing.assert_array_equal(item["targets"], w[1:])
            np.testing.assert_array_equal(item["mask"], np.ones(L, np.float32))
            i += 1
    np.testing.assert_array_equal(src[-1]["inputs"], src[len(src) - 1]["inputs"])
    with pytest.raises(IndexError):
        src[len(src)]


def expected_chat_windows(shards, window: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """A plain reference packer: whole conversations, greedily, per shard; too-long ones cut to one window."""
    out, truncated = [], 0
    for sh in shards:
        cur_t: list[int] = []
        cur_r: list[int] = []
        for d in range(len(sh)):
            t, r = (x.tolist() for x in sh.document(d))
            if len(t) > window:
                truncated += 1
                t, r = t[:window], r[:window]
            if cur_t and len(cur_t) + len(t) > window:
                out.append((cur_t, cur_r))
                cur_t, cur_r = [], []
            cur_t, cur_r = cur_t + t, cur_r + r
        if cur_t:
            out.append((cur_t, cur_r))
    return [(np.array(t), np.array(r)) for t, r in out], truncated


@pytest.mark.parametrize("seq_len", [32, 100])
def test_chat_windows_pack_whole_conversations_and_mask_by_role(chat_dir, seq_len):
    src = ShardWindows(chat_dir, "train", seq_len)
    shards = ShardFolder(chat_dir).shards("train")
    assert len(shards) > 1  # packing restarts at every shard
    expected, truncated = expected_chat_windows(shards, seq_len + 1)
    assert len(src) == len(expected)
    assert src.truncated == truncated
    if seq_len == 32:
        assert truncated > 0  # the MMLU conversations (49 tokens) do not fit in 33
    else:
        assert truncated == 0
    for i, (t, r) in enumerate(expected):
        item = src[i]
        n = len(t)
        # A window opens at a conversation: <|endoftext|> with the BOS role.
        assert item["inputs"][0] == ENDOFTEXT_ID and r[0] == 1
        np.testing.assert_array_equal(item["inputs"][:n], t[: seq_len])
        np.testing.assert_array_equal(item["targets"][: n - 1], t[1:])
        assert (item["targets"][n - 1 :] == ENDOFTEXT_ID).all()  # padding
        assert (item["mask"][n - 1 :] == 0).all()  # padding is never trained on
        np.testing.assert_array_equal(item["mask"][: n - 1], TRAINED_ROLE_TABLE[r[1:]].astype(np.float32))


def test_chat_masks_train_on_the_assistant_only(chat_dir):
    src = ShardWindows(chat_dir, "train", 100)
    targets = np.stack([src[i]["targets"] for i in range(len(src))])
    mask = np.stack([src[i]["mask"] for i in range(len(src))])
    assert set(np.unique(mask)) == {0.0, 1.0}
    # The model learns to stop (<|assistant_end|>), never to write the prompt's tokens.
    assert (mask[targets == CHAT_TOKENS["<|assistant_end|>"]] == 1).all()
    for name in ("<|assistant_start|>", "<|user_start|>", "<|user_end|>", "<|system_start|>"):
        assert (mask[targets == CHAT_TOKENS[name]] == 0).all()
    assert (mask[targets == ENDOFTEXT_ID] == 0).all()  # conversation starts and padding
    # Nothing truncated at 100: every assistant token of the split is a target exactly once.
    assistant = sum(int((sh.roles == Role.ASSISTANT).sum()) for sh in ShardFolder(chat_dir).shards("train"))
    assert mask.sum() == assistant > 0


def test_pack_conversations_is_greedy_and_fast():
    offsets = np.cumsum([0, 3, 4, 2, 9, 1, 1, 5]).astype(np.uint64)  # lengths 3 4 2 9 1 1 5
    start, count, truncated = pack_conversations(offsets, 7)
    # [3+4] [2] [9 -> 7] [1+1+5]
    assert start.tolist() == [0, 7, 9, 18] and count.tolist() == [7, 2, 7, 7] and truncated == 1
    lengths = np.random.default_rng(0).integers(20, 1500, 1_000_000)
    t0 = time.perf_counter()
    start, count, _ = pack_conversations(np.concatenate([[0], np.cumsum(lengths)]).astype(np.uint64), 2049)
    assert time.perf_counter() - t0 < 2.0  # ~0.2 s on the 2-core dev VM
    assert count.max() <= 2049 and count.sum() == lengths.sum()


def test_construction_refuses_missing_splits_and_too_long_windows(pretrain_dir):
    with pytest.raises(ValueError, match="no 'val' shards"):
        ShardWindows(_without_val(pretrain_dir), "val", 32)
    with pytest.raises(ValueError, match="no window"):
        ShardWindows(pretrain_dir, "val", 10_000)


def _without_val(folder: Path) -> Path:
    """A copy of the folder whose manifest lists no val shards."""
    out = folder.parent / "no_val"
    if not out.exists():
        shutil.copytree(folder, out)
        m = json.loads((out / "manifest.json").read_text())
        m["shards"] = [s for s in m["shards"] if s["split"] != "val"]
        (out / "manifest.json").write_text(json.dumps(m))
    return out


# --- the pipeline -------------------------------------------------------------------------


def test_batches_are_numpy_with_a_batch_axis(pretrain_dir):
    src = ShardWindows(pretrain_dir, "train", 64)
    it = iter(make_batches(src, batch_size=4, seed=0))
    b = next(it)
    assert set(b) == {"inputs", "targets", "mask"}
    for k, dtype in (("inputs", np.int32), ("targets", np.int32), ("mask", np.float32)):
        assert isinstance(b[k], np.ndarray) and b[k].shape == (4, 64) and b[k].dtype == dtype


def test_shuffle_is_seeded_and_reshuffled_every_epoch(pretrain_dir):
    src = ShardWindows(pretrain_dir, "train", 256)  # 116 windows: 29 batches of 4 per epoch
    n = len(src)
    assert n % 4 == 0
    windows = [src[i]["inputs"].tobytes() for i in range(n)]
    assert len(set(windows)) == n  # inputs identify windows

    a = rows(take(iter(make_batches(src, batch_size=4, seed=1)), 2 * n // 4))
    b = rows(take(iter(make_batches(src, batch_size=4, seed=1)), 2 * n // 4))
    c = rows(take(iter(make_batches(src, batch_size=4, seed=2)), 2 * n // 4))
    assert a == b
    assert a[:n] != c[:n]
    epoch1, epoch2 = a[:n], a[n:]
    assert sorted(epoch1) == sorted(windows) == sorted(epoch2)  # each epoch: every window once
    assert epoch1 != epoch2 and epoch1 != windows
    plain = rows(take(iter(make_batches(src, batch_size=4, seed=1, shuffle=False)), n // 4))
    assert plain == windows


def test_num_epochs_ends_the_stream(pretrain_dir):
    src = ShardWindows(pretrain_dir, "train", 256)
    batches = list(make_batches(src, batch_size=5, seed=0, num_epochs=2))
    assert len(batches) == 2 * len(src) // 5


def test_resume_yields_exactly_the_next_batches(pretrain_dir):
    src = ShardWindows(pretrain_dir, "train", 64)
    it = iter(make_batches(src, batch_size=8, seed=5))
    take(it, 70)  # past the first epoch (58 batches): the epoch is part of the state
    state = it.get_state()
    json.dumps(state)  # checkpointable as JSON
    want = take(it, 10)
    resumed = iter(make_batches(src, batch_size=8, seed=5))
    resumed.set_state(state)
    assert_same_batches(take(resumed, 10), want)
    other = iter(make_batches(src, batch_size=8, seed=6))
    other.set_state(state)
    assert rows(take(other, 10)) != rows(want)  # the seed is not in the state: it must match


def test_resume_through_worker_processes(pretrain_dir):
    # Spawning 2 workers costs ~4 s each time here (they import grain, which imports JAX).
    src = ShardWindows(pretrain_dir, "train", 64)
    it = iter(make_batches(src, batch_size=4, seed=3, workers=2))
    try:
        first = take(it, 5)
        state = it.get_state()
        want = take(it, 6)
    finally:
        it.close()
    resumed = iter(make_batches(src, batch_size=4, seed=3, workers=2))
    try:
        resumed.set_state(state)
        got = take(resumed, 6)
    finally:
        resumed.close()
    assert_same_batches(got, want)
    # Workers change where batches are made, not which: the same stream as in-process.
    assert_same_batches(first + want, take(iter(make_batches(src, batch_size=4, seed=3)), 11))


def test_hosts_get_disjoint_slices_of_one_global_stream(pretrain_dir):
    src = ShardWindows(pretrain_dir, "train", 64)  # 467 windows
    steps = 40  # 320 examples of the global stream: within one epoch
    single = rows(take(iter(make_batches(src, batch_size=8, seed=9)), steps))
    host0 = rows(take(iter(make_batches(src, batch_size=4, seed=9, shard_index=0, shard_count=2)), steps))
    host1 = rows(take(iter(make_batches(src, batch_size=4, seed=9, shard_index=1, shard_count=2)), steps))
    assert not set(host0) & set(host1)
    assert sorted(host0 + host1) == sorted(single)
    assert host0 == single[0::2] and host1 == single[1::2]
    with pytest.raises(ValueError):
        make_batches(src, batch_size=4, seed=9, shard_index=2, shard_count=2)


def test_eval_batches_are_the_first_windows_in_order(chat_dir):
    src = ShardWindows(chat_dir, "val", 32)
    ev = eval_batches(src, batch_size=2, num_batches=3)
    batches = list(ev)
    assert len(batches) == 3
    assert_same_batches(batches, list(eval_batches(src, batch_size=2, num_batches=3)))
    for j, b in enumerate(batches):
        for r in range(2):
            for k in b:
                np.testing.assert_array_equal(b[k][r], src[2 * j + r][k])
    # More than the split holds: every full batch, in order; a split smaller than a batch: none.
    everything = list(eval_batches(src, batch_size=2, num_batches=len(src)))
    assert len(everything) == len(src) // 2 > 3
    assert_same_batches(everything[:3], batches)
    assert list(eval_batches(src, batch_size=len(src) + 1, num_batches=5)) == []


@pytest.mark.parametrize("kind", ["pretrain", "chat"])
def test_target_bytes_counts_the_utf8_bytes_of_trained_targets(kind, pretrain_dir, chat_dir):
    src = ShardWindows(pretrain_dir if kind == "pretrain" else chat_dir, "train", 64)
    batch = next(iter(make_batches(src, batch_size=4, seed=0)))
    enc = get_tokenizer()
    want = sum(
        len(enc.decode_single_token_bytes(int(t)))
        for t, m in zip(batch["targets"].ravel(), batch["mask"].ravel())
        if m > 0 and t < ENDOFTEXT_ID  # special tokens stand for no text
    )
    assert want > 0
    assert target_bytes(batch) == want


# --- what grain's workers and checkpoints rely on -------------------------------------------


def test_pickled_source_carries_no_memory_map(pretrain_dir):
    src = ShardWindows(pretrain_dir, "train", 64)
    item = src[3]  # maps the shards in this process
    blob = pickle.dumps(src)
    shard_bytes = sum(p.stat().st_size for p in pretrain_dir.glob("train_*.bin"))
    assert len(blob) < 8_000 < shard_bytes // 4, len(blob)
    copy = pickle.loads(blob)
    for k in item:
        np.testing.assert_array_equal(copy[3][k], item[k])
    np.testing.assert_array_equal(src[4]["inputs"], copy[4]["inputs"])  # the original still reads


def test_repr_is_stable_and_names_the_content(pretrain_dir, chat_dir, tmp_path):
    a = ShardWindows(pretrain_dir, "train", 64)
    assert repr(a) == repr(ShardWindows(pretrain_dir, "train", 64))
    assert "0x" not in repr(a)
    assert repr(a) != repr(ShardWindows(pretrain_dir, "train", 128))
    assert repr(a) != repr(ShardWindows(pretrain_dir, "val", 64))
    assert repr(ShardWindows(chat_dir, "train", 64)) != repr(ShardWindows(chat_dir, "val", 64))
    moved = tmp_path / "moved"
    shutil.copytree(pretrain_dir, moved)
    assert repr(ShardWindows(moved, "train", 64)) == repr(a)  # a folder moved elsewhere still resumes
    m = json.loads((moved / "manifest.json").read_text())
    m["shards"] = [s for s in m["shards"] if s["file"] != "train_00003.bin"]
    (moved / "manifest.json").write_text(json.dumps(m))
    assert repr(ShardWindows(moved, "train", 64)) != repr(a)


def test_loader_never_imports_jax(pretrain_dir):
    tree = ast.parse((REPO / "train" / "data.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "jax" not in imported and "flax" not in imported
    # grain itself imports JAX when it is installed; with JAX unavailable the loader still works.
    code = (
        "import sys; sys.modules['jax'] = None\n"
        "from planck.shards.windows import ShardWindows\nfrom planck.train.data import make_batches\n"
        f"src = ShardWindows({str(pretrain_dir)!r}, 'train', 64)\n"
        "it = iter(make_batches(src, batch_size=4, seed=0))\n"
        "b = [next(it) for _ in range(3)]\n"
        "assert b[2]['inputs'].shape == (4, 64)\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
