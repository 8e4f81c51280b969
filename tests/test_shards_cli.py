"""`planck shards stats|verify|show` on real folders made by `planck tokenize`."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from planck.cli import main
from planck.schemas.chat_template import TRAINED_ROLES, Role
from planck.schemas.tokenizer import get_tokenizer, tokenizer_fingerprint
from planck.shards.reader import open_shard

SYS_S = 50257


@pytest.fixture(scope="module")
def folders(module_inputs, tmp_path_factory) -> dict[str, Path]:
    """A pretrain folder (several shards per split) and a chat folder, built once for the module."""
    out = tmp_path_factory.mktemp("shards")
    pretrain, chat = out / "pretrain", out / "chat"
    assert main([
        "tokenize", "pretrain", "--source", str(module_inputs["text_corpus"]), "--out", str(pretrain),
        "--max-tokens", "20k", "--val-tokens", "3k", "--shard-tokens", "6k", "--workers", "1", "--quiet",
    ]) == 0
    assert main([
        "tokenize", "chat", "--mixture", str(module_inputs["mixture_file"]), "--out", str(chat),
        "--val-rows", "5", "--workers", "1", "--quiet",
    ]) == 0
    return {"pretrain": pretrain, "chat": chat}


def run(capsys, *args) -> tuple[int, str, str]:
    """planck in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def copy(folder: Path, tmp_path: Path) -> Path:
    dst = tmp_path / folder.name
    shutil.copytree(folder, dst)
    return dst


