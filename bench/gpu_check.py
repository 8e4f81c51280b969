"""The acceptance run on an accelerator (`make gpu-check`): one JSON file and a table of what the real model does here.

    .venv/bin/python bench/gpu_check.py [--config planck150m] [--out DIR] [--train-steps 200]

1. `planck doctor`: backend, devices, versions, cudnn flash attention (used or why not).
2. The train step at micro-batch 4 x seq_len (one accumulation step), with and without remat:
   compile time, step time, tokens/s, MFU, peak device memory (bench/train_step.py, a process each).
3. Real training: the embedded corpus tokenized, then `planck train pretrain` for --train-steps
   steps at micro-batch 4; the loss must fall (first logged vs last logged).
4. Decoding the trained model in bf16 (on a GPU) at 1 and 8 concurrent requests: tokens/s and time
   to first token (bench/decode_throughput.py).
Writes DIR/gpu_check.json (default bench/results). On a CPU it runs the same at the tiny shape (the
test suite does, so it cannot rot); `--config planck150m` on a CPU is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def sh(*args: str, env: dict | None = None, timeout: float = 1800, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    """Run a command from the repository root; a failure (an exit code not in `ok`) prints its output and stops the check."""
    proc = subprocess.run([*map(str, args)], cwd=REPO, capture_output=True, text=True, env=env or os.environ.copy(),
                          timeout=timeout)
    if proc.returncode not in ok:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"gpu-check: `{' '.join(map(str, args))}` failed with exit code {proc.returncode}")
    return proc


def planck(*args: str, **kw) -> subprocess.CompletedProcess:
    return sh(PY, "-m", "planck.cli", *args, **kw)


def step_figures(config: str, remat: bool, out: Path, steps: int) -> dict:
    """bench/train_step.py at micro-batch 4, one accumulation step, in its own process (its peak memory is its own)."""
    results = out / f"train_step_remat_{str(remat).lower()}"
    sh(PY, "bench/train_step.py", "--config", config, "--steps", str(steps), "--out", results,
       "--set", "train.micro_batch=4", "--set", "train.grad_accum=1", "--set", f"model.remat={str(remat).lower()}")
    return json.loads((results / f"train_step_{config}.json").read_text())


def main() -> int:
    """Run every part, write the JSON, print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="default: planck150m on an accelerator, tiny on a CPU")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or REPO / "bench" / "results"))
    ap.add_argument("--train-steps", type=int, default=200)
    ap.add_argument("--step-repeats", type=int, default=10, help="timed steps per train-step figure")
    args = ap.parse_args()
    started = time.perf_counter()
    out = args.out.absolute()
    out.mkdir(parents=True, exist_ok=True)

    # Doctor's problems (little free disk, say) are recorded, not fatal: a part that truly cannot run fails on its own.
    doctor = json.loads(planck("doctor", "--json", "--shards", out, "--runs", out, ok=(0, 1)).stdout)
    on_cpu = doctor.get("backend") == "cpu"
    config = args.config or ("tiny" if on_cpu else "planck150m")
    if on_cpu and config != "tiny":
        raise SystemExit("gpu-check: no accelerator here (backend cpu): only --config tiny runs on a CPU")
    result: dict = {"config": config, "doctor": doctor}

    result["step"] = {f"remat_{r}": step_figures(config, r, out, args.step_repeats) for r in (False, True)}

    shards, run = out / "gpu_check_shards", out / "gpu_check_run"
    planck("tokenize", "pretrain", "--source", "embedded", "--out", shards, "--max-tokens", "400k",
           "--val-tokens", "40k", "--shard-tokens", "200k", "--quiet")
    t0 = time.perf_counter()
    planck("train", "pretrain", "--config", config, "--data", shards, "--run-dir", run, "--quiet",
           "--set", f"train.steps={args.train_steps}", "--set", "train.micro_batch=4", "--set", "train.grad_accum=1",
           "--set", f"train.log_every={max(1, args.train_steps // 20)}", "--set", f"train.eval_every={args.train_steps}",
           "--set", "train.eval_batches=4", "--set", f"train.checkpoint_every={args.train_steps}")
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    losses = [r["loss"] for r in rows if "loss" in r]
    result["training"] = {
        "steps": args.train_steps, "wall_s": time.perf_counter() - t0, "first_loss": losses[0], "last_loss": losses[-1],
        "loss_fell": losses[-1] < losses[0], "compile_s": next((r["compile_s"] for r in rows if "compile_s" in r), None),
        "tokens_per_sec": rows[-1].get("tokens_per_sec"), "mfu": rows[-1].get("mfu"), "val_bpb": rows[-1].get("val_bpb"),
    }

    dtype = "float32" if on_cpu else "bfloat16"
    decode_dir = out / "decode"
    sh(PY, "bench/decode_throughput.py", "--config", config, "--checkpoint", run, "--dtype", dtype, "--concurrent", "8",
       "--out", decode_dir)
    result["decode"] = json.loads(next(decode_dir.glob("decode_*.json")).read_text())
    result["seconds"] = time.perf_counter() - started
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2))

    s0, s1, tr, dec = result["step"]["remat_False"], result["step"]["remat_True"], result["training"], result["decode"]
    mem = lambda d: f"{d['peak_device_bytes'] / 1e9:.2f} GB device" if d.get("peak_device_bytes") else f"{d['peak_rss_bytes'] / 1e9:.2f} GB RSS"
    mfu = lambda d: f", MFU {100 * d['mfu']:.1f}%" if d.get("mfu") else ""
    fa = doctor.get("flash_attention", {})
    lines = [
        f"gpu-check: {config} on {jax_device(doctor)}, {result['seconds']:.0f} s in all",
        f"train step 4 x seq, no remat: {s0['tokens_per_s']:,.0f} tok/s, step {1000 * s0['step_s']:.1f} ms, compile {s0['compile_s']:.1f} s{mfu(s0)}, peak {mem(s0)}",
        f"train step 4 x seq, remat:    {s1['tokens_per_s']:,.0f} tok/s, step {1000 * s1['step_s']:.1f} ms, compile {s1['compile_s']:.1f} s{mfu(s1)}, peak {mem(s1)}",
        f"training {tr['steps']} steps: loss {tr['first_loss']:.3f} -> {tr['last_loss']:.3f} ({'falling' if tr['loss_fell'] else 'NOT falling'}), "
        f"{tr['wall_s']:.0f} s with compilation",
        f"decode ({dtype}): {dec['decode_tok_s_batch1']:,.0f} tok/s alone, {dec['decode_tok_s_8_concurrent']:,.0f} tok/s at "
        f"8 concurrent, first token {1000 * dec['ttft_s']:.1f} ms, prefill {dec['prefill_tok_s']:,.0f} tok/s",
        f"flash attention: {fa.get('why', '?')}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in doctor.get("versions", {}).items()),
        *[f"doctor: {w}" for w in doctor.get("warnings", []) + doctor.get("problems", [])],
        f"-> {out / 'gpu_check.json'}",
    ]
    print("\n".join(lines))
    return 0 if tr["loss_fell"] else 1


def jax_device(doctor: dict) -> str:
    devices = doctor.get("devices") or [{}]
    return f"{len(devices)} x {devices[0].get('kind', '?')}"


if __name__ == "__main__":
    sys.exit(main())
