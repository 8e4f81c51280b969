"""`planck tokenize chat`: mixtures of every chat format -> shards with a role id per token."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiktoken

from planck.shards.folder import ShardFolder
from planck_testing import bins, without_command

REPO = Path(__file__).resolve().parents[1]
EOT = 50256
SYSTEM_START, SYSTEM_END, USER_START, USER_END, ASSISTANT_START, ASSISTANT_END = range(50257, 50263)
BOS, SYSTEM, USER, ASSISTANT_CUE, ASSISTANT = 1, 2, 3, 4, 5
SPECIAL = {  # start id -> (role name, end id, role of the start token, role of content and end)
    SYSTEM_START: ("system", SYSTEM_END, SYSTEM, SYSTEM),
    USER_START: ("user", USER_END, USER, USER),
    ASSISTANT_START: ("assistant", ASSISTANT_END, ASSISTANT_CUE, ASSISTANT),
}

# What the mixture_file fixture holds: valid rows per source (in file order), and the bad ones.
VALID = {"smoltalk": 40, "mmlu": 15, "mmlu_aux": 10, "gsm8k": 15, "arc": 13, "identity": 6}
REPEATS = {"identity": 3}
ROWS_READ = {"smoltalk": 43, "mmlu": 15, "mmlu_aux": 10, "gsm8k": 16, "arc": 14, "identity": 7}
SKIPPED = {
    "smoltalk": {"empty_conversation": 1, "no_final_assistant": 1, "unknown_role": 1},
    "mmlu": {},  # its one bad row lies past max_rows = 15
    "mmlu_aux": {},
    "gsm8k": {"no_final_number": 1},
    "arc": {"bad_answer_index": 1},
    "identity": {"no_final_assistant": 1},
}


def gpt2() -> tiktoken.Encoding:
    return tiktoken.get_encoding("r50k_base")


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def chat_cmd(mixture, out, *extra) -> list[str]:
    return ["tokenize", "chat", "--mixture", str(mixture), "--out", str(out), "--quiet", *map(str, extra)]


def read_docs(folder: Path) -> dict[str, list[tuple[int, np.ndarray, np.ndarray]]]:
    """(source index, token ids, role ids) of every document, per split, in order."""
    sf = ShardFolder(folder, verify=True)
    out: dict[str, list] = {"val": [], "train": []}
    for split in out:
        for shard in sf.shards(split):
            assert shard.roles is not None, "chat shards store a role per token"
            for i in range(len(shard)):
                ids, roles = shard.document(i)
                out[split].append((int(shard.doc_sources[i]), np.array(ids), np.array(roles)))
    return out


def parse(ids: np.ndarray, roles: np.ndarray) -> list[tuple[str, list[int]]]:
    """Split a rendered conversation into (role, content ids), checking every token's role on the way."""
    assert ids[0] == EOT and roles[0] == BOS, "a conversation opens with <|endoftext|> as BOS"
    messages = []
    k = 1
    while k < len(ids):
        start = int(ids[k])
        assert start in SPECIAL, f"expected a start token at {k}, got {start}"
        name, end, start_role, content_role = SPECIAL[start]
        assert roles[k] == start_role
        j = k + 1
        while ids[j] != end:
            assert ids[j] < EOT, "no special token inside a message"
            assert roles[j] == content_role, f"{name} content has role {roles[j]}"
            j += 1
        assert roles[j] == content_role
        messages.append((name, ids[k + 1 : j].tolist()))
        k = j + 1
    return messages


def load_rows(chat_files: dict[str, Path]) -> dict[str, list]:
    """The fixture's valid rows per mixture source, read back from its files."""

    def jsonl(p):
        return [json.loads(line) for line in p.read_text().splitlines()]

    smol = pq.read_table(chat_files["smoltalk"]).to_pylist()
    arc = pq.read_table(next(chat_files["arc"].glob("*.parquet"))).to_pylist()
    return {
        "smoltalk": [r["messages"] for r in smol[: VALID["smoltalk"]]],
        "mmlu": jsonl(chat_files["mmlu"])[: VALID["mmlu"]],
        "mmlu_aux": [r["train"] for r in jsonl(chat_files["mmlu_nested"])],
        "gsm8k": jsonl(chat_files["gsm8k"])[: VALID["gsm8k"]],
        "arc": arc[: VALID["arc"]],
        "identity": json.loads(chat_files["identity"].read_text())[: VALID["identity"]],
    }


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()]


