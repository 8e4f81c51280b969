"""A full disk: one clear line naming the path and the free space, nothing half-written accepted, and a re-run after
freeing space finishes as if nothing happened. Uses a small tmpfs (needs root and mount rights; skipped otherwise)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from planck_testing import bins, without_command

REPO = Path(__file__).resolve().parents[1]


def planck(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "planck.cli", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture()
def small_fs(tmp_path):
    """A mount point with a tiny tmpfs; `resize(size)` gives it more room (freeing space, as a user would)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()})")

    def resize(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)

    try:
        yield mnt, resize
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


TOKENIZE = ["tokenize", "pretrain", "--source", "embedded", "--max-tokens", "400k", "--val-tokens", "20k",
            "--shard-tokens", "100k", "--workers", "1", "--quiet"]


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.startswith("planck: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_tokenize_into_a_full_disk_then_resume_byte_identical(small_fs, tmp_path):
    mnt, resize = small_fs
    reference = tmp_path / "reference"
    assert planck(*TOKENIZE, "--out", reference).returncode == 0
    out = mnt / "shards"
    line = one_error_line(planck(*TOKENIZE, "--out", out))
    assert "no space left on device" in line and str(mnt) in line and "MB free" in line
    assert not (out / "manifest.json").exists()  # nothing half-written is taken for done
    resize("20m")
    assert planck(*TOKENIZE, "--out", out).returncode == 0
    assert bins(out) == bins(reference)
    assert without_command(json.loads((out / "manifest.json").read_text())) == without_command(
        json.loads((reference / "manifest.json").read_text()))


def test_a_checkpoint_save_into_a_full_disk_is_one_line_and_the_run_resumes(small_fs, tmp_path):
    mnt, resize = small_fs
    data = tmp_path / "shards"
    assert planck("tokenize", "pretrain", "--source", "embedded", "--out", data, "--max-tokens", "60k",
                  "--val-tokens", "4k", "--shard-tokens", "30k", "--workers", "1", "--quiet").returncode == 0
    steps = ["--config", "tiny", "--quiet", "--data", data, "--set", "train.steps=8", "--set", "train.log_every=1",
             "--set", "train.checkpoint_every=4", "--set", "train.eval_every=100"]
    reference = tmp_path / "reference"
    assert planck("train", "pretrain", *steps, "--run-dir", reference).returncode == 0
    resize("2m")  # room for config.json and metrics, not for a checkpoint (tens of MB)
    run = mnt / "run"
    line = one_error_line(planck("train", "pretrain", *steps, "--run-dir", run))
    assert "no space left on device" in line and "MB free" in line and str(mnt) in line
    resize("1g")
    assert planck("train", "pretrain", *steps, "--run-dir", run).returncode == 0
    losses = lambda d: [(r["step"], r["loss"]) for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]
    assert losses(run) == losses(reference)