def documents(folder: Path, split: str):
    """Every document of a split, in order, read straight from the shard files: (file, local index, source, ids, roles)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    names = [s["name"] for s in manifest["sources"]]
    for p in sorted(folder.glob(f"{split}_*.bin")):
        shard = open_shard(p, verify=True, fingerprint=tokenizer_fingerprint())
        for i in range(len(shard)):
            ids, roles = shard.document(i)
            yield p.name, i, names[int(shard.doc_sources[i])], ids, roles


def brute_force(folder: Path) -> dict:
    """The figures `stats` reports, counted the slow way from the files themselves."""
    manifest = json.loads((folder / "manifest.json").read_text())
    names = [s["name"] for s in manifest["sources"]]
    splits = {}
    sources = {n: Counter() for n in names}
    roles = Counter()
    n_shards = n_bytes = 0
    for split in ("train", "val"):
        files = sorted(folder.glob(f"{split}_*.bin"))
        if not files:
            continue
        n_shards += len(files)
        n_bytes += sum(p.stat().st_size for p in files)
        s = splits[split] = Counter(shards=len(files), bytes=sum(p.stat().st_size for p in files))
        for _, _, src, ids, r in documents(folder, split):
            trained = len(ids) if r is None else sum(int(x) in TRAINED_ROLES for x in r)
            s["documents"] += 1
            s["tokens"] += len(ids)
            s["trained_tokens"] += trained
            sources[src].update(documents=1, tokens=len(ids), trained_tokens=trained)
            roles.update({Role.TEXT.name.lower(): len(ids)} if r is None else (Role(int(x)).name.lower() for x in r))
    return {
        "tokens": sum(s["tokens"] for s in splits.values()),
        "documents": sum(s["documents"] for s in splits.values()),
        "trained_tokens": sum(s["trained_tokens"] for s in splits.values()),
        "shards": n_shards,
        "bytes": n_bytes,
        "splits": {k: dict(v) for k, v in splits.items()},
        "sources": {k: dict(v) for k, v in sources.items()},
        "roles": dict(roles),
    }


# --------------------------------------------------------------------------- stats


@pytest.mark.parametrize("kind", ["pretrain", "chat"])
def test_stats_json_matches_a_brute_force_count(folders, capsys, kind):
    folder = folders[kind]
    rc, out, _ = run(capsys, "shards", "stats", folder, "--json")
    assert rc == 0
    st = json.loads(out)
    assert {"tokens", "documents", "shards", "trained_tokens", "splits", "sources"} <= set(st)
    bf = brute_force(folder)
    assert bf["tokens"] > 0 and bf["shards"] == len(list(folder.glob("*.bin")))
    for key in ("tokens", "documents", "trained_tokens", "shards", "bytes"):
        assert st[key] == bf[key], key
    assert st["kind"] == kind
    assert set(st["splits"]) == set(bf["splits"]) == {"train", "val"}
    for split, s in bf["splits"].items():
        for key in ("shards", "documents", "tokens", "trained_tokens", "bytes"):
            assert st["splits"][split][key] == s[key], (split, key)
    assert set(st["sources"]) == set(bf["sources"])
    for name, s in bf["sources"].items():
        for key in ("documents", "tokens", "trained_tokens"):
            assert st["sources"][name][key] == s.get(key, 0), (name, key)
    assert st["roles"] == bf["roles"]
    assert st["trained_fraction"] == pytest.approx(bf["trained_tokens"] / bf["tokens"])
    assert st["tokenizer"]["fingerprint"] == tokenizer_fingerprint().hex()
    lengths = [len(ids) for split in ("train", "val") for *_, ids, _ in documents(folder, split)]
    assert st["document_length"]["mean"] == pytest.approx(np.mean(lengths))
    assert sum(b["count"] for b in st["document_length"]["histogram"]) == len(lengths)
    assert st["document_length"]["percentiles"]["p100"] == max(lengths)
    assert st["document_length"]["percentiles"]["p0"] == min(lengths)


def test_stats_pretrain_trains_on_every_token(folders, capsys):
    st = json.loads(run(capsys, "shards", "stats", folders["pretrain"], "--json")[1])
    assert st["trained_tokens"] == st["tokens"] and st["trained_fraction"] == 1.0
    assert st["roles"] == {"text": st["tokens"]}
    (src,) = st["sources"].values()
    assert src["skipped"] == {"empty:text": 1, "null:text": 1}
    assert src["documents"] == st["documents"]
    assert st["splits"]["val"]["tokens"] >= 3000 and st["splits"]["train"]["shards"] >= 2


def test_stats_chat_counts_what_the_mixture_holds(folders, capsys):
    """Independent of the shards: the fixture's valid rows, with identity repeated 3 times (none held out)."""
    st = json.loads(run(capsys, "shards", "stats", folders["chat"], "--json")[1])
    docs = {name: s["documents"] for name, s in st["sources"].items()}
    # identity rows may land in validation before repeating: 6 rows, each held out once or repeated 3x
    n_identity_val = sum(1 for *_, src, _, _ in documents(folders["chat"], "val") if src == "identity")
    assert docs == {"smoltalk": 40, "mmlu": 15, "mmlu_aux": 10, "gsm8k": 15, "arc": 13, "identity": 3 * (6 - n_identity_val) + n_identity_val}
    assert st["splits"]["val"]["documents"] == 5
    assert 0 < st["trained_tokens"] < st["tokens"]
    # BOS, assistant start and user tokens are counted but not trained
    assert st["roles"]["bos"] == st["documents"] == st["roles"].get("assistant_start")
    assert st["sources"]["smoltalk"]["skipped"] == {"empty_conversation": 1, "no_final_assistant": 1, "unknown_role": 1}
    assert st["sources"]["arc"]["skipped"] == {"bad_answer_index": 1}
    assert st["sources"]["gsm8k"]["skipped"] == {"no_final_number": 1}


def line_of(text: str, name: str) -> str:
    (line,) = [ln for ln in text.splitlines() if ln.split() and ln.split()[0] == name]
    return line


def test_stats_text_report_lists_skip_reasons(folders, capsys):
    rc, out, _ = run(capsys, "shards", "stats", folders["chat"])
    assert rc == 0
    assert line_of(out, "smoltalk").endswith("empty_conversation 1, no_final_assistant 1, unknown_role 1")
    assert line_of(out, "gsm8k").endswith("no_final_number 1")
    assert line_of(out, "arc").endswith("bad_answer_index 1")
    assert line_of(out, "identity").endswith("no_final_assistant 1")
    assert "x3" in line_of(out, "identity")
    assert line_of(out, "mmlu").endswith("-")
    st = json.loads(run(capsys, "shards", "stats", folders["chat"], "--json")[1])
    assert re.search(rf"^  tokens +{st['tokens']:,}$", out, re.M)
    assert re.search(rf"^  documents +{st['documents']:,}$", out, re.M)
    assert "tokens per role:" in out

    rc, out, _ = run(capsys, "shards", "stats", folders["pretrain"])
    assert rc == 0
    assert line_of(out, "corpus").endswith("empty:text 1, null:text 1")  # named after its folder
    assert "document length (tokens)" in out