def expected_messages(fmt: str, row) -> tuple[list[tuple[str, str]] | None, str, list[str]]:
    """(exact messages or None, the assistant's answer, lines the user turn must contain) of one raw row."""
    if fmt in ("conversation", "identity"):
        msgs = [(m["role"], m["content"]) for m in row]
        return msgs, msgs[-1][1], []
    if fmt == "gsm8k":
        answer = re.sub(r"<<[^>]*>>", "", row["answer"].strip())
        return [("user", row["question"]), ("assistant", answer)], answer, []
    letters = "ABCDEFGHIJ"
    if fmt == "mmlu":
        choices, answer = row["choices"], letters[row["answer"]]
    else:  # arc
        choices = row["choices"]["text"]
        answer = letters[row["choices"]["label"].index(row["answerKey"])]
    must = [row["question"]] + [f"{letters[i]}. {c}" for i, c in enumerate(choices)]
    return None, answer, must


def match_row(fmt: str, rows: list, user_text: str) -> int:
    """The index of the one raw row whose question is this user turn."""
    hits = []
    for i, row in enumerate(rows):
        msgs, _, must = expected_messages(fmt, row)
        if msgs is not None:
            if [c for r, c in msgs if r == "user"][0] == user_text:
                hits.append(i)
        elif all(line in _lines(user_text) for line in must):
            hits.append(i)
    assert len(hits) == 1, f"{fmt}: {len(hits)} rows match the user turn {user_text!r}"
    return hits[0]


FORMATS = {"smoltalk": "conversation", "mmlu": "mmlu", "mmlu_aux": "mmlu", "gsm8k": "gsm8k", "arc": "arc", "identity": "identity"}


def test_mixture_of_every_format(planck, mixture_file, chat_files, tmp_path):
    out = tmp_path / "out"
    planck(*chat_cmd(mixture_file, out, "--val-rows", "30", "--shard-tokens", "600", "--workers", "1"))
    m = manifest(out)
    assert m["kind"] == "chat"
    assert m["trained_roles"] == [0, 5]
    names = [s["name"] for s in m["sources"]]
    assert names == list(VALID)
    by_name = {s["name"]: s for s in m["sources"]}
    for name, s in by_name.items():
        assert s["skipped"] == SKIPPED[name], name
        assert s["rows_read"] == ROWS_READ[name], name
        assert s["repeats"] == REPEATS.get(name, 1)
        assert s["format"] == FORMATS[name]

    rows = load_rows(chat_files)
    docs = read_docs(out)
    assert len(docs["val"]) == 30
    assert len(m["shards"]) > 3 and all(s["tokens"] <= 600 for s in m["shards"])
    enc = gpt2()
    seen = {"val": Counter(), "train": Counter()}
    tokens = Counter()
    for split, split_docs in docs.items():
        for src, ids, roles in split_docs:
            name = names[src]
            fmt = FORMATS[name]
            msgs = parse(ids, roles)
            user_text = enc.decode([t for r, c in msgs if r == "user" for t in c])
            i = match_row(fmt, rows[name], user_text)
            exact, answer, _ = expected_messages(fmt, rows[name][i])
            if exact is not None:
                assert [(r, enc.decode(c)) for r, c in msgs] == exact
                assert [c for _, c in msgs] == [enc.encode_ordinary(t) for _, t in exact]
            else:
                assert [r for r, _ in msgs] == ["user", "assistant"]
            # The loss trains on exactly the assistant's words and its end token.
            trained = ids[np.isin(roles, m["trained_roles"])].tolist()
            assert trained == enc.encode_ordinary(answer) + [ASSISTANT_END]
            assert enc.decode(trained[:-1]) == answer
            seen[split][(name, i)] += 1
            tokens[name] += len(ids)

    # Every valid row is used; held-out rows once, in val only; the others `repeats` times in train.
    for name, n in VALID.items():
        rep = REPEATS.get(name, 1)
        in_val = {i for (s, i) in seen["val"] if s == name}
        in_train = {i for (s, i) in seen["train"] if s == name}
        assert in_val | in_train == set(range(n)), name
        assert not in_val & in_train, f"{name}: a conversation is in both val and train"
        assert all(seen["val"][(name, i)] == 1 for i in in_val)
        assert all(seen["train"][(name, i)] == rep for i in in_train), name
        assert by_name[name]["documents"] == len(in_val) + rep * len(in_train)
        assert by_name[name]["tokens"] == tokens[name]
    assert any(s == "identity" for (s, _) in seen["val"]), "the seed should hold out an identity row (repeats path)"
    # No token sequence of the val split reappears in train, within a source.
    val_bytes = {(src, ids.tobytes()) for src, ids, _ in docs["val"]}
    assert not val_bytes & {(src, ids.tobytes()) for src, ids, _ in docs["train"]}
    # max_rows = 15 took the first 15 MMLU rows.
    assert {i for (s, i) in seen["val"] + seen["train"] if s == "mmlu"} == set(range(15))
    assert planck("shards", "verify", out).stdout.startswith("ok")


