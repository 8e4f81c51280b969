"""The acceptance run on an accelerator (`make gpu-check`): one JSON file and a table of what the real model does here.

    .venv/bin/python bench/gpu_check.py [--config planck150m] [--out DIR] [--train-steps 200]

1. `planck doctor`: backend, devices, versions, cudnn flash attention (used or why not).
2. The train step at micro-batch 4 x seq_len (one accumulation step), with and without remat:
   compile time, step time, tokens/s, MFU, peak device memory (bench/train_step.py, a process each).
3. Real training: the embedded corpus tokenized, then `planck train pretrain` for --train-steps
   steps at micro-batch 4; the loss must fall (first logged vs last logged).
4. Decoding the trained model in bf16 (on a GPU) at 1 and 8 concurrent requests: tokens/s and time
   to first token (bench/decode_throughput.py).
Writes DIR/gpu_check.json (default $OUT, else bench/results) after every part: a part that fails is
recorded with its error and the others still run (decoding needs the training run), and the exit code
is 1. The shards and the run go to --work (default a temporary folder, removed after), so DIR holds
only small JSON files. On a CPU it runs the same at the tiny shape (the test suite does, so it cannot
rot); `--config planck150m` on a CPU is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


class PartFailed(Exception):
    """A part of the check failed; the message names the command and its exit code."""


def sh(*args: str, env: dict | None = None, timeout: float = 1800, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    """Run a command from the repository root; a failure (an exit code not in `ok`) prints its output and raises PartFailed."""
    try:
        proc = subprocess.run([*map(str, args)], cwd=REPO, capture_output=True, text=True, env=env or os.environ.copy(),
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise PartFailed(f"`{' '.join(map(str, args))}` ran past {timeout:.0f} s") from None
    if proc.returncode not in ok:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        last = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["?"])[-1]
        raise PartFailed(f"`{' '.join(map(str, args))}` failed with exit code {proc.returncode}: {last[:300]}")
    return proc


def planck(*args: str, **kw) -> subprocess.CompletedProcess:
    return sh(PY, "-m", "planck.cli", *args, **kw)


def step_figures(config: str, remat: bool, out: Path, steps: int) -> dict:
    """bench/train_step.py at micro-batch 4, one accumulation step, in its own process (its peak memory is its own)."""
    results = out / f"train_step_remat_{str(remat).lower()}"
    sh(PY, "bench/train_step.py", "--config", config, "--steps", str(steps), "--out", results,
       "--set", "train.micro_batch=4", "--set", "train.grad_accum=1", "--set", f"model.remat={str(remat).lower()}")
    return json.loads((results / f"train_step_{config}.json").read_text())


def training_figures(config: str, work: Path, steps: int) -> dict:
    """The embedded corpus tokenized, then `steps` steps of `planck train pretrain` at micro-batch 4; the loss must fall."""
    shards, run = work / "shards", work / "run"
    planck("tokenize", "pretrain", "--source", "embedded", "--out", shards, "--max-tokens", "400k",
           "--val-tokens", "40k", "--shard-tokens", "200k", "--quiet")
    t0 = time.perf_counter()
    planck("train", "pretrain", "--config", config, "--data", shards, "--run-dir", run, "--quiet",
           "--set", f"train.steps={steps}", "--set", "train.micro_batch=4", "--set", "train.grad_accum=1",
           "--set", f"train.log_every={max(1, steps // 20)}", "--set", f"train.eval_every={steps}",
           "--set", "train.eval_batches=4", "--set", f"train.checkpoint_every={steps}")
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    losses = [r["loss"] for r in rows if "loss" in r]
    return {
        "steps": steps, "wall_s": time.perf_counter() - t0, "first_loss": losses[0], "last_loss": losses[-1],
        "loss_fell": losses[-1] < losses[0], "compile_s": next((r["compile_s"] for r in rows if "compile_s" in r), None),
        "tokens_per_sec": rows[-1].get("tokens_per_sec"), "mfu": rows[-1].get("mfu"), "val_bpb": rows[-1].get("val_bpb"),
    }


def decode_figures(config: str, run: Path, dtype: str, out: Path) -> dict:
    """bench/decode_throughput.py on the trained run: 1 and 8 concurrent requests, time to first token."""
    decode_dir = out / "decode"
    shutil.rmtree(decode_dir, ignore_errors=True)  # a figure from an earlier check in the same OUT is not this one's
    sh(PY, "bench/decode_throughput.py", "--config", config, "--checkpoint", run, "--dtype", dtype, "--concurrent", "8",
       "--out", decode_dir)
    return json.loads(next(decode_dir.glob("decode_*.json")).read_text())


def main() -> int:
    """Run every part, write the JSON after each, print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="default: planck150m on an accelerator, tiny on a CPU")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or REPO / "bench" / "results"),
                    help="where gpu_check.json and the parts' small JSON files go (default $OUT, else bench/results)")
    ap.add_argument("--work", type=Path, default=None,
                    help="shards and the training run (~2 GB at planck150m, estimated; new or empty); default a temporary "
                    "folder ($TMPDIR), removed after")
    ap.add_argument("--train-steps", type=int, default=200)
    ap.add_argument("--step-repeats", type=int, default=10, help="timed steps per train-step figure")
    args = ap.parse_args()
    started = time.perf_counter()
    out = args.out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    # The run's checkpoints stay out of --out: a folder that is copied back (a lent machine's $OUT) gets only JSON.
    if args.work and args.work.exists() and (not args.work.is_dir() or any(args.work.iterdir())):
        raise SystemExit(f"gpu-check: --work {args.work} is not an empty folder: a run there would resume, not measure")
    disk = (args.work or Path(tempfile.gettempdir())).absolute()

    # Doctor's problems (little free disk, say) are recorded, not fatal: a part that truly cannot run fails on its own.
    proc = planck("doctor", "--json", "--shards", disk, "--runs", disk, ok=(0, 1))
    try:
        doctor = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise SystemExit(f"gpu-check: planck doctor printed no JSON: {(proc.stderr.strip().splitlines() or ['?'])[-1]}") from None
    on_cpu = doctor.get("backend") == "cpu"
    config = args.config or ("tiny" if on_cpu else "planck150m")
    if on_cpu and config != "tiny":
        raise SystemExit("gpu-check: no accelerator here (backend cpu): only --config tiny runs on a CPU")
    work = (args.work or Path(tempfile.mkdtemp(prefix="planck-gpu-check-"))).absolute()
    dtype = "float32" if on_cpu else "bfloat16"
    result: dict = {"config": config, "doctor": doctor, "step": {}, "failed": []}

    def part(name: str, into: dict, key: str, fn, *fn_args) -> None:
        """One part: its figures (or None and its failure) into the JSON, written at once so a later crash keeps them."""
        try:
            into[key] = fn(*fn_args)
        except Exception as exc:  # noqa: BLE001 - any part's failure is recorded and the others still run
            into[key] = None
            result["failed"].append({"part": name, "error": f"{type(exc).__name__}: {exc}"})
        result["seconds"] = time.perf_counter() - started
        (out / "gpu_check.json").write_text(json.dumps(result, indent=2))

    try:
        for remat in (False, True):
            part(f"train step, remat {remat}", result["step"], f"remat_{remat}", step_figures, config, remat, out,
                 args.step_repeats)
        part("training", result, "training", training_figures, config, work, args.train_steps)
        if result["training"]:
            part("decode", result, "decode", decode_figures, config, work / "run", dtype, out)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)

    print("\n".join(table(result, dtype, out)))
    return 0 if not result["failed"] and result["training"]["loss_fell"] else 1


