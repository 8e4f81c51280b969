"""`planck tokenize pretrain`: local sources through `datasets`, the embedded corpus, determinism, resume, merge."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tiktoken

from planck.shards.folder import ShardFolder
from planck_testing import bins, without_command

REPO = Path(__file__).resolve().parents[1]
EOT = 50256


def gpt2() -> tiktoken.Encoding:
    """GPT-2's own encoding, independent of planck's tokenizer module."""
    return tiktoken.get_encoding("r50k_base")


def manifest(folder: Path, name: str = "manifest.json") -> dict:
    return json.loads((folder / name).read_text())


def documents(folder: Path) -> dict[str, list[np.ndarray]]:
    """Every document of each split, in order, as token arrays (via the manifest)."""
    sf = ShardFolder(folder, verify=True)
    out: dict[str, list[np.ndarray]] = {"val": [], "train": []}
    for split in out:
        for shard in sf.shards(split):
            assert shard.roles is None, "pretrain shards store no roles"
            out[split] += [np.array(shard.document(i)[0]) for i in range(len(shard))]
    return out


def check_documents(docs: list[np.ndarray], expected_texts: list[str]) -> None:
    """Each document is <|endoftext|> + GPT-2 tokens of its row's text, in row order."""
    enc = gpt2()
    assert len(docs) == len(expected_texts)
    for doc, text in zip(docs, expected_texts):
        assert doc[0] == EOT, "every document starts with <|endoftext|>"
        assert EOT not in doc[1:], "exactly one <|endoftext|> per document"
        assert enc.decode(doc[1:].tolist()) == text
        assert doc[1:].tolist() == enc.encode_ordinary(text)


def check_budgets(m: dict, docs: dict[str, list[np.ndarray]], val_tokens: int, max_tokens: int, ran_out: bool) -> None:
    val = [len(d) for d in docs["val"]]
    train = [len(d) for d in docs["train"]]
    assert sum(val) >= val_tokens, "the val split holds at least --val-tokens"
    assert sum(val) - val[-1] < val_tokens, "the val split stops at the first document that reaches --val-tokens"
    if ran_out:
        assert sum(train) < max_tokens
    else:
        assert sum(train) >= max_tokens
        assert sum(train) - train[-1] < max_tokens, "the train split stops once --max-tokens is reached"
    assert sum(s["tokens"] for s in m["shards"] if s["split"] == "val") == sum(val)
    assert sum(s["tokens"] for s in m["shards"] if s["split"] == "train") == sum(train)
    assert m["sources"][0]["tokens"] == sum(val) + sum(train)
    assert m["sources"][0]["documents"] == len(val) + len(train)


def check_shard_sizes(m: dict, shard_tokens: int) -> None:
    """Documents are never split: a shard exceeds --shard-tokens only when it holds one document."""
    for s in m["shards"]:
        assert s["tokens"] <= shard_tokens or s["documents"] == 1, s


def corpus_rows(folder: Path) -> list[dict]:
    rows = []
    for f in sorted(folder.glob("*.parquet")):
        rows += pq.read_table(f).to_pylist()
    return rows


def valid_texts(rows: list[dict]) -> list[str]:
    return [r["text"] for r in rows if isinstance(r.get("text"), str) and r["text"].strip()]


def pretrain_cmd(source, out, *extra) -> list[str]:
    return ["tokenize", "pretrain", "--source", str(source), "--out", str(out), "--quiet", *map(str, extra)]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in sorted(folder.iterdir())}


# --- the datasets path on local files -----------------------------------------------------------