def test_shipped_mixtures():
    from planck.tokenize.mixture import load_mixture, point_at_local

    mid = load_mixture("midtrain")
    assert [s.name for s in mid.sources] == ["smoltalk", "mmlu", "gsm8k", "identity"]
    src = {s.name: s for s in mid.sources}
    assert (src["smoltalk"].hf, src["smoltalk"].split, src["smoltalk"].format) == ("HuggingFaceTB/smol-smoltalk", "train", "conversation")
    assert (src["mmlu"].hf, src["mmlu"].config, src["mmlu"].split, src["mmlu"].format) == ("cais/mmlu", "all", "auxiliary_train", "mmlu")
    assert (src["gsm8k"].hf, src["gsm8k"].config, src["gsm8k"].format) == ("openai/gsm8k", "main", "gsm8k")
    assert src["identity"].hf is None and src["identity"].repeats == 4 and src["identity"].format == "identity"
    assert Path(src["identity"].path) == REPO / "configs" / "identity.json"
    assert all(s.repeats == 1 for s in mid.sources if s.name != "identity")

    sft = load_mixture("sft")
    assert [s.name for s in sft.sources] == ["arc_easy", "arc_challenge", "gsm8k", "smoltalk", "identity"]
    src = {s.name: s for s in sft.sources}
    assert (src["arc_easy"].hf, src["arc_easy"].config, src["arc_easy"].format) == ("allenai/ai2_arc", "ARC-Easy", "arc")
    assert (src["arc_challenge"].hf, src["arc_challenge"].config) == ("allenai/ai2_arc", "ARC-Challenge")
    assert (src["gsm8k"].hf, src["gsm8k"].config) == ("openai/gsm8k", "main")
    assert src["smoltalk"].hf == "HuggingFaceTB/smol-smoltalk"
    assert src["identity"].repeats == 2 and Path(src["identity"].path) == REPO / "configs" / "identity.json"
    assert mid.seed != sft.seed

    demo = load_mixture("demo")
    assert [(s.name, s.repeats, s.hf) for s in demo.sources] == [("identity", 4, None), ("demo_chat", 1, None)]
    assert demo.sources[1].path == "builtin:demo_chat"  # not resolved against the mixture's folder

    point_at_local(mid, ["mmlu=/data/mmlu/"])
    mmlu = {s.name: s for s in mid.sources}["mmlu"]
    assert (mmlu.path, mmlu.hf, mmlu.config, mmlu.split) == ("/data/mmlu/", None, None, "auxiliary_train")
    assert mmlu.describe() == "local: /data/mmlu/"


