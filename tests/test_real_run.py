"""The real-run commands on the CPU path: `planck speedrun` end to end (tiny, embedded data, resumable) and
`make gpu-check`'s script at the tiny shape (so it cannot rot while no GPU runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PINNED_JAX = next(d for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
                  if d.startswith("jax==")).split("==")[1]


def planck(*args, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "planck.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=1200)
    if check and proc.returncode:
        raise AssertionError(f"planck {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def test_speedrun_runs_every_phase_and_a_rerun_continues_without_redoing(tmp_path):
    args = ["speedrun", "--config", "tiny", "--source", "embedded", "--shards", tmp_path / "shards", "--runs",
            tmp_path / "runs", "--workers", "1", "--set", "train.steps=3", "--set", "train.eval_batches=1",
            "--set", "train.log_every=1"]
    first = planck(*args)
    assert "no estimate" in first.stdout  # a CPU has no known peak: said, not guessed
    for phase in ("pretrain", "midtrain", "sft"):
        assert (tmp_path / "runs" / phase / "final" / "model.json").is_file()
        assert json.loads((tmp_path / "runs" / phase / "eval.json").read_text())["tasks"]["bpb"]["value"] > 0
    assert (tmp_path / "runs" / "report.md").is_file()
    midtrain = json.loads((tmp_path / "runs" / "midtrain" / "final" / "model.json").read_text())
    assert midtrain["init_from"] == str(tmp_path / "runs" / "pretrain")
    stamp = (tmp_path / "runs" / "sft" / "final" / "model.json").stat().st_mtime_ns
    evaluated = (tmp_path / "runs" / "sft" / "eval.json").read_bytes()
    (tmp_path / "runs" / "midtrain" / "eval.json").unlink()  # as if the first run stopped while evaluating midtrain
    again = planck(*args)
    assert again.stdout.count("already finished: nothing to do") == 3
    assert again.stdout.count("already evaluated (eval.json is newer than the final weights)") == 2
    assert json.loads((tmp_path / "runs" / "midtrain" / "eval.json").read_text())["tasks"]["bpb"]["value"] > 0
    assert (tmp_path / "runs" / "sft" / "final" / "model.json").stat().st_mtime_ns == stamp
    assert (tmp_path / "runs" / "sft" / "eval.json").read_bytes() == evaluated


def test_speedrun_refuses_the_real_config_on_a_cpu(tmp_path):
    proc = planck("speedrun", "--config", "planck150m", "--shards", tmp_path, "--runs", tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("planck: error: speedrun --config planck150m on a CPU")


def test_gpu_check_runs_at_the_tiny_shape_on_a_cpu_and_writes_its_json(tmp_path):
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--out", str(tmp_path), "--train-steps", "10",
                           "--step-repeats", "2"], cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["config"] == "tiny" and result["doctor"]["backend"] == "cpu"
    for remat in ("remat_False", "remat_True"):
        step = result["step"][remat]
        assert step["tokens_per_s"] > 0 and step["compile_s"] > 0 and step["peak_rss_bytes"] > 0
    assert result["training"]["steps"] == 10 and result["training"]["loss_fell"]
    assert result["decode"]["decode_tok_s_batch1"] > 0 and result["decode"]["ttft_s"] > 0
    assert "gpu-check: tiny on 1 x cpu" in proc.stdout and "flash attention: not on a GPU" in proc.stdout


def test_doctor_warns_of_a_release_other_than_the_pinned_one_and_refuses_a_missing_one(tmp_path, monkeypatch, capsys):
    import argparse
    from importlib.metadata import PackageNotFoundError, version

    from planck import doctor

    def machine(name):  # an image with its own jax build, and no grain
        if name == "grain":
            raise PackageNotFoundError(name)
        return "0.11.2" if name == "jax" else version(name)

    monkeypatch.setattr(doctor, "version", machine)
    args = argparse.Namespace(shards=tmp_path, runs=tmp_path, dtype="bfloat16", json=False)
    assert doctor._doctor(args) == 1
    err = capsys.readouterr().err.splitlines()
    assert f"planck doctor: warning: jax 0.11.2 is installed, the tests ran on {PINNED_JAX} (make install pins it)" in err
    assert "planck doctor: problem: grain is not installed (make install)" in err
    monkeypatch.setattr(doctor, "version", lambda name: "0.11.2" if name == "jax" else version(name))
    monkeypatch.setattr(doctor, "MIN_FREE_GB", {"shards": 0.0, "runs": 0.0})  # whatever this disk holds
    info = doctor.diagnose(tmp_path, tmp_path, "bfloat16")
    assert info["warnings"] == [f"jax 0.11.2 is installed, the tests ran on {PINNED_JAX} (make install pins it)"]
    assert info["problems"] == [] and doctor._doctor(args) == 0  # a drifted release alone stops nothing


def test_make_install_accel_names_the_pinned_cuda_jax_and_refuses_an_unknown_accelerator():
    dry = subprocess.run(["make", "-n", "-B", "install", "ACCEL=cuda12"], cwd=REPO, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert f'pip install --quiet "jax[cuda12]=={PINNED_JAX}"' in dry.stdout
    bad = subprocess.run(["make", "install", "ACCEL=cuda"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "make: ACCEL=cuda is not one of: cpu cuda12 cuda13" in bad.stderr
    assert "pip" not in bad.stdout  # refused before anything was installed
    assert subprocess.run(["make", "help", "ACCEL=cuda"], cwd=REPO, capture_output=True).returncode == 0


def test_gpu_check_keeps_the_figures_of_the_parts_that_ran_when_one_fails(tmp_path, monkeypatch, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    works = []

    def step(config, remat, out, steps):
        return {"tokens_per_s": 1000.0 + remat, "step_s": 0.5, "compile_s": 2.0, "peak_rss_bytes": 1e9}

    def training(config, work, steps):
        works.append(work)
        assert work.is_dir() and not work.is_relative_to(tmp_path / "out")
        raise gpu_check.PartFailed("`planck train pretrain` failed with exit code 1: planck: error: out of memory")

    decoded = []
    monkeypatch.setattr(gpu_check, "step_figures", step)
    monkeypatch.setattr(gpu_check, "training_figures", training)
    monkeypatch.setattr(gpu_check, "decode_figures", lambda *a: decoded.append(a))
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--out", str(tmp_path / "out")])
    assert gpu_check.run() == 1
    result = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert result["step"]["remat_True"]["tokens_per_s"] == 1001.0 and result["training"] is None
    assert result["failed"] == [{"part": "training", "error": "PartFailed: `planck train pretrain` failed with exit "
                                                               "code 1: planck: error: out of memory"}]
    assert decoded == [] and not works[0].exists()  # no decoding without a run; the work folder removed
    printed = capsys.readouterr().out
    assert "train step 4 x seq, remat:    1,001 tok/s" in printed and "FAILED training: PartFailed" in printed


def test_speedrun_refuses_bad_settings_before_tokenizing_anything(tmp_path):
    proc = planck("speedrun", "--config", "tiny", "--source", "embedded", "--shards", tmp_path / "shards",
                  "--runs", tmp_path / "runs", "--set", "optim.adam_b2=1.5", check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == "planck: error: optim.adam_b2 = 1.5 must be within [0, 1)"
    assert sorted(tmp_path.iterdir()) == [] and "tokenize" not in proc.stdout


def test_a_card_the_table_does_not_know_gets_its_peak_from_planck_peak_tflops(tmp_path, monkeypatch):
    import jax

    from planck.model.config import ConfigError
    from planck.train.devices import peak_flops

    monkeypatch.delenv("PLANCK_PEAK_TFLOPS", raising=False)
    assert peak_flops() is None  # a CPU: no estimate, no MFU
    monkeypatch.setenv("PLANCK_PEAK_TFLOPS", "45")
    assert peak_flops() == 45e12 * jax.device_count()
    for bad in ("fast", "-3", "nan", "0"):
        monkeypatch.setenv("PLANCK_PEAK_TFLOPS", bad)
        with pytest.raises(ConfigError, match=f"PLANCK_PEAK_TFLOPS='{bad}': give one device's dense bf16 peak"):
            peak_flops()
    proc = subprocess.run([sys.executable, "-m", "planck.cli", "plan", "--config", "tiny", "--no-search", "--json",
                           "--tokens", "1M"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PLANCK_PEAK_TFLOPS": "2"})
    plan = json.loads(proc.stdout)
    assert plan["peak_flops"] == 2e12 and plan["hours"] == pytest.approx(
        plan["steps"] * plan["tokens_per_step"] * plan["flops_per_token"] / (plan["mfu"] * 2e12) / 3600)
    bad = subprocess.run([sys.executable, "-m", "planck.cli", "plan", "--config", "tiny", "--no-search"], cwd=REPO,
                         capture_output=True, text=True, timeout=300, env={**os.environ, "PLANCK_PEAK_TFLOPS": "lots"})
    assert bad.returncode == 1 and bad.stderr.strip().startswith("planck: error: PLANCK_PEAK_TFLOPS='lots'")
    doctor = subprocess.run([sys.executable, "-m", "planck.cli", "doctor", "--json"], cwd=REPO, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PLANCK_PEAK_TFLOPS": "2"})
    assert json.loads(doctor.stdout)["peak_tflops"] == 2.0 * jax.device_count()


def test_speedrun_with_a_budget_tokenizes_and_trains_that_budget():
    import argparse

    from planck.speedrun import steps

    args = argparse.Namespace(workers=2, shards=Path("shards"), runs=Path("runs"), source="hub", config="planck150m",
                              tokens="100M", overrides=["train.log_every=5"])
    plan = dict(steps(args))
    assert plan["tokenize pretrain"][-2:] == ["--max-tokens", "100M"]
    assert plan["train pretrain"][-4:] == ["--set", "train.log_every=5", "--set", "train.tokens=100M"]
    assert "train.tokens=100M" not in plan["train midtrain"] and "--max-tokens" not in plan["tokenize sft"]
    args.tokens = None
    assert "--max-tokens" not in dict(steps(args))["tokenize pretrain"]


def test_speedrun_evaluates_again_when_the_weights_are_newer_or_a_task_is_missing(tmp_path):
    from planck.speedrun import already_evaluated

    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "model.json").write_text("{}")
    tasks = ["bpb", "sample"]
    assert not already_evaluated(run, tasks)  # no eval.json yet
    (run / "eval.json").write_text(json.dumps({"tasks": {"bpb": {}, "sample": {}}}))
    assert already_evaluated(run, tasks)
    assert not already_evaluated(run, [*tasks, "mmlu"])  # a task it has not scored
    later = (run / "eval.json").stat().st_mtime_ns + 10**9
    os.utime(run / "final" / "model.json", ns=(later, later))  # retrained after the eval
    assert not already_evaluated(run, tasks)
    (run / "eval.json").write_text("{damaged")
    assert not already_evaluated(run, tasks)
