"""The trainer end to end on the tiny preset (CPU): config strictness, optimizer routing, exact resume after kill -9,
fallback from a damaged checkpoint, multi-device equality, --init-from and export."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from planck_testing import embedded_shards

REPO = Path(__file__).resolve().parents[1]

TINY = ["--config", "tiny", "--quiet"]


def planck_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "planck.cli", *map(str, args)]


def run(*args, env=None, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(planck_cmd(*args), cwd=REPO, capture_output=True, text=True, env=env)
    if check and proc.returncode:
        raise AssertionError(f"{args} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def losses(run_dir: Path) -> list[tuple[int, float, float]]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [(r["step"], r["loss"], r["grad_norm"]) for r in rows]


@pytest.fixture(scope="module")
def pretrain_shards(tmp_path_factory) -> Path:
    return embedded_shards(tmp_path_factory.mktemp("shards") / "pretrain", "60k", "4k", "30k")


STEPS = ["--set", "train.steps=16", "--set", "train.log_every=1", "--set", "train.checkpoint_every=4",
         "--set", "train.eval_every=8", "--set", "train.eval_batches=2"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, pretrain_shards) -> Path:
    """An uninterrupted 16-step tiny pretraining run."""
    d = tmp_path_factory.mktemp("runs") / "reference"
    run("train", "pretrain", *TINY, "--data", pretrain_shards, "--run-dir", d, *STEPS)
    return d


def test_unknown_config_key_and_wrong_type_are_clear_errors(pretrain_shards, tmp_path):
    proc = run("train", "pretrain", *TINY, "--data", pretrain_shards, "--run-dir", tmp_path / "r",
               "--set", "train.stepz=3", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "unknown config key 'train.stepz'" in proc.stderr
    proc = run("train", "pretrain", *TINY, "--data", pretrain_shards, "--run-dir", tmp_path / "r",
               "--set", "train.steps=many", check=False)
    assert proc.returncode == 1 and "train.steps" in proc.stderr and "Traceback" not in proc.stderr


def test_presets_and_phase_defaults():
    from planck.train.config import load_config

    big = load_config("planck150m", "pretrain")
    m = big.model
    assert (m.n_layer, m.d_model, m.n_head, m.n_kv_head, m.head_dim, m.seq_len, m.vocab_size) == (12, 768, 6, 1, 128, 1024, 50304)
    assert big.train.micro_batch * big.train.grad_accum == 512
    assert (big.optim.muon_lr, big.optim.adam_lr, big.train.steps, big.optim.stable_fraction) == (0.06, 0.008, 5277, 0.55)
    assert (big.optim.adam_b1, big.optim.adam_b2, big.optim.clip_norm) == (0.65, 0.95, 1.0)
    mid = load_config("planck150m", "midtrain")
    assert (mid.train.steps, mid.optim.stable_fraction) == (797, 0.8)
    sft = load_config("planck150m", "sft", ["train.steps=7"])
    assert (sft.optim.muon_lr, sft.optim.adam_lr, sft.train.steps, sft.optim.final_lr_fraction) == (0.0012, 0.00016, 7, 0.0)


def test_lr_schedule_is_stable_then_linear():
    from planck.train.optim import lr_schedule

    s = lr_schedule(1.0, 100, 0.55, 0.1)
    assert float(s(0)) == 1.0 and float(s(55)) == 1.0
    assert float(s(99)) == pytest.approx(0.1, abs=1e-6)
    assert float(s(77)) == pytest.approx(1.0 - 0.9 * (77 - 55) / 44, abs=1e-6)


def test_the_progress_bar_leaves_the_compiling_step_out_of_its_rate_and_time_left(tmp_path):
    """Step 1 (XLA compilation) took 29.26 s, the others 0.5 s: the bar never shows 29.26 s/step nor hours left."""
    import io

    from planck.train.progress import StepBar

    clock = [1000.0]
    for start in (0, 50):  # a fresh run, and a resumed one (its first step in this process compiles again)
        out = io.StringIO()
        bar = StepBar(total=200, initial=start, desc="train pretrain", unit="step", file=out, mininterval=0)
        bar._time = lambda: clock[0]
        bar.start_t = bar.last_print_t = clock[0]
        assert "compiling the train step" in str(bar)
        clock[0] += 29.26
        bar.update(1)
        shown = str(bar)
        assert bar.n == start + 1 and bar.format_dict["rate"] is None
        assert "<?, ?step/s" in shown and "first step 29.3s (compiling)" in shown and "29.26s/step" not in shown
        for _ in range(3):
            clock[0] += 0.5
            bar.update(1)
        left = (200 - start - 4) * 0.5  # at 2 steps/s, from the compiled steps alone
        assert bar.format_dict["rate"] == pytest.approx(2.0)
        assert f"<{bar.format_interval(left)}, " in str(bar) and "2.00step/s" in str(bar)
        assert bar.format_dict["elapsed"] == pytest.approx(30.76)  # the elapsed time still counts the compilation
        clock[0] += 2.0  # the last step evaluates and checkpoints: the closing average says so, from step 2 on
        bar.update(1)
        bar.close()
        final = out.getvalue().split("\r")[-1]
        assert f"{start + 5}/200 [00:32<" in final and "1.14step/s" in final  # 4 steps in 0.5 * 3 + 2 s
    done = StepBar(total=200, initial=200, file=io.StringIO())  # a finished run re-run: nothing compiles
    assert "compiling" not in str(done)
    done.close()
    quiet = StepBar(total=3, disable=True)  # --quiet: nothing is counted or drawn
    quiet.update(1)
    quiet.update(1)
    quiet.close()

    # The step loop's bar: the first logged step shows its compile time, not a rate made of it.
    from planck.schemas.run_folder import RunFolder
    from planck.train.config import load_config
    from planck.train.metrics_log import MetricsLog

    cfg = load_config("tiny", "pretrain", ["train.steps=3", "train.log_every=1"])
    run_folder = RunFolder(tmp_path / "run")
    run_folder.root.mkdir()
    with MetricsLog(cfg, run_folder, "pretrain", 512, 0, is_main=True, show_progress=True) as log:
        postfixes = []
        for step in (1, 2):
            log.meter.step_done(log.meter.step_started())
            log.step(step, 10.0, 512.0, 1.0, 512 * step, None)
            postfixes.append(log.bar.postfix)
    assert "compile=" in postfixes[0] and "tok/s" not in postfixes[0]
    assert "tok/s=" in postfixes[1] and "compile" not in postfixes[1]


def test_muon_takes_block_matrices_and_adam_the_embedding_and_head():
    from flax import nnx

    from planck.model.gpt import GPT
    from planck.train.config import load_config
    from planck.train.optim import param_labels

    model = GPT(load_config("tiny").model, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    labels = {".".join(map(str, p)): v for p, v in nnx.to_flat_state(param_labels(params))}
    adam = {k for k, v in labels.items() if v == "adam"}
    muon = {k for k, v in labels.items() if v == "muon"}
    assert adam and all(k.startswith(("embed", "head")) for k in adam)
    assert muon and not any(k.startswith(("embed", "head")) for k in muon)
    assert len(muon) == 2 * 6  # per block: q, k, v, out, up, down


def test_gradient_accumulation_equals_the_whole_batch():
    """Two micro-batches of 2 give the same update as one batch of 4 (loss = mean over all trained tokens)."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from planck.model.gpt import GPT
    from planck.train.config import load_config
    from planck.train.step import train_step

    cfg = load_config("tiny")
    rng = np.random.default_rng(0)
    T = cfg.model.seq_len
    batch = {
        "inputs": rng.integers(0, 50257, (4, T)).astype(np.int32),
        "targets": rng.integers(0, 50257, (4, T)).astype(np.int32),
        "mask": (rng.random((4, T)) < 0.6).astype(np.float32),
    }
    results = []
    for accum in (1, 2):
        model = GPT(cfg.model, rngs=nnx.Rngs(0))
        # Plain SGD: the update is the gradient itself (Adam's g/|g| would amplify float noise on ~0 gradients).
        opt = nnx.Optimizer(model, optax.sgd(1.0), wrt=nnx.Param)
        micro = {k: jnp.asarray(v.reshape(accum, 4 // accum, T)) for k, v in batch.items()}
        loss, n, _ = train_step(model, opt, micro)
        results.append((float(loss), float(n), jax.tree.leaves(nnx.state(model, nnx.Param))))
    (l1, n1, p1), (l2, n2, p2) = results
    assert n1 == n2 == batch["mask"].sum()
    assert l1 == pytest.approx(l2, rel=1e-5)
    for a, b in zip(p1, p2):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)


def test_run_folder_contents_and_loss_falls(reference_run):
    rows = [json.loads(x) for x in (reference_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 17))
    for key in ("loss", "lr", "tokens_per_sec"):
        assert all(key in r for r in rows)
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in evals] == [8, 16] and all(r["val_bpb"] > 0 for r in evals)
    assert np.mean([r["loss"] for r in rows[-4:]]) < rows[0]["loss"] - 1.0  # it learns
    assert (reference_run / "final" / "model.json").exists() and (reference_run / "loss.png").exists()
    assert json.loads((reference_run / "config.json").read_text())["config"]["train"]["steps"] == 16


def test_exact_resume_after_kill_9(pretrain_shards, reference_run, tmp_path):
    d = tmp_path / "killed"
    cmd = planck_cmd("train", "pretrain", *TINY, "--data", pretrain_shards, "--run-dir", d, *STEPS)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            m = d / "metrics.jsonl"
            if m.exists() and len(m.read_text().splitlines()) >= 10:
                break
            if proc.poll() is not None:
                pytest.fail("the run finished before it could be killed")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not (d / "final").exists()
    run("train", "pretrain", *TINY, "--data", pretrain_shards, "--run-dir", d, *STEPS)
    assert losses(d) == losses(reference_run)  # bit-identical loss series: same batches, same state


def test_damaged_newest_checkpoint_falls_back_to_the_previous(reference_run, pretrain_shards, tmp_path):
    d = tmp_path / "damaged"
    shutil.copytree(reference_run, d)
    newest = d / "checkpoints" / "16"
    for f in newest.rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "model" in f.parts:
            f.write_bytes(b"\0" * 7)  # damage every file of the model item
    shutil.rmtree(d / "final")
    proc = run("train", "pretrain", *TINY, "--data", pretrain_shards, "--run-dir", d, *STEPS)
    assert "unreadable" in proc.stderr and "checkpoint 16" in proc.stderr
    assert losses(d) == losses(reference_run)  # redone from step 12, identically
    assert (d / "final" / "model.json").exists()


def test_resuming_with_other_settings_is_refused(reference_run, pretrain_shards):
    proc = run("train", "pretrain", *TINY, "--data", pretrain_shards, "--run-dir", reference_run, *STEPS,
               "--set", "train.micro_batch=2", check=False)
    assert proc.returncode == 1 and "train.micro_batch" in proc.stderr and "Traceback" not in proc.stderr
    assert "optim.muon_lr" in proc.stderr  # the message lists what may change


def _newest_checkpoint_damaged(reference_run: Path, d: Path, damage) -> subprocess.CompletedProcess:
    shutil.copytree(reference_run, d)
    damage(d / "checkpoints" / "16")
    shutil.rmtree(d / "final")
    return run("train", "pretrain", *TINY, "--data", pretrain_shards_of(reference_run), "--run-dir", d, *STEPS)


def pretrain_shards_of(run_dir: Path) -> Path:
    return Path(json.loads((run_dir / "config.json").read_text())["data"])


def test_bit_flips_in_the_newest_checkpoint_are_caught_and_the_previous_one_used(reference_run, tmp_path):
    def flip(step_dir: Path) -> None:
        data = max((f for f in (step_dir / "model").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
        raw = bytearray(data.read_bytes())
        for i in range(20):
            raw[len(raw) // 3 + 11 * i] ^= 0x04
        data.write_bytes(bytes(raw))

    d = tmp_path / "flipped"
    proc = _newest_checkpoint_damaged(reference_run, d, flip)
    assert "checkpoint 16" in proc.stderr and "skipped" in proc.stderr, proc.stderr
    assert losses(d) == losses(reference_run)  # redone from step 12, identically
    assert list((d / "checkpoints-damaged").iterdir())  # kept for inspection, out of the way


def test_a_checkpoint_whose_metadata_lies_about_its_step_is_refused(reference_run, tmp_path):
    def lie(step_dir: Path) -> None:
        meta = next(f for f in (step_dir / "meta").rglob("*") if f.is_file() and f.read_bytes().startswith(b"{"))
        doc = json.loads(meta.read_text())
        doc["step"] = 11
        meta.write_text(json.dumps(doc))

    d = tmp_path / "lying"
    proc = _newest_checkpoint_damaged(reference_run, d, lie)
    assert "checkpoint 16" in proc.stderr and "lies about its step" in proc.stderr, proc.stderr
    assert losses(d) == losses(reference_run)


def test_first_ctrl_c_saves_a_checkpoint_at_the_current_step(pretrain_shards, reference_run, tmp_path):
    d = tmp_path / "interrupted"
    cmd = planck_cmd("train", "pretrain", *TINY, "--data", pretrain_shards, "--run-dir", d, *STEPS)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            m = d / "metrics.jsonl"
            if m.exists() and len(m.read_text().splitlines()) >= 5:
                break
            if proc.poll() is not None:
                pytest.fail("the run finished before it could be interrupted")
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err
    saved_at = int(err.split("checkpoint saved at step ")[1].split()[0])
    assert (d / "checkpoints" / str(saved_at)).is_dir() and saved_at >= 5
    resumed = run("train", "pretrain", *TINY, "--data", pretrain_shards, "--run-dir", d, *STEPS)
    assert f"resumed from step {saved_at}" in resumed.stdout
    assert losses(d) == losses(reference_run)  # nothing lost, nothing repeated differently


def test_a_diverged_run_continues_with_lower_learning_rates_and_the_change_is_recorded(pretrain_shards, tmp_path):
    d = tmp_path / "diverged"
    common = ["train", "pretrain", *TINY, "--data", pretrain_shards, "--run-dir", d, "--set", "train.log_every=1",
              "--set", "train.checkpoint_every=2", "--set", "train.eval_every=100"]
    run(*common, "--set", "train.steps=4")  # a good start: checkpoint at step 4
    # Extended with learning rates far too high: it diverges after step 4's checkpoint.
    blown = run(*common, "--set", "train.steps=8", "--set", "optim.muon_lr=1e30", "--set", "optim.adam_lr=1e30", check=False)
    assert blown.returncode == 1 and "lower the learning rates" in blown.stderr and "Traceback" not in blown.stderr
    # The advice, followed: the run continues from the last good checkpoint.
    fixed = run(*common, "--set", "train.steps=8", "--set", "optim.muon_lr=0.03", "--set", "optim.adam_lr=0.004", check=False)
    assert fixed.returncode == 0, fixed.stderr
    assert "resumed from step 4" in fixed.stdout
    changes = [json.loads(x) for x in (d / "changes.jsonl").read_text().splitlines()]
    assert [c["step"] for c in changes] == [4, 4]
    assert set(changes[0]["changed"]) == {"train.steps", "optim.muon_lr", "optim.adam_lr"}
    assert changes[0]["changed"]["train.steps"] == [4, 8] and changes[0]["changed"]["optim.muon_lr"][1] == 1e30
    assert changes[1]["changed"] == {"optim.muon_lr": [1e30, 0.03], "optim.adam_lr": [1e30, 0.004]}
    assert json.loads((d / "config.json").read_text())["config"]["optim"]["muon_lr"] == 0.03
    assert [r["step"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())] == list(range(1, 9))
    report = (d / "report.md").read_text()
    assert "Settings changed on resume" in report and "optim.muon_lr" in report
    # The same command again is a plain resume of a finished run: no new change recorded.
    run(*common, "--set", "train.steps=8", "--set", "optim.muon_lr=0.03", "--set", "optim.adam_lr=0.004")
    assert len((d / "changes.jsonl").read_text().splitlines()) == 2


def test_eight_devices_reach_the_same_loss_as_one(pretrain_shards, tmp_path):
    """Data parallel over 8 forced CPU devices (micro-batch 1 each) equals 1 device with micro-batch 8."""
    common = ["train", "pretrain", *TINY, "--data", pretrain_shards, "--set", "train.steps=3", "--set", "train.log_every=1",
              "--set", "train.grad_accum=1"]
    env8 = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    out8 = run(*common, "--run-dir", tmp_path / "d8", "--set", "train.micro_batch=1", env=env8)
    assert "8 device(s)" in out8.stdout
    run(*common, "--run-dir", tmp_path / "d1", "--set", "train.micro_batch=8")
    l8, l1 = losses(tmp_path / "d8"), losses(tmp_path / "d1")
    assert [s for s, _, _ in l8] == [1, 2, 3]
    np.testing.assert_allclose([x for _, x, _ in l8], [x for _, x, _ in l1], rtol=1e-5)


def test_init_from_and_export(reference_run, pretrain_shards, tmp_path):
    run("export", reference_run, "--out", tmp_path / "model.npz")
    z = np.load(tmp_path / "model.npz")
    meta = json.loads(bytes(z["__model_json__"]).decode())
    assert meta["model"]["d_model"] == 64 and meta["tokenizer"]["fingerprint"]
    assert any(k.startswith("embed") for k in z.files) and any(k.startswith("head") for k in z.files)
    # A second phase from the first one's weights starts where the first one ended, not at a random model's loss.
    d = tmp_path / "next"
    run("train", "midtrain", *TINY, "--data", pretrain_shards, "--run-dir", d, "--init-from", reference_run,
        "--set", "train.steps=1", "--set", "train.log_every=1")
    first = losses(d)[0][1]
    ref = losses(reference_run)
    assert first < ref[0][1] - 1.0


def test_two_processes_with_jax_distributed_reach_the_same_loss_as_one(pretrain_shards, tmp_path):
    """Two local processes (gloo on CPU), micro-batch 2 each, grain sharded by process == one process with micro-batch 4."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    common = ["train", "pretrain", *TINY, "--data", pretrain_shards, "--set", "train.steps=3", "--set", "train.log_every=1",
              "--set", "train.grad_accum=1", "--set", "train.eval_every=100"]
    procs = [
        subprocess.Popen(
            planck_cmd(*common, "--run-dir", tmp_path / "two", "--set", "train.micro_batch=2",
                       "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", i),
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in (0, 1)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    run(*common, "--run-dir", tmp_path / "one", "--set", "train.micro_batch=4")
    two, one = losses(tmp_path / "two"), losses(tmp_path / "one")
    assert [s for s, _, _ in two] == [1, 2, 3]
    np.testing.assert_allclose([x for _, x, _ in two], [x for _, x, _ in one], rtol=1e-5)


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(pretrain_shards, tmp_path):
    d = tmp_path / "diverged"
    proc = run("train", "pretrain", *TINY, "--data", pretrain_shards, "--run-dir", d, "--set", "train.steps=8",
               "--set", "train.log_every=1", "--set", "train.checkpoint_every=2",
               "--set", "optim.muon_lr=1e30", "--set", "optim.adam_lr=1e30",
               # The kit's earlier optimizer/init choices: at these rates they reach NaN within 8 steps (the
               # original's zero head and per-group clipping keep the tiny model finite even there).
               "--set", "model.head_init_std=0.001", "--set", "model.init=uniform_fan_in", "--set", "optim.clip=global",
               "--set", "optim.adam_eps=1e-10", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "loss became nan" in proc.stderr and "last good checkpoint" in proc.stderr
    saved = sorted(int(p.name) for p in (d / "checkpoints").iterdir() if p.name.isdigit())
    bad_step = int(proc.stderr.split("at step ")[1].split(";")[0])
    assert saved and max(saved) < bad_step  # nothing at or after the NaN was checkpointed
    assert not (d / "final").exists()


def test_fsdp_over_eight_devices_reaches_the_same_loss(pretrain_shards, tmp_path):
    """train.fsdp shards parameters and optimizer state over the devices; the losses stay those of one device."""
    common = ["train", "pretrain", *TINY, "--data", pretrain_shards, "--set", "train.steps=3", "--set", "train.log_every=1",
              "--set", "train.grad_accum=1"]
    env8 = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    run(*common, "--run-dir", tmp_path / "fsdp", "--set", "train.micro_batch=1", "--set", "train.fsdp=true", env=env8)
    run(*common, "--run-dir", tmp_path / "one", "--set", "train.micro_batch=8")
    np.testing.assert_allclose([x for _, x, _ in losses(tmp_path / "fsdp")], [x for _, x, _ in losses(tmp_path / "one")], rtol=1e-5)


def test_a_token_budget_decides_the_steps(pretrain_shards, tmp_path):
    """train.tokens=1000 at 4 x 64 x 2 = 512 tokens per step gives ceil(1000 / 512) = 2 steps."""
    run("train", "pretrain", *TINY, "--data", pretrain_shards, "--run-dir", tmp_path / "budget",
        "--set", "train.tokens=1000", "--set", "train.log_every=1")
    assert [s for s, _, _ in losses(tmp_path / "budget")] == [1, 2]
    saved = json.loads((tmp_path / "budget" / "config.json").read_text())["config"]["train"]
    assert saved["steps"] == 2 and saved["tokens"] == 1000


def test_the_trainer_refuses_a_corrupt_shard_before_step_1_and_records_its_data_check(pretrain_shards, reference_run, tmp_path):
    record = json.loads((reference_run / "preflight.json").read_text())
    assert record["shards"] == len(list(pretrain_shards.glob("*.bin"))) and len(record["fingerprint"]) == 32
    data = tmp_path / "data"
    shutil.copytree(pretrain_shards, data)
    shard = sorted(data.glob("train_*.bin"))[0]
    raw = bytearray(shard.read_bytes())
    for i in range(30):
        raw[len(raw) // 2 + i] ^= 0xFF  # token bytes: the checksum no longer matches
    shard.write_bytes(bytes(raw))
    d = tmp_path / "run"
    proc = run("train", "pretrain", *TINY, "--data", data, "--run-dir", d, *STEPS, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"planck: error: {shard}")
    assert not (d / "metrics.jsonl").exists() or not (d / "metrics.jsonl").read_text().strip()  # no step was taken
    assert not any(p.name.isdigit() for p in (d / "checkpoints").glob("*"))


def test_tensorboard_and_wandb_offline_receive_the_metrics(pretrain_shards, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    d = tmp_path / "tracked"
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true")
    run("train", "pretrain", *TINY, "--data", pretrain_shards, "--run-dir", d, "--set", "train.steps=4",
        "--set", "train.log_every=1", "--set", "train.eval_every=2", "--set", "train.eval_batches=1",
        "--set", "log.tensorboard=true", "--set", "log.wandb=planck-tests", env=env)
    rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    acc = EventAccumulator(str(d / "tensorboard"))
    acc.Reload()
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [r["step"] for r in rows]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    assert [e.step for e in acc.Scalars("val/bpb")] == [2, 4]
    offline = list((d / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))


def test_plan_memory_matches_the_step_and_auto_micro_batch_runs(pretrain_shards, tmp_path):
    import jax
    from flax import nnx

    from planck.model.gpt import GPT
    from planck.train.config import load_config
    from planck.train.optim import make_optimizer
    from planck.train.plan import HEADROOM, step_memory

    proc = run("plan", "--config", "tiny", "--json", "--set", "train.device_memory_gb=0.25")
    plan = json.loads(proc.stdout)
    cfg = load_config("tiny", "pretrain")
    model = GPT(cfg.model, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, make_optimizer(cfg.optim, cfg.train.steps), wrt=nnx.Param)
    state_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(nnx.state((model, opt))))
    batch_bytes = 3 * 4 * cfg.train.grad_accum * cfg.train.micro_batch * cfg.model.seq_len
    # XLA's arguments are exactly the step's inputs: parameters, optimizer state and the batch.
    assert plan["memory"]["arguments"] == state_bytes + batch_bytes
    assert plan["memory"]["temporaries"] > 0 and plan["parameters"] == 6_529_024
    chosen = plan["largest"]["micro_batch"]
    assert plan["largest"]["peak_bytes"] <= 0.25e9 * HEADROOM < step_memory(cfg, chosen + 1).peak
    d = tmp_path / "auto"
    out = run("train", "pretrain", *TINY, "--data", pretrain_shards, "--run-dir", d, "--set", "train.steps=2",
              "--set", "train.micro_batch=auto", "--set", "train.device_memory_gb=0.25")
    assert f"train.micro_batch=auto: {chosen}" in out.stdout
    assert json.loads((d / "config.json").read_text())["config"]["train"]["micro_batch"] == chosen
    # Resumed with auto again: the recorded choice stands (no new search, no "other settings" refusal).
    again = run("train", "pretrain", *TINY, "--data", pretrain_shards, "--run-dir", d, "--set", "train.steps=2",
                "--set", "train.micro_batch=auto", "--set", "train.device_memory_gb=0.25")
    assert "train.micro_batch=auto:" not in again.stdout


def test_doctor_reports_this_machine():
    proc = run("doctor", "--json")
    info = json.loads(proc.stdout)
    assert info["backend"] == "cpu" and info["problems"] == []
    assert info["versions"]["jax"] == "0.10.2" and info["tokenizer"]
    assert info["flash_attention"]["available"] is False and "not on a GPU" in info["flash_attention"]["why"]
    bad = run("doctor", "--shards", "/proc/none", check=False)
    assert bad.returncode in (0, 1) and "Traceback" not in bad.stderr