def test_shipped_sft_with_every_hub_source_local(planck, chat_files, tmp_path):
    out = tmp_path / "sft"
    redirect = {
        "arc_easy": chat_files["arc"],
        "arc_challenge": chat_files["arc"],
        "gsm8k": chat_files["gsm8k"],
        "smoltalk": chat_files["smoltalk"],
    }
    args = [a for name, p in redirect.items() for a in ("--source-path", f"{name}={p}")]
    proc = planck(*chat_cmd("sft", out, "--val-rows", "5", "--workers", "1", *args))
    assert "sft mixture" in proc.stdout
    m = manifest(out)
    by_name = {s["name"]: s for s in m["sources"]}
    for name, p in redirect.items():
        assert by_name[name]["spec"].startswith(f"local: {p}"), by_name[name]["spec"]
    assert by_name["arc_easy"]["skipped"] == by_name["arc_challenge"]["skipped"] == {"bad_answer_index": 1}
    assert by_name["gsm8k"]["skipped"] == {"no_final_number": 1}
    identity_rows = len(json.loads((REPO / "configs" / "identity.json").read_text()))
    assert by_name["identity"]["rows_read"] == identity_rows and by_name["identity"]["skipped"] == {}
    docs = read_docs(out)
    per_source = Counter(src for split in docs.values() for src, _, _ in split)
    names = [s["name"] for s in m["sources"]]
    assert {names[i]: n for i, n in per_source.items()} == {s["name"]: s["documents"] for s in m["sources"]}
    held_out_identity = sum(1 for src, _, _ in docs["val"] if names[src] == "identity")
    assert by_name["identity"]["documents"] == held_out_identity + 2 * (identity_rows - held_out_identity)
    assert by_name["smoltalk"]["documents"] == 40 and by_name["arc_easy"]["documents"] == 13
    assert m["options"]["job"]["mixture"] == "sft"
    assert planck("shards", "verify", out).stdout.startswith("ok")


GOOD_SOURCE = '[[source]]\nname = "identity"\npath = "{identity}"\nformat = "identity"\n'


@pytest.mark.parametrize(
    "case, toml, words",
    [
        ("unknown top-level key", 'seed = 1\nshuffle = true\n' + GOOD_SOURCE, ["shuffle"]),
        ("unknown source key", GOOD_SOURCE + 'weight = 2\n', ["weight"]),
        ("missing format", '[[source]]\nname = "identity"\npath = "{identity}"\n', ["format", "required"]),
        ("unknown format", '[[source]]\nname = "identity"\npath = "{identity}"\nformat = "chitchat"\n', ["chitchat", "format"]),
        ("hf and path", GOOD_SOURCE + 'hf = "org/data"\n', ["hf", "path"]),
        ("bad repeats", GOOD_SOURCE + 'repeats = 0\n', ["repeats"]),
        ("not toml", "[[source]\nname = ", ["invalid TOML"]),
    ],
)
def test_bad_mixture_file_is_refused(planck, chat_files, tmp_path, case, toml, words):
    path = tmp_path / "bad mix.toml"
    path.write_text(toml.format(identity=chat_files["identity"]))
    out = tmp_path / "out"
    proc = planck(*chat_cmd(path, out, "--workers", "1"), check=False)
    assert proc.returncode == 1, f"{case}: {proc.stdout}{proc.stderr}"
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("planck: error:")
    assert str(path) in proc.stderr
    for w in words:
        assert w in proc.stderr, f"{case}: {proc.stderr}"
    assert not (out / "manifest.json").exists()


