"""Shared test set-up: GPT-2's BPE from ../shared/tokenizer, tiny datasets of every schema, CLI runners."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_BPE = REPO.parent / "shared" / "tokenizer" / "r50k_base.tiktoken"
BPE_CACHE_NAME = "0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4"  # sha1 of tiktoken's r50k_base URL


def pytest_configure(config):
    """Offline machines: point tiktoken's cache at ../shared/tokenizer unless the caller already set one."""
    cache = os.environ.get("TIKTOKEN_CACHE_DIR")
    if cache and (Path(cache) / BPE_CACHE_NAME).exists():
        return
    if SHARED_BPE.exists():
        cache_dir = REPO / ".cache" / "tiktoken"
        cache_dir.mkdir(parents=True, exist_ok=True)
        if not (cache_dir / BPE_CACHE_NAME).exists():
            shutil.copy(SHARED_BPE, cache_dir / BPE_CACHE_NAME)
        os.environ["TIKTOKEN_CACHE_DIR"] = str(cache_dir)


def run_planck(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run the `planck` command in a fresh process, from the repository root, as the README does."""
    proc = subprocess.run(
        [sys.executable, "-m", "planck.cli", *map(str, args)],
        cwd=kw.pop("cwd", REPO), capture_output=True, text=True, **kw,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"planck {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def planck():
    """The run_planck helper, as a fixture."""
    return run_planck


def conversation(i: int, system: bool = False) -> list[dict]:
    msgs = [{"role": "system", "content": "Be brief."}] if system else []
    return msgs + [
        {"role": "user", "content": f"What is {i} plus one?"},
        {"role": "assistant", "content": f"{i} plus one is {i + 1}."},
    ]


@pytest.fixture
def chat_files(tmp_path) -> dict[str, Path]:
    """Small local files of every chat schema, each with a few bad rows of known kinds."""
    d = tmp_path / "chat_sources"
    d.mkdir()
    smol = [{"messages": conversation(i, system=i % 5 == 0)} for i in range(40)]
    smol += [
        {"messages": []},  # empty_conversation
        {"messages": [{"role": "user", "content": "hello?"}]},  # no_final_assistant
        {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]},  # unknown_role
    ]
    pq.write_table(pa.Table.from_pylist(smol), d / "smoltalk.parquet")
    mmlu_rows = [
        {"question": f"Which letter is number {i}?", "subject": "abstract_algebra", "choices": ["w", "x", "y", "z"], "answer": i % 4}
        for i in range(20)
    ]
    mmlu_rows.append({"question": "Broken?", "subject": "x", "choices": ["a", "b"], "answer": 7})  # bad_answer_index
    with open(d / "mmlu.jsonl", "w") as f:
        for r in mmlu_rows:
            f.write(json.dumps(r) + "\n")
    # The older `auxiliary_train` config nests every field under `train`.
    with open(d / "mmlu_nested.jsonl", "w") as f:
        for r in mmlu_rows[:10]:
            f.write(json.dumps({"train": r}) + "\n")
    gsm = [
        {"question": f"Ann has {i} pens and buys 2 more. How many?", "answer": f"Ann has {i}+2=<<{i}+2={i + 2}>>{i + 2} pens.\n#### {i + 2}"}
        for i in range(15)
    ]
    gsm.append({"question": "No final line?", "answer": "about four"})  # no_final_number
    with open(d / "gsm8k.jsonl", "w") as f:
        for r in gsm:
            f.write(json.dumps(r) + "\n")
    arc_dir = d / "arc_easy"
    arc_dir.mkdir()
    arc = [
        {"id": f"a{i}", "question": f"Pick option {i}.", "choices": {"text": ["red", "green", "blue", "cyan"], "label": ["A", "B", "C", "D"]}, "answerKey": "ABCD"[i % 4]}
        for i in range(12)
    ]
    arc += [{"id": "n1", "question": "Numbered labels?", "choices": {"text": ["one", "two", "three"], "label": ["1", "2", "3"]}, "answerKey": "3"}]
    arc += [{"id": "bad", "question": "Bad key?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "E"}]
    # A folder laid out like a hub repository: loaded by `datasets` exactly as the hub would be.
    pq.write_table(pa.Table.from_pylist(arc), arc_dir / "train-00000-of-00001.parquet")
    identity = [conversation(100 + i) for i in range(6)] + [[{"role": "user", "content": "unanswered"}]]
    (d / "identity.json").write_text(json.dumps(identity))
    return {
        "smoltalk": d / "smoltalk.parquet",
        "mmlu": d / "mmlu.jsonl",
        "mmlu_nested": d / "mmlu_nested.jsonl",
        "gsm8k": d / "gsm8k.jsonl",
        "arc": arc_dir,
        "identity": d / "identity.json",
    }


@pytest.fixture
def mixture_file(tmp_path, chat_files) -> Path:
    """A mixture TOML over the local chat files (all formats, repeats on identity)."""
    p = tmp_path / "mix.toml"
    p.write_text(
        f"""
seed = 7
[[source]]
name = "smoltalk"
path = "{chat_files['smoltalk']}"
format = "conversation"
[[source]]
name = "mmlu"
path = "{chat_files['mmlu']}"
format = "mmlu"
max_rows = 15
[[source]]
name = "mmlu_aux"
path = "{chat_files['mmlu_nested']}"
format = "mmlu"
[[source]]
name = "gsm8k"
path = "{chat_files['gsm8k']}"
format = "gsm8k"
[[source]]
name = "arc"
path = "{chat_files['arc']}"
format = "arc"
[[source]]
name = "identity"
path = "{chat_files['identity']}"
format = "identity"
repeats = 3
"""
    )
    return p


@pytest.fixture
def text_corpus(tmp_path) -> Path:
    """A local Fineweb-edu-shaped parquet folder of real prose (standard-library docstrings), with bad rows."""
    from planck.tokenize.embedded import embedded_rows

    rows = []
    for i, r in enumerate(embedded_rows()):
        if i >= 160:
            break
        rows.append({"text": r["text"], "id": r["id"], "url": f"https://example.org/{i}", "score": 3.0})
    rows[5]["text"] = ""  # empty
    rows[9]["text"] = None  # null
    d = tmp_path / "corpus"
    d.mkdir()
    half = len(rows) // 2
    pq.write_table(pa.Table.from_pylist(rows[:half]), d / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(rows[half:]), d / "train-00001-of-00002.parquet")
    return d


@pytest.fixture(scope="module")
def module_inputs(tmp_path_factory) -> dict[str, Path]:
    """text_corpus, chat_files and mixture_file built once per test module (for folders built once, then shared)."""
    base = tmp_path_factory.mktemp("inputs")
    raw = lambda fixture: getattr(fixture, "__wrapped__", fixture)  # the plain function under @pytest.fixture
    files = raw(chat_files)(base)
    return {"text_corpus": raw(text_corpus)(base), "chat_files": files, "mixture_file": raw(mixture_file)(base, files)}


# ---- finished models for the serving tests -------------------------------------------------

SERVE_MODEL = {"seq_len": 128, "n_layer": 2, "d_model": 64, "n_head": 2, "n_kv_head": 1, "head_dim": 32,
               "compute_dtype": "float32"}


def write_checkpoint(run_dir: Path, chat: bool, seed: int = 0) -> Path:
    """A run folder with final/ as `planck train` writes it, holding random (not zero-initialised) weights.

    Every matrix is drawn at random so attention and every block shape the output; the serving
    tests only need shapes and determinism, not a good model.
    """
    import dataclasses

    import jax
    import numpy as np
    from flax import nnx

    from planck.model.config import ModelConfig
    from planck.model.gpt import GPT
    from planck.model.weights import save_final
    from planck.schemas.tokenizer import TOKENIZER_NAME, tokenizer_fingerprint

    cfg = ModelConfig(**SERVE_MODEL)
    model = GPT(cfg, rngs=nnx.Rngs(seed))
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree_util.tree_flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [jax.random.normal(k, x.shape) / np.sqrt(x.shape[0]) for k, x in zip(keys, leaves)]
    nnx.update(model, jax.tree_util.tree_unflatten(treedef, leaves))
    meta = {
        "phase": "sft" if chat else "pretrain", "step": 0, "model": dataclasses.asdict(cfg),
        "parameters": sum(x.size for x in leaves),
        "tokenizer": {"name": TOKENIZER_NAME, "fingerprint": tokenizer_fingerprint().hex()},
        "chat": chat,
    }
    save_final(run_dir / "final", model, meta)
    return run_dir


@pytest.fixture(scope="session")
def chat_checkpoint(tmp_path_factory) -> Path:
    """A run folder (runs/chat) whose final/ is a tiny random-weight chat model (context 128)."""
    return write_checkpoint(tmp_path_factory.mktemp("runs") / "chat", chat=True)


@pytest.fixture(scope="session")
def base_checkpoint(tmp_path_factory) -> Path:
    """A run folder (runs/base) whose final/ is a tiny random-weight base (pretrain-only) model."""
    return write_checkpoint(tmp_path_factory.mktemp("runs") / "base", chat=False, seed=1)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A running `planck serve`: its base URL and the log file of its output."""

    def __init__(self, url: str, log: Path):
        self.url, self.log = url, log


@pytest.fixture(scope="session")
def chat_server(chat_checkpoint, tmp_path_factory):
    """One `planck serve` process on the tiny chat model (4 slots), shared by the HTTP and browser tests."""
    import time

    import httpx

    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "planck.cli", "serve", "--checkpoint", str(chat_checkpoint),
             "--port", str(port), "--slots", "4"],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy(),
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"planck serve exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"planck serve did not answer /health within 120 s:\n{log.read_text()}")
            time.sleep(0.2)
        yield ServerProcess(url, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