def run() -> int:
    """main(), with a failure before any part (doctor itself) as one line."""
    try:
        return main()
    except PartFailed as exc:
        raise SystemExit(f"gpu-check: {exc}") from None


def table(result: dict, dtype: str, out: Path) -> list[str]:
    """The printed summary: a line per part, or what failed."""
    doctor, tr, dec = result["doctor"], result.get("training"), result.get("decode")
    mem = lambda d: f"{d['peak_device_bytes'] / 1e9:.2f} GB device" if d.get("peak_device_bytes") else f"{d['peak_rss_bytes'] / 1e9:.2f} GB RSS"
    mfu = lambda d: f", MFU {100 * d['mfu']:.1f}%" if d.get("mfu") else ""
    lines = [f"gpu-check: {result['config']} on {jax_device(doctor)}, {result['seconds']:.0f} s in all"]
    for key, label in (("remat_False", "no remat:"), ("remat_True", "remat:   ")):
        if s := result["step"].get(key):
            lines.append(f"train step 4 x seq, {label} {s['tokens_per_s']:,.0f} tok/s, step {1000 * s['step_s']:.1f} ms, "
                         f"compile {s['compile_s']:.1f} s{mfu(s)}, peak {mem(s)}")
    if tr:
        lines.append(f"training {tr['steps']} steps: loss {tr['first_loss']:.3f} -> {tr['last_loss']:.3f} "
                     f"({'falling' if tr['loss_fell'] else 'NOT falling'}), {tr['wall_s']:.0f} s with compilation")
    if dec:
        lines.append(f"decode ({dtype}): {dec['decode_tok_s_batch1']:,.0f} tok/s alone, {dec['decode_tok_s_8_concurrent']:,.0f} "
                     f"tok/s at 8 concurrent, first token {1000 * dec['ttft_s']:.1f} ms, prefill {dec['prefill_tok_s']:,.0f} tok/s")
    lines.append(f"flash attention: {doctor.get('flash_attention', {}).get('why', '?')}")
    lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in doctor.get("versions", {}).items()))
    lines += [f"doctor: {w}" for w in doctor.get("warnings", []) + doctor.get("problems", [])]
    lines += [f"FAILED {f['part']}: {f['error']}" for f in result["failed"]]
    lines.append(f"-> {out / 'gpu_check.json'}")
    return lines


def jax_device(doctor: dict) -> str:
    devices = doctor.get("devices") or [{}]
    return f"{len(devices)} x {devices[0].get('kind', '?')}"


if __name__ == "__main__":
    sys.exit(run())