@pytest.mark.parametrize(
    "override, words",
    [("nosuch=/tmp/x.parquet", ["nosuch", "has no source", "smoltalk"]), ("smoltalk", ["NAME=PATH"])],
)
def test_bad_source_path_is_refused(planck, tmp_path, override, words):
    proc = planck(*chat_cmd("sft", tmp_path / "out", "--source-path", override, "--workers", "1"), check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in proc.stderr, proc.stderr


def test_missing_mixture_file(planck, tmp_path):
    proc = planck(*chat_cmd(tmp_path / "nope.toml", tmp_path / "out"), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert str(tmp_path / "nope.toml") in proc.stderr and "no such mixture" in proc.stderr


def test_output_does_not_depend_on_workers(planck, mixture_file, tmp_path):
    runs = {}
    for w in (1, 2):
        runs[w] = tmp_path / f"w{w}"
        planck(*chat_cmd(mixture_file, runs[w], "--val-rows", "12", "--shard-tokens", "700", "--workers", w))
    assert len(bins(runs[1])) > 3
    assert bins(runs[1]) == bins(runs[2])
    assert sorted(p.name for p in runs[1].iterdir()) == sorted(p.name for p in runs[2].iterdir())
    assert without_command(manifest(runs[1])) == without_command(manifest(runs[2]))
    # Another seed gives another order of the same documents.
    other = mixture_file.with_name("mix8.toml")
    other.write_text(mixture_file.read_text().replace("seed = 7", "seed = 8"))
    planck(*chat_cmd(other, tmp_path / "seed8", "--val-rows", "12", "--shard-tokens", "700", "--workers", "1"))
    assert bins(tmp_path / "seed8") != bins(runs[1])
    assert sum(s["documents"] for s in manifest(tmp_path / "seed8")["shards"] if s["split"] == "val") == 12


def test_rerun_is_a_noop_and_other_options_are_refused(planck, mixture_file, tmp_path):
    out = tmp_path / "out"
    planck(*chat_cmd(mixture_file, out, "--val-rows", "5", "--workers", "1"))
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    planck(*chat_cmd(mixture_file, out, "--val-rows", "5", "--workers", "1"))
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    proc = planck(*chat_cmd(mixture_file, out, "--val-rows", "6", "--workers", "1"), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "other options" in proc.stderr and str(out) in proc.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


# --- resuming after kill -9 ----------------------------------------------------------------------

BIG_ROWS = 30_000
RESUME_ARGS = ["--val-rows", "200", "--shard-tokens", "4k", "--workers", "1"]


def _run(*args, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "planck.cli", *map(str, args)], cwd=REPO, capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def big_job(tmp_path_factory):
    """A mixture long enough to kill in each phase: a small identity source, then a large conversation parquet."""
    d = tmp_path_factory.mktemp("big")
    rows = [
        {"messages": [
            {"role": "user", "content": f"Question {i}: what is {i} times three?"},
            {"role": "assistant", "content": f"{i} times three is {3 * i}."},
        ]}
        for i in range(BIG_ROWS)
    ]
    pq.write_table(pa.Table.from_pylist(rows), d / "big.parquet")
    mix = d / "big.toml"
    mix.write_text(
        f'seed = 5\n[[source]]\nname = "identity"\npath = "{REPO / "configs" / "identity.json"}"\n'
        f'format = "identity"\nrepeats = 2\n[[source]]\nname = "big"\npath = "{d / "big.parquet"}"\nformat = "conversation"\n'
    )
    ref = d / "ref"
    _run(*chat_cmd(mix, ref, *RESUME_ARGS))
    return mix, ref


def _start(mix: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "planck.cli", *chat_cmd(mix, out, *RESUME_ARGS)]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_when(proc: subprocess.Popen, ready, what: str) -> None:
    deadline = time.monotonic() + 60
    try:
        while not ready():
            assert proc.poll() is None, f"the job ended before {what}"
            assert time.monotonic() < deadline, f"no {what} within 60 s"
            time.sleep(0.002)
        assert proc.poll() is None, f"the job ended before it could be killed during {what}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _listed_shards(out: Path) -> int:
    try:
        return len(json.loads((out / "progress.json").read_text())["shards"])
    except (OSError, ValueError):
        return 0


def _finish_and_compare(mix: Path, out: Path, ref: Path) -> None:
    assert not (out / "manifest.json").exists()
    _run(*chat_cmd(mix, out, *RESUME_ARGS))
    assert bins(out) == bins(ref)
    assert without_command(manifest(out)) == without_command(manifest(ref))
    assert not list(out.rglob("*.tmp"))
    assert not (out / ".work").exists() and not (out / "progress.json").exists()
    assert _run("shards", "verify", out).stdout.startswith("ok")


def test_resume_after_kill_9_while_writing_shards(big_job, tmp_path):
    mix, ref = big_job
    assert len(bins(ref)) > 20
    out = tmp_path / "out"
    _kill_when(_start(mix, out), lambda: _listed_shards(out) >= 2, "the write phase")
    assert 2 <= _listed_shards(out) < len(bins(ref))

    # A damaged intermediate file is a clear error, not a traceback (on a copy of the killed folder).
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    [rendered] = (damaged / ".work").glob("01-*.bin")
    with open(rendered, "r+b") as f:
        f.truncate(rendered.stat().st_size - 64)
    proc = _run(*chat_cmd(mix, damaged, *RESUME_ARGS), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("planck: error:") and str(rendered) in proc.stderr

    # Resume, kill again further on, then finish.
    n = _listed_shards(out)
    _kill_when(_start(mix, out), lambda: _listed_shards(out) >= n + 3, "the resumed write phase")
    _finish_and_compare(mix, out, ref)


def test_resume_after_kill_9_while_rendering(big_job, tmp_path):
    mix, ref = big_job
    out = tmp_path / "out"
    work = out / ".work"
    rendering = work / "01-big.bin.tmp"

    def mid_render() -> bool:
        if (work / "01-big.json").exists():
            raise AssertionError("the large source finished rendering before it could be killed")
        if not rendering.exists():
            return False
        time.sleep(0.2)  # well inside the large source's rendering
        return True

    _kill_when(_start(mix, out), mid_render, "the render phase")
    assert (work / "00-identity.json").exists() and not (work / "01-big.json").exists()
    assert not (out / "progress.json").exists()
    _finish_and_compare(mix, out, ref)


def test_a_table_without_the_formats_columns_is_a_clear_error(tmp_path, planck):
    """A parquet file of the wrong schema is refused up front, naming the source, the missing column and the schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"prompt": ["hi"], "response": ["hello"]}), wrong)
    mix = tmp_path / "m.toml"
    mix.write_text(f'[[source]]\nname = "talk"\npath = "{wrong}"\nformat = "conversation"\n')
    proc = planck("tokenize", "chat", "--mixture", mix, "--out", tmp_path / "out", "--workers", "1", "--quiet", check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert str(wrong) in proc.stderr and "no column messages" in proc.stderr and "prompt" in proc.stderr


def test_builtin_demo_chat_set_is_valid_fixed_and_fits_tiny_windows():
    from planck.schemas.chat_template import render_conversation, to_conversation
    from planck.tokenize.demo_chat import demo_chat_rows
    from planck.tokenize.sources import SourceError, SourceSpec, open_rows

    rows = list(demo_chat_rows())
    assert len(rows) >= 300 and rows == list(demo_chat_rows())  # the same rows, in the same order, every time
    lengths = [len(render_conversation(to_conversation("conversation", r))[0]) for r in rows]
    assert max(lengths) <= 80 and sorted(lengths)[len(lengths) // 2] <= 32  # most fit the tiny preset's 64-token windows
    texts = [m["content"] for r in rows for m in r["messages"]]
    assert any(t.endswith(" = 42.") for t in texts) and any("Python" in t for t in texts)
    assert list(open_rows(SourceSpec("d", "conversation", path="builtin:demo_chat"))) == rows
    with pytest.raises(SourceError, match="unknown built-in set 'builtin:nope'"):
        open_rows(SourceSpec("d", "conversation", path="builtin:nope"))


# --- labels, sources that keep nothing, folders, offline ------------------------------------------


def _mix(tmp_path: Path, path, fmt: str = "conversation", name: str = "talk") -> Path:
    mix = tmp_path / f"{name}.toml"
    mix.write_text(f'[[source]]\nname = "{name}"\npath = "{path}"\nformat = "{fmt}"\n')
    return mix


def _turns(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Reply {i}."}]


def test_kto_rows_marked_undesirable_are_skipped_and_counted(planck, tmp_path):
    rows = [{"messages": _turns(i), "label": i % 3 != 0} for i in range(9)] + [{"messages": _turns(9)}]
    src = tmp_path / "kto.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    proc = planck(*chat_cmd(_mix(tmp_path, src), out, "--workers", "1"))
    [entry] = manifest(out)["sources"]
    assert entry["rows_read"] == 10 and entry["documents"] == 7
    assert entry["skipped"] == {"undesirable_label": 3}
    assert "undesirable_label 3" in proc.stdout
    enc = gpt2()
    replies = {enc.decode(ids[(roles == ASSISTANT) & (ids < EOT)].tolist()) for split in read_docs(out).values() for _, ids, roles in split}
    assert replies == {f"Reply {i}." for i in (1, 2, 4, 5, 7, 8, 9)}, "only the wanted replies are trained on"


def test_a_chat_run_that_keeps_nothing_fails_and_leaves_no_folder(planck, tmp_path):
    src = tmp_path / "unanswered.jsonl"
    src.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"hi {i}"}]}) + "\n" for i in range(5)))
    out = tmp_path / "out"
    proc = planck(*chat_cmd(_mix(tmp_path, src), out, "--workers", "1"), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "'talk'" in proc.stderr and "kept no rows" in proc.stderr and "no_final_assistant 5" in proc.stderr
    assert not out.exists(), "nothing was written, so the folder the job made is gone"


def test_a_json_list_without_the_formats_column_is_refused(planck, tmp_path):
    src = tmp_path / "pairs.json"
    src.write_text(json.dumps([{"prompt": "hi", "completion": "hello"}] * 4))
    proc = planck(*chat_cmd(_mix(tmp_path, src), tmp_path / "out", "--workers", "1"), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"planck: error: {src}: no column messages (it has prompt, completion); a conversation source")
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"question": ["q"]}), wrong)
    proc = planck(*chat_cmd(_mix(tmp_path, wrong, "arc"), tmp_path / "out", "--workers", "1"), check=False)
    assert "an arc source has this schema" in proc.stderr


def test_a_folder_source_path_reads_every_file_type(planck, tmp_path, chat_files):
    d = tmp_path / "smol"
    d.mkdir()
    shutil.copy(chat_files["smoltalk"], d / "part-a.parquet")  # 40 good rows, 3 bad
    (d / "part-b.jsonl").write_text("".join(json.dumps({"messages": _turns(100 + i)}) + "\n" for i in range(5)))
    out = tmp_path / "out"
    # With the bars: rows are whole numbers.
    proc = planck("tokenize", "chat", "--mixture", "sft", "--out", out, "--workers", "1", "--source-path", f"smoltalk={d}/",
                  *[a for n in ("arc_easy", "arc_challenge") for a in ("--source-path", f"{n}={chat_files['arc']}")],
                  "--source-path", f"gsm8k={chat_files['gsm8k']}")
    by_name = {s["name"]: s for s in manifest(out)["sources"]}
    assert by_name["smoltalk"]["rows_read"] == 48 and by_name["smoltalk"]["documents"] == 45
    assert re.search(r"render smoltalk: 100%.* 48/48 ", proc.stderr.replace("\r", "\n")), proc.stderr  # ran out before max_rows
    assert not re.search(r"\d\.\drow", proc.stderr)


def test_eval_reads_the_test_split_of_a_hub_like_folder(tmp_path, chat_files):
    from planck.eval.sources import source_spec
    from planck.tokenize.sources import open_rows

    d = tmp_path / "ARC-Easy"
    d.mkdir()
    shutil.copy(chat_files["arc"] / "train-00000-of-00001.parquet", d)
    test_rows = [{"id": f"t{i}", "question": f"Test question {i}?", "answerKey": "A",
                  "choices": {"text": ["yes", "no"], "label": ["A", "B"]}} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(test_rows[:2]), d / "test-00000-of-00001.parquet")
    (d / "test-00001-of-00001.jsonl").write_text(json.dumps(test_rows[2]) + "\n")
    rows = list(open_rows(source_spec("arc_easy", str(d))))
    assert [r["id"] for r in rows] == ["t0", "t1", "t2"], "the test split, every file type, no training rows"


def test_offline_hub_fails_fast_and_suggests_source_path(planck, tmp_path):
    out = tmp_path / "out"
    started = time.monotonic()
    proc = planck(*chat_cmd("sft", out, "--workers", "1"), check=False, env={**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert time.monotonic() - started < 12, "no half-minute of retries"
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "cannot reach the Hugging Face hub" in proc.stderr and "--source-path arc_easy=PATH" in proc.stderr
    assert not out.exists()