@pytest.mark.parametrize("max_tokens, ran_out", [("1M", True), ("30k", False)])
def test_hub_like_parquet_folder(planck, text_corpus, tmp_path, max_tokens, ran_out):
    out = tmp_path / "out"
    proc = planck(*pretrain_cmd(text_corpus, out, "--max-tokens", max_tokens, "--val-tokens", "5k",
                                "--shard-tokens", "20k", "--workers", "1"))
    assert "done" in proc.stdout
    m = manifest(out)
    assert m["kind"] == "pretrain"
    assert m["tokenizer"]["vocab_size"] == 50263
    [src] = m["sources"]
    assert src["spec"].startswith(f"local: {text_corpus}")
    assert src["name"] == "corpus", "a folder source is named after the folder"
    docs = documents(out)
    texts = valid_texts(corpus_rows(text_corpus))
    n_docs = len(docs["val"]) + len(docs["train"])
    check_documents(docs["val"] + docs["train"], texts[:n_docs])
    check_budgets(m, docs, 5_000, {"1M": 1_000_000, "30k": 30_000}[max_tokens], ran_out)
    check_shard_sizes(m, 20_000)
    # Bad rows are counted by reason, never silently dropped.
    assert src["rows_read"] == src["documents"] + sum(src["skipped"].values())
    if ran_out:
        assert src["rows_read"] == 160 and src["documents"] == len(texts) == 158
        assert src["skipped"] == {"empty:text": 1, "null:text": 1}
    else:
        # The budget ended the job after row 9 (the null one): both bad rows were read and counted.
        assert 10 < src["rows_read"] < 160
        assert src["skipped"] == {"empty:text": 1, "null:text": 1}
    assert planck("shards", "verify", out).returncode == 0


