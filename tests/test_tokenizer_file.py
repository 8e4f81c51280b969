"""GPT-2's rank file is found without set-up: `planck` run directly, outside make, offline."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from planck.schemas import tokenizer
from conftest import REPO

SHARED_BPE = REPO.parent / "shared" / "tokenizer" / "r50k_base.tiktoken"


def _env_without_cache(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR", tokenizer.BPE_FILE_ENV)}
    return {**env, **extra}


def test_planck_run_directly_finds_the_projects_copy(tmp_path):
    """No TIKTOKEN_CACHE_DIR, another working directory: the tokenizer job still runs offline."""
    out = tmp_path / "shards"
    proc = subprocess.run(
        [sys.executable, "-m", "planck.cli", "tokenize", "pretrain", "--source", "embedded", "--out", str(out),
         "--max-tokens", "3k", "--val-tokens", "1k", "--workers", "1", "--quiet"],
        cwd=tmp_path, env=_env_without_cache(TMPDIR=str(tmp_path)), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "manifest.json").exists()


@pytest.mark.skipif(not SHARED_BPE.exists(), reason="needs ../shared/tokenizer/r50k_base.tiktoken")
def test_a_named_file_is_used_and_checked(tmp_path):
    """PLANCK_BPE_FILE names the copy; a file with the wrong hash is refused with its path, in one line."""
    code = "from planck.schemas.tokenizer import tokenizer_fingerprint as f; print(f().hex())"
    good = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env=_env_without_cache(PLANCK_BPE_FILE=str(SHARED_BPE)))
    assert good.returncode == 0 and good.stdout.strip() == tokenizer.tokenizer_fingerprint().hex()

    bad = tmp_path / "r50k_base.tiktoken"
    bad.write_bytes(SHARED_BPE.read_bytes()[:-100])
    proc = subprocess.run([sys.executable, "-m", "planck.cli", "tokenize", "pretrain", "--source", "embedded",
                           "--out", str(tmp_path / "s"), "--quiet"], cwd=tmp_path, capture_output=True, text=True,
                          env=_env_without_cache(PLANCK_BPE_FILE=str(bad)))
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert str(bad) in proc.stderr and "sha256" in proc.stderr


def test_no_copy_and_no_download_says_what_to_do(monkeypatch, tmp_path):
    """Offline with no copy anywhere: the error lists where it looked and the variable that fixes it."""
    def offline(name):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(tokenizer, "bpe_file_candidates", lambda: [tmp_path / "missing.tiktoken"])
    monkeypatch.setattr(tokenizer.tiktoken, "get_encoding", offline)
    tokenizer.get_tokenizer.cache_clear()
    try:
        with pytest.raises(tokenizer.TokenizerUnavailable) as exc:
            tokenizer.get_tokenizer()
    finally:
        tokenizer.get_tokenizer.cache_clear()
    message = str(exc.value)
    assert "missing.tiktoken" in message and "PLANCK_BPE_FILE=" in message and "ConnectionError" in message