def test_stats_plot_writes_a_png(folders, capsys, tmp_path):
    png = tmp_path / "hist.png"
    rc, out, _ = run(capsys, "shards", "stats", folders["pretrain"], "--plot", png)
    assert rc == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert str(png) in out


def test_stats_of_a_folder_without_manifest(folders, tmp_path, planck):
    bad = copy(folders["chat"], tmp_path)
    (bad / "manifest.json").unlink()
    proc = planck("shards", "stats", bad, check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"planck: error: {bad / 'manifest.json'}: missing; is {bad} a shard folder")


# --------------------------------------------------------------------------- verify


def test_verify_good_folders(folders, capsys):
    rc, out, err = run(capsys, "shards", "verify", folders["pretrain"], folders["chat"])
    assert rc == 0, out + err
    assert out.count("ok  ") == 2 and "BAD" not in out


def test_verify_finds_a_flipped_payload_byte(folders, tmp_path, capsys):
    folder = copy(folders["pretrain"], tmp_path)
    victim = folder / "train_00001.bin"
    assert victim.exists()
    data = bytearray(victim.read_bytes())
    data[64 + 10] ^= 0x01  # a token, well inside the payload
    victim.write_bytes(bytes(data))
    rc, out, _ = run(capsys, "shards", "verify", folder)
    assert rc == 1
    bad = [ln for ln in out.splitlines() if ln.startswith("BAD")]
    assert len(bad) == 1 and "train_00001.bin" in bad[0] and "checksum mismatch" in bad[0]
    # one bad folder among good ones still fails, and the good one is reported ok
    rc, out, _ = run(capsys, "shards", "verify", folders["chat"], folder)
    assert rc == 1 and f"ok  {folders['chat']}" in out and "train_00001.bin" in out


def test_verify_finds_a_replaced_shard(folders, tmp_path, capsys):
    folder = copy(folders["pretrain"], tmp_path)
    shutil.copy(folder / "train_00000.bin", folder / "train_00001.bin")  # valid, but not the listed file
    rc, out, _ = run(capsys, "shards", "verify", folder)
    assert rc == 1
    assert "train_00001.bin" in out and "does not match the manifest" in out


def test_verify_reports_an_unlisted_bin(folders, tmp_path, capsys):
    folder = copy(folders["chat"], tmp_path)
    shutil.copy(folder / "val_00000.bin", folder / "train_00007.bin")
    rc, out, _ = run(capsys, "shards", "verify", folder)
    assert rc == 1
    (bad,) = [ln for ln in out.splitlines() if ln.startswith("BAD")]
    assert "train_00007.bin" in bad and "not listed" in bad


def test_verify_warns_about_leftover_tmp_but_passes(folders, tmp_path, capsys):
    folder = copy(folders["chat"], tmp_path)
    (folder / "train_00001.bin.tmp").write_bytes(b"\0" * 64)
    rc, out, err = run(capsys, "shards", "verify", folder)
    assert rc == 0
    assert err.startswith(f"warning: {folder / 'train_00001.bin.tmp'}: leftover")