def test_jsonl_file_and_txt_glob(planck, tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    rows = [
        {"text": "The first line of prose.\nAnd its second line.", "id": "a"},
        {"text": "", "id": "empty"},
        {"text": None, "id": "null"},
        {"id": "no text column"},
        {"text": "   \n\t ", "id": "blank"},
        {"text": "Unicode survives: naïve café — ✓ 中文", "id": "u"},
        {"text": "Special strings stay text: <|endoftext|> and <|user_start|>.", "id": "s"},
        {"text": 17 * "A short sentence repeated. ", "id": "r"},
    ]
    with open(d / "rows.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    out = tmp_path / "jsonl"
    planck(*pretrain_cmd(d / "rows.jsonl", out, "--max-tokens", "1M", "--val-tokens", "10", "--workers", "1"))
    m = manifest(out)
    [src] = m["sources"]
    assert src["name"] == "rows", "a file source is named after the file"
    assert src["rows_read"] == 8 and src["documents"] == 4
    assert src["skipped"] == {"empty:text": 2, "null:text": 2}
    docs = documents(out)
    check_documents(docs["val"] + docs["train"], [rows[i]["text"] for i in (0, 5, 6, 7)])
    check_budgets(m, docs, 10, 1_000_000, ran_out=True)

    # A glob of .txt files: one document per file, in sorted file order; other files are ignored.
    texts = {
        "b.txt": "Second file.\n\nIt has a blank line inside.\n",
        "a.txt": "First file, one line.\n",
        "c.txt": "Third file\nwithout a final newline",
    }
    for name, text in texts.items():
        (d / name).write_text(text, encoding="utf-8")
    (d / "notes.md").write_text("not matched by the glob")
    out = tmp_path / "txt"
    planck(*pretrain_cmd(f"{d}/*.txt", out, "--max-tokens", "1M", "--val-tokens", "5", "--workers", "1"))
    m = manifest(out)
    assert m["sources"][0]["spec"] == f"local: {d}/*.txt"
    assert m["sources"][0]["name"] == "src", "a glob is named after the folder it starts in"
    assert "txt_docs" in m["options"]["job"], "--txt-docs decides the bytes of a source with .txt files"
    assert m["sources"][0]["rows_read"] == 3 and m["sources"][0]["skipped"] == {}
    docs = documents(out)
    assert len(docs["val"]) == 1
    check_documents(docs["val"] + docs["train"], [texts[k] for k in sorted(texts)])


def test_embedded_source(planck, tmp_path):
    from planck.tokenize.embedded import embedded_rows

    out = tmp_path / "emb"
    planck(*pretrain_cmd("embedded", out, "--max-tokens", "40k", "--val-tokens", "8k", "--shard-tokens", "10k",
                         "--workers", "1"))
    m = manifest(out)
    docs = documents(out)
    n = len(docs["val"]) + len(docs["train"])
    rows = []
    for r in embedded_rows():
        rows.append(r["text"])
        if len(rows) == n:
            break
    check_documents(docs["val"] + docs["train"], rows)
    check_budgets(m, docs, 8_000, 40_000, ran_out=False)
    check_shard_sizes(m, 10_000)
    assert m["sources"][0]["spec"].startswith("embedded:")
    assert m["options"]["job"]["val_tokens"] == 8_000
    assert len(m["shards"]) > 3


# --- determinism and resuming -------------------------------------------------------------------


@pytest.mark.parametrize("source", ["embedded", "corpus"])
def test_output_does_not_depend_on_workers(planck, tmp_path, request, source):
    # The whole source (the budget is never reached): more row batches than the workers keep in flight.
    src = "embedded" if source == "embedded" else request.getfixturevalue("text_corpus")
    runs = {}
    for w in (1, 2):
        out = tmp_path / f"w{w}"
        planck(*pretrain_cmd(src, out, "--max-tokens", "1M", "--val-tokens", "6k", "--shard-tokens", "40k",
                             "--workers", w))
        runs[w] = out
    assert len(bins(runs[1])) > 5
    if source == "embedded":
        assert manifest(runs[1])["sources"][0]["rows_read"] > 4 * 2 * 64, "fewer batches than the workers keep in flight"
    assert bins(runs[1]) == bins(runs[2])
    assert sorted(p.name for p in runs[1].iterdir()) == sorted(p.name for p in runs[2].iterdir())
    m1, m2 = manifest(runs[1]), manifest(runs[2])
    assert m1["made_by"]["command"] != m2["made_by"]["command"]
    assert "--workers" in m1["made_by"]["command"]
    assert without_command(m1) == without_command(m2)


RESUME_ARGS = ["--max-tokens", "300k", "--val-tokens", "10k", "--shard-tokens", "15k", "--workers", "1"]


def _kill_after_shards(out: Path, min_shards: int) -> None:
    """Start the job, wait until its progress record lists `min_shards` shards, then kill -9 it."""
    cmd = [sys.executable, "-m", "planck.cli", *pretrain_cmd("embedded", out, *RESUME_ARGS)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = out / "progress.json"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if progress.exists():
                try:
                    listed = len(json.loads(progress.read_text())["shards"])
                except (OSError, ValueError):
                    listed = 0  # replaced between exists() and read: look again
                if listed >= min_shards:
                    break
            assert proc.poll() is None, "the job finished before it could be killed"
            time.sleep(0.002)
        else:
            raise AssertionError("no progress record after 60 s")
        assert proc.poll() is None, "the job finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()


def test_resume_after_kill_9(planck, tmp_path):
    ref = tmp_path / "ref"
    planck(*pretrain_cmd("embedded", ref, *RESUME_ARGS))
    assert len(bins(ref)) >= 10

    out = tmp_path / "killed"
    _kill_after_shards(out, 2)
    listed = json.loads((out / "progress.json").read_text())["shards"]
    assert len(listed) >= 2
    assert len(listed) < len(bins(ref)), "killed before the end"

    # An unfinished job refuses other options instead of mixing two jobs' shards.
    refused = planck(*pretrain_cmd("embedded", out, "--max-tokens", "300k", "--val-tokens", "10k",
                                   "--shard-tokens", "16k", "--workers", "1"), check=False)
    assert refused.returncode == 1
    assert "other options" in refused.stderr and "shard_tokens" in refused.stderr
    assert "Traceback" not in refused.stderr

    # A second kill after resuming, then a run to completion.
    _kill_after_shards(out, len(listed) + 2)
    planck(*pretrain_cmd("embedded", out, *RESUME_ARGS))
    assert bins(out) == bins(ref)
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    assert not (out / "progress.json").exists()
    assert without_command(manifest(out)) == without_command(manifest(ref))
    assert planck("shards", "verify", out).returncode == 0


def test_rerun_is_a_noop_and_other_options_are_refused(planck, tmp_path):
    out = tmp_path / "out"
    args = ["--max-tokens", "60k", "--val-tokens", "5k", "--shard-tokens", "10k", "--workers", "1"]
    planck(*pretrain_cmd("embedded", out, *args))
    before = snapshot(out)
    started = time.monotonic()
    again = planck(*pretrain_cmd("embedded", out, *args))
    assert time.monotonic() - started < 10
    assert "done" in again.stdout
    assert snapshot(out) == before, "a finished job re-run rewrote files"

    for other in (["--shard-tokens", "11k"], ["--max-tokens", "70k"], ["--num-workers", "2"]):
        changed = list(args)
        if other[0] in changed:
            changed[changed.index(other[0]) + 1] = other[1]
        else:
            changed += other
        proc = planck(*pretrain_cmd("embedded", out, *changed), check=False)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert proc.stderr.startswith("planck: error:")
        assert str(out) in proc.stderr and "other options" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert snapshot(out) == before


@pytest.mark.parametrize("kind", ["garbage.parquet", "bad.jsonl", "latin1.txt", "missing.parquet"])
def test_unreadable_file_is_a_clear_error(planck, tmp_path, kind):
    bad = tmp_path / kind
    if kind == "garbage.parquet":
        bad.write_bytes(os.urandom(2000))
    elif kind == "bad.jsonl":
        bad.write_text('{"text": "fine"\nnot json at all\n')
    elif kind == "latin1.txt":
        bad.write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    out = tmp_path / "out"
    proc = planck(*pretrain_cmd(bad, out, "--max-tokens", "1k", "--workers", "1"), check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("planck: error:")]
    assert len(error) == 1, proc.stderr
    assert str(bad) in error[0]
    assert not (out / "manifest.json").exists()


def test_unreadable_file_in_a_hub_like_folder(planck, tmp_path, text_corpus):
    (text_corpus / "train-00001-of-00002.parquet").write_bytes(os.urandom(3000))
    out = tmp_path / "out"
    proc = planck(*pretrain_cmd(text_corpus, out, "--max-tokens", "1M", "--val-tokens", "1k", "--workers", "1"),
                  check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    # One line, naming the file inside the folder.
    assert proc.stderr.startswith(f"planck: error: {text_corpus / 'train-00001-of-00002.parquet'}: cannot be read as parquet")
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert not out.exists(), "a job that failed before writing anything leaves no folder behind"


# --- several machines ---------------------------------------------------------------------------


def test_multi_machine_parts_and_merge(planck, tmp_path, text_corpus):
    out = tmp_path / "out"
    args = ["--max-tokens", "1M", "--val-tokens", "6k", "--shard-tokens", "20k", "--num-workers", "2", "--workers", "1"]
    out.mkdir()
    # Another machine's work in progress in the shared folder must survive this machine's start.
    foreign = [out / "train_w001_00000.bin.tmp", out / "train_w001_00000.bin.roles.tmp", out / "progress.w001.json.tmp"]
    for p in foreign:
        p.write_bytes(b"another machine is writing this")
    planck(*pretrain_cmd(text_corpus, out, *args, "--worker-index", "0"))
    assert all(p.exists() for p in foreign), "part 0 deleted part 1's temporary files"
    assert (out / "manifest.w000.json").exists() and not (out / "manifest.json").exists()

    missing = planck("tokenize", "merge", out, check=False)
    assert missing.returncode == 1
    assert "[1]" in missing.stderr and str(out) in missing.stderr
    assert "Traceback" not in missing.stderr
    assert not (out / "manifest.json").exists()

    planck(*pretrain_cmd(text_corpus, out, *args, "--worker-index", "1"))
    assert not list(out.glob("*.tmp")), "part 1 leaves none of its own temporary files"
    planck("tokenize", "merge", out)
    m = manifest(out)
    parts = [manifest(out, f"manifest.w00{i}.json") for i in (0, 1)]
    assert [s["file"] for s in m["shards"]] == [
        s["file"] for split in ("val", "train") for p in parts for s in p["shards"] if s["split"] == split
    ]
    assert {s["file"] for s in m["shards"]} == {p.name for p in out.glob("*.bin")}
    assert any("_w000_" in s["file"] for s in m["shards"]) and any("_w001_" in s["file"] for s in m["shards"])

    # Over the whole source, the parts add up to what one machine makes of it.
    rows = corpus_rows(text_corpus)
    texts = valid_texts(rows)
    enc = gpt2()
    [src] = m["sources"]
    assert src["rows_read"] == len(rows) == 160
    assert src["documents"] == len(texts) == 158
    assert src["skipped"] == {"empty:text": 1, "null:text": 1}
    assert src["tokens"] == sum(len(enc.encode_ordinary(t)) + 1 for t in texts)
    docs = documents(out)
    decoded = sorted(enc.decode(d[1:].tolist()) for d in docs["val"] + docs["train"])
    assert decoded == sorted(texts)
    assert sum(s["documents"] for s in m["shards"]) == 158
    assert m["options"]["job"]["worker_index"] is None and m["options"]["job"]["num_workers"] == 2

    single = tmp_path / "single"
    planck(*pretrain_cmd(text_corpus, single, "--max-tokens", "1M", "--val-tokens", "6k", "--shard-tokens", "20k",
                         "--workers", "1"))
    s1 = manifest(single)["sources"][0]
    assert {k: src[k] for k in ("rows_read", "documents", "tokens", "skipped")} == {
        k: s1[k] for k in ("rows_read", "documents", "tokens", "skipped")
    }
    verify = planck("shards", "verify", out)
    assert verify.stdout.startswith("ok")


def test_pretrain_table_without_text_column_is_a_clear_error(tmp_path, planck):
    """A Fineweb-shaped job over a table with no `text` column stops at once and says which column is missing."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = tmp_path / "notext.parquet"
    pq.write_table(pa.table({"content": ["some prose"], "id": ["a"]}), bad)
    proc = planck("tokenize", "pretrain", "--source", bad, "--out", tmp_path / "out", "--workers", "1", "--quiet", check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "no column text" in proc.stderr and str(bad) in proc.stderr


# --- folders of several file types, .txt documents, sources that keep nothing, offline ----------


def _write_jsonl(path: Path, rows: list) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_folder_and_glob_read_every_file_type_in_sorted_order(planck, tmp_path):
    import pyarrow as pa

    d = tmp_path / "mixed"
    d.mkdir()
    pq.write_table(pa.Table.from_pylist([{"text": "Parquet one.", "id": "1"}, {"text": "Parquet two.", "id": "2"}]), d / "a.parquet")
    _write_jsonl(d / "b.jsonl", [{"text": "Lines one."}, {"text": ""}, {"text": "Lines two."}])
    (d / "c.json").write_text(json.dumps([{"text": "A JSON list row."}]), encoding="utf-8")
    (d / "d.txt").write_text("A text file.\nIts second line.\n", encoding="utf-8")
    pq.write_table(pa.Table.from_pylist([{"text": "Parquet after the others."}]), d / "e.parquet")
    (d / "notes.csv").write_text("not,read\n")
    expected = ["Parquet one.", "Parquet two.", "Lines one.", "Lines two.", "A JSON list row.",
                "A text file.\nIts second line.\n", "Parquet after the others."]

    out = tmp_path / "folder"
    # With its progress bar: a local source has no known total, so no ETA built on the 3B default budget.
    proc = planck("tokenize", "pretrain", "--source", d, "--out", out, "--val-tokens", "3", "--workers", "1")
    m = manifest(out)
    [src] = m["sources"]
    assert src["name"] == "mixed"
    assert src["rows_read"] == 8 and src["documents"] == 7 and src["skipped"] == {"empty:text": 1}
    docs = documents(out)
    check_documents(docs["val"] + docs["train"], expected)
    # The file it does not read is named, not dropped without a word.
    assert "notes.csv" in proc.stderr and "not read" in proc.stderr
    final = proc.stderr.replace("\r", "\n").strip().splitlines()
    bar = [line for line in final if line.startswith("tokenize mixed")][-1]
    assert "docs=7" in bar, bar  # the figures of the summary, not of the last 64-row refresh
    assert "/" not in bar.split("tok")[0] and "3.00G" not in proc.stderr

    # The same files as a glob: the same documents.
    glob_out = tmp_path / "glob"
    planck(*pretrain_cmd(f"{d}/[a-e].*", glob_out, "--val-tokens", "3", "--workers", "1"))
    assert bins(glob_out) == bins(out)
    # A glob that names a type planck cannot read is refused with the file named.
    refused = planck(*pretrain_cmd(f"{d}/*", tmp_path / "refused", "--workers", "1"), check=False)
    assert refused.returncode == 1 and "notes.csv" in refused.stderr and "Traceback" not in refused.stderr


def test_hub_like_folder_reads_only_its_split(planck, tmp_path):
    import pyarrow as pa

    d = tmp_path / "mirror"
    d.mkdir()
    pq.write_table(pa.Table.from_pylist([{"text": "A training row."}]), d / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist([{"text": "A test row."}]), d / "test-00000-of-00001.parquet")
    _write_jsonl(d / "test-extra.jsonl", [{"text": "A test row in JSON lines."}])
    (d / "README.md").write_text("# a dataset card without configs\n")
    out = tmp_path / "test"
    planck(*pretrain_cmd(d, out, "--split", "test", "--val-tokens", "1", "--workers", "1"))
    docs = documents(out)
    check_documents(docs["val"] + docs["train"], ["A test row.", "A test row in JSON lines."])
    missing = planck(*pretrain_cmd(d, tmp_path / "none", "--split", "validation", "--workers", "1"), check=False)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "no validation split" in missing.stderr and "train, test" in missing.stderr
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("mode, expected", [
    ("file", ["One article.\nStill the first.\n\nThe second article.\n\n\nThird.\n"]),
    ("line", ["One article.", "Still the first.", "The second article.", "Third."]),
    ("blank-line", ["One article.\nStill the first.", "The second article.", "\nThird.\n"]),
])
def test_txt_docs_cuts_txt_files_into_documents(planck, tmp_path, mode, expected):
    src = tmp_path / "articles.txt"
    src.write_text("One article.\nStill the first.\n\nThe second article.\n\n\nThird.\n", encoding="utf-8")
    out = tmp_path / "out"
    planck(*pretrain_cmd(src, out, "--txt-docs", mode, "--val-tokens", "1", "--workers", "1"))
    docs = documents(out)
    check_documents(docs["val"] + docs["train"], expected)
    m = manifest(out)
    assert m["options"]["job"]["txt_docs"] == mode
    # Empty lines are rows without text: counted, not silently dropped.
    assert m["sources"][0]["skipped"] == ({"empty:text": 3} if mode == "line" else {})
    if mode == "line":
        other = planck(*pretrain_cmd(src, out, "--txt-docs", "blank-line", "--val-tokens", "1", "--workers", "1"), check=False)
        assert other.returncode == 1 and "other options" in other.stderr


def test_txt_docs_without_txt_files_is_refused(planck, tmp_path):
    src = tmp_path / "rows.jsonl"
    _write_jsonl(src, [{"text": "prose"}])
    proc = planck(*pretrain_cmd(src, tmp_path / "out", "--txt-docs", "line"), check=False)
    assert proc.returncode == 1 and "no .txt files" in proc.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["rows.json", "rows.jsonl"])
def test_json_without_a_text_column_is_refused(planck, tmp_path, name):
    src = tmp_path / name
    rows = [{"content": f"prose {i}", "id": str(i)} for i in range(3)]
    src.write_text(json.dumps(rows) if name.endswith(".json") else "".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    proc = planck(*pretrain_cmd(src, out, "--workers", "1"), check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.startswith(f"planck: error: {src}: no column text (it has content, id)")
    assert "Traceback" not in proc.stderr and "--val-tokens" not in proc.stderr
    assert not out.exists()


def test_a_run_that_keeps_nothing_fails_and_publishes_nothing(planck, tmp_path):
    src = tmp_path / "blank.jsonl"
    _write_jsonl(src, [{"text": ""}, {"text": "  "}, {"text": None}])
    out = tmp_path / "existing"
    out.mkdir()  # a folder that was there before the job is never removed
    proc = planck(*pretrain_cmd(src, out, "--workers", "1"), check=False)
    assert proc.returncode == 1
    assert "no usable document in 3 rows" in proc.stderr and "empty:text 2, null:text 1" in proc.stderr
    assert out.is_dir() and list(out.iterdir()) == []
    assert planck("shards", "verify", out, check=False).returncode == 1


def test_a_truncated_jsonl_line_is_named_by_file_and_line(planck, tmp_path):
    src = tmp_path / "data.jsonl"
    src.write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(3)) + '{"text": "cut off in the mid\n')
    proc = planck(*pretrain_cmd(src, tmp_path / "out", "--workers", "1"), check=False)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [proc.stderr.strip()], "one line, no duplicate from datasets"
    assert proc.stderr.startswith(f"planck: error: {src} line 4: not valid JSON (")
    assert "truncated?" in proc.stderr and "encoding" not in proc.stderr and "row 3" not in proc.stderr


def test_offline_hub_fails_fast_with_what_to_do(planck, tmp_path):
    out = tmp_path / "out"
    started = time.monotonic()
    # Nothing listens on port 9: `datasets` alone would retry for ~24 s before failing.
    proc = planck("tokenize", "pretrain", "--out", out, "--quiet", check=False,
                  env={**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert time.monotonic() - started < 12
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "cannot reach the Hugging Face hub" in proc.stderr and "--source" in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert not out.exists(), "a failed job leaves no empty output folder"