def test_verify_missing_manifest_is_a_clear_error(folders, tmp_path, planck):
    folder = copy(folders["chat"], tmp_path)
    (folder / "manifest.json").unlink()
    proc = planck("shards", "verify", folder, check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    assert f"{folder / 'manifest.json'}: missing; is {folder} a shard folder" in proc.stdout + proc.stderr
    proc = planck("shards", "verify", tmp_path / "nowhere", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"{tmp_path / 'nowhere'}: no such folder" in proc.stdout + proc.stderr


# --------------------------------------------------------------------------- show


def find(folder: Path, split: str, want) -> tuple[int, str, str, np.ndarray, np.ndarray]:
    """(global index, file, source, ids, roles) of the first document of the split that `want` accepts."""
    for n, (file, _, src, ids, roles) in enumerate(documents(folder, split)):
        if want(src, ids):
            return n, file, src, ids, roles
    raise AssertionError("no such document in the fixture folder")


def test_show_chat_document_with_system_message(folders, capsys):
    folder = folders["chat"]
    n, file, src, ids, roles = find(folder, "train", lambda s, ids: s == "smoltalk" and SYS_S in ids.tolist())
    text = get_tokenizer().decode(ids.tolist())
    i = int(re.search(r"What is (\d+) plus one\?", text).group(1))
    rc, out, _ = run(capsys, "shards", "show", folder, "--doc", n, "--color", "never")
    assert rc == 0
    head, *rest = out.splitlines()
    trained = sum(int(r) in TRAINED_ROLES for r in roles)
    assert head.startswith(f"# document {n} of the train split ({file} #")
    assert f"source {src})" in head and f"{len(ids)} tokens, {trained} trained" in head
    assert "\x1b" not in out
    body = out.split("\n", 2)[2].rstrip("\n")  # after the header and the legend
    assert body == (
        "[bos]<|endoftext|>[/bos]"
        "[system]<|system_start|>Be brief.<|system_end|>[/system]"
        f"[user]<|user_start|>What is {i} plus one?<|user_end|>[/user]"
        "[assistant_start]<|assistant_start|>[/assistant_start]"
        f"[assistant*]{i} plus one is {i + 1}.<|assistant_end|>[/assistant]"
    )


def test_show_multiple_choice_document(folders, capsys):
    folder = folders["chat"]
    n, _, src, ids, _ = find(folder, "train", lambda s, ids: s == "mmlu")
    i = int(re.search(r"Which letter is number (\d+)\?", get_tokenizer().decode(ids.tolist())).group(1))
    rc, out, _ = run(capsys, "shards", "show", folder, "--doc", n, "--color", "never")
    assert rc == 0 and "source mmlu)" in out.splitlines()[0]
    user = re.search(r"\[user\]<\|user_start\|>(.*?)<\|user_end\|>\[/user\]", out, re.S).group(1)
    assert f"Which letter is number {i}?" in user and "A. w\nB. x\nC. y\nD. z" in user
    assert f"[assistant*]{'ABCD'[i % 4]}<|assistant_end|>[/assistant]" in out


def test_show_val_split_and_pretrain_document(folders, capsys):
    n, file, src, ids, _ = find(folders["chat"], "val", lambda s, ids: True)
    rc, out, _ = run(capsys, "shards", "show", folders["chat"], "--doc", 0, "--split", "val", "--color", "never")
    assert rc == 0 and out.startswith(f"# document 0 of the val split ({file} #0, source {src})")
    rc, out, _ = run(capsys, "shards", "show", folders["pretrain"], "--doc", 0, "--color", "never")
    _, file, src, ids, roles = next(documents(folders["pretrain"], "train"))
    assert rc == 0 and roles is None
    head, text = out.split("\n", 1)
    assert f"source {src})" in head and f"{len(ids):,} tokens, {len(ids):,} trained" in head
    assert text == get_tokenizer().decode(ids.tolist()) + "\n"  # plain text: no role brackets, no legend


def test_show_color_always_emits_ansi(folders, capsys):
    rc, out, _ = run(capsys, "shards", "show", folders["chat"], "--doc", 1, "--color", "always")
    assert rc == 0
    assert "\x1b[36m<|user_start|>" in out and "\x1b[1;32m" in out and "\x1b[0m" in out
    assert "[user]" not in out and "[/assistant]" not in out


def test_show_out_of_range_is_a_clear_error(folders, planck):
    n_train = sum(1 for _ in documents(folders["chat"], "train"))
    for args, total in (
        (["--doc", str(n_train)], n_train),
        (["--doc", "5", "--split", "val"], 5),
        (["--doc", "-1"], n_train),
    ):
        proc = planck("shards", "show", folders["chat"], *args, "--color", "never", check=False)
        assert proc.returncode != 0, args
        assert "Traceback" not in proc.stderr, proc.stderr
        assert f"has {total:,} documents" in proc.stderr and "no document" in proc.stderr
        assert proc.stdout == ""


def test_show_without_manifest_is_a_clear_error(folders, tmp_path, planck):
    folder = copy(folders["chat"], tmp_path)
    (folder / "manifest.json").unlink()
    proc = planck("shards", "show", folder, "--doc", "0", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"planck: error: {folder / 'manifest.json'}: missing")


def test_show_into_a_closed_pipe_exits_quietly(folders):
    """`planck shards show ... | head`: the reader leaves early; no BrokenPipeError traceback, the shell's 141."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "planck.cli", "shards", "show", str(folders["pretrain"]), "--doc", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1])
    proc.stdout.close()  # before planck has written a byte (its imports take far longer)
    err = proc.stderr.read().decode()
    assert proc.wait() == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
