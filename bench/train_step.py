"""Train-step figures: compile time, step time and tokens/s of a preset on this machine's devices.

    .venv/bin/python bench/train_step.py --config tiny [--steps 20] [--set key=value ...]

Random tokens (speed does not depend on them), the real compiled step (grad accumulation
scan, Muon + Adam). MFU is printed when the device's peak is known (GPUs in train/devices.py).
Writes bench/results/train_step_<config>.json, with the peak memory (device on GPU, process RSS always).

Side by side with the original PlanckGPT (its own training loop, timed by
../shared/reference/time_original.py) at the same shapes, interleaved on one machine:

    .venv/bin/python bench/train_step.py --compare-original [--rounds 3] [--steps 6] [--reference ../shared/reference]

Each round runs our step, then the original's, each in a fresh subprocess (so peak RSS is per
process); medians over the rounds and the per-round ratio ours/original (median, min, max) go to
bench/results/compare_original.json and a printed table. Only ratios measured this way hold on a
shared, noisy machine. Shapes are (layers, d_model, heads, seq, micro_batch, accum), multi-query
attention (one K/V head), head_dim = d_model / heads, vocab 50,304, bfloat16 compute like the
original; plus the tiny preset (our tiny runs float32 compute, the original always bfloat16).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from measure import peak_memory

from planck.model.gpt import GPT, count_params, flops_per_token
from planck.train.config import load_config
from planck.train.devices import peak_flops
from planck.train.optim import make_optimizer
from planck.train.step import train_step

# (layers, d_model, heads, seq, micro_batch, accum); "tiny" is taken from configs/presets/tiny.toml.
COMPARE_SHAPES = [(4, 128, 4, 256, 8, 4), (6, 384, 6, 512, 4, 2), "tiny"]


def shape_overrides(layers: int, d_model: int, heads: int, seq: int, micro_batch: int, accum: int) -> list[str]:
    """--set overrides that give our model the original's architecture at this shape."""
    return [f"model.n_layer={layers}", f"model.d_model={d_model}", f"model.n_head={heads}", "model.n_kv_head=1",
            f"model.head_dim={d_model // heads}", f"model.seq_len={seq}", "model.compute_dtype=bfloat16",
            "model.remat=false", f"train.micro_batch={micro_batch}", f"train.grad_accum={accum}"]


def build(config: str, overrides: list[str]):
    """Model, optimizer and one random (grad_accum, micro_batch, seq_len) batch."""
    cfg = load_config(config, "pretrain", overrides)
    m, t = cfg.model, cfg.train
    model = GPT(m, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, make_optimizer(cfg.optim, 1000), wrt=nnx.Param)
    rng = np.random.default_rng(0)
    shape = (t.grad_accum, t.micro_batch * jax.device_count(), m.seq_len)
    batch = {
        "inputs": jnp.asarray(rng.integers(0, 50257, shape), jnp.int32),
        "targets": jnp.asarray(rng.integers(0, 50257, shape), jnp.int32),
        "mask": jnp.ones(shape, jnp.float32),
    }
    return cfg, model, opt, batch, shape


VARIANTS = ["default", "reference-loss", "autodiff-linears", "xla-attention", "autodiff-both", "optax-muon", "attention-one-block", "before-all"]


def _variants(text: str) -> str:
    unknown = set(text.split(",")) - set(VARIANTS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown variant {', '.join(sorted(unknown))} (choose from {', '.join(VARIANTS)})")
    return text


def ours_once(config: str, overrides: list[str], steps: int, variant: str = "default") -> dict:
    """Our step at one shape, timed like time_original.py times the original: median of whole optimizer steps.

    variant "reference-loss": the step with the straightforward loss (full (B, T, V) logits, autodiff;
    what token_loss_sum was before the fused path), for before/after figures in one run.
    variant "autodiff-linears": the blocks' linears differentiated by autodiff (what model/matmul.py replaced on CPU);
    "xla-attention": jax.nn.dot_product_attention's XLA path (what model/attention.py replaced on CPU); "autodiff-both";
    "optax-muon": optax.contrib.muon itself (what train/muon.py replaced);
    "attention-one-block": model/attention.py with all query rows in one block (before its query blocks);
    "before-all": reference-loss, autodiff-both and optax-muon at once, the step before the speed work
    (the XLA attention has no query blocks), for planck150m's before/after.
    Several may be joined with commas.
    """
    chosen = set(variant.split(","))
    if "before-all" in chosen:
        chosen |= {"reference-loss", "autodiff-both", "optax-muon"}
    if "attention-one-block" in chosen:
        import planck.model.attention as attention_mod
        attention_mod.query_block = lambda seq_len: seq_len
    if "optax-muon" in chosen:
        import optax
        import planck.train.optim as optim_mod
        optim_mod.muon_optimizer = optax.contrib.muon
    if chosen & {"autodiff-linears", "autodiff-both"}:
        import planck.model.matmul as matmul_mod
        matmul_mod.use_row_major_gradient = lambda: False
    if chosen & {"xla-attention", "autodiff-both"}:
        import planck.model.attention as attention_mod
        attention_mod.use_folded_attention = lambda: False
    if "reference-loss" in chosen:
        import planck.train.step as step_mod
        from planck.model.loss import reference_token_loss_sum
        step_mod.token_loss_sum = reference_token_loss_sum
    cfg, model, opt, batch, shape = build(config, overrides)
    t0 = time.perf_counter()
    float(train_step(model, opt, batch)[0])
    compile_s = time.perf_counter() - t0
    float(train_step(model, opt, batch)[0])  # one warm step
    times, c0 = [], time.process_time()
    for _ in range(steps):
        t0 = time.perf_counter()
        float(train_step(model, opt, batch)[0])
        times.append(time.perf_counter() - t0)
    cpu_s = time.process_time() - c0
    tokens = int(np.prod(shape))
    m = cfg.model
    return dict(kind="ours", variant=variant, layers=m.n_layer, d_model=m.d_model, heads=m.n_head, seq=m.seq_len,
                micro_batch=cfg.train.micro_batch, accum=cfg.train.grad_accum, compute_dtype=m.compute_dtype,
                optimizer_steps=steps, compile_s=round(compile_s, 2),
                tokens_per_s=round(tokens / statistics.median(times), 1),
                tokens_per_cpu_s=round(tokens * steps / cpu_s, 1),
                peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def _last_json(out: str) -> dict:
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def compare_original(args) -> None:
    """Interleaved rounds (ours, original, ours, original, ...) per shape; medians, ratio and spread; JSON + table."""
    repo = Path(__file__).resolve().parent.parent
    reference = Path(args.reference)
    if not reference.is_absolute():
        reference = (repo / reference).resolve()
    timer = reference / "time_original.py"
    if not timer.exists():
        sys.exit(f"{timer}: not found (pass --reference DIR holding time_original.py)")
    env = dict(os.environ)
    env.setdefault("TIKTOKEN_CACHE_DIR", str(repo / ".cache" / "tiktoken"))
    rows = []
    shapes = COMPARE_SHAPES if not args.shapes else [
        "tiny" if x == "tiny" else tuple(int(v) for v in x.split(",")) for x in args.shapes.split(";")]
    for shape in shapes:
        if shape == "tiny":
            t = load_config("tiny").model, load_config("tiny").train
            dims = (t[0].n_layer, t[0].d_model, t[0].n_head, t[0].seq_len, t[1].micro_batch, t[1].grad_accum)
            ours_cmd = ["--config", "tiny"]
        else:
            dims = shape
            ours_cmd = ["--config", "planck150m"] + [a for o in shape_overrides(*shape) for a in ("--set", o)]
        L, D, H, S, B, A = dims
        orig_cmd = [sys.executable, str(timer), "--layers", str(L), "--d-model", str(D), "--heads", str(H),
                    "--seq", str(S), "--micro-batch", str(B), "--accum", str(A), "--steps", str(args.steps)]
        ours_full = [sys.executable, str(Path(__file__).resolve()), "--ours-once", "--steps", str(args.steps)] + ours_cmd
        rounds = []
        for r in range(args.rounds):
            ours = _last_json(subprocess.run(ours_full, check=True, capture_output=True, text=True, env=env, cwd=repo).stdout)
            orig = _last_json(subprocess.run(orig_cmd, check=True, capture_output=True, text=True, env=env, cwd=repo).stdout)
            rounds.append(dict(ours=ours, original=orig, ratio=ours["tokens_per_s"] / orig["tokens_per_s"]))
            print(f"  {dims} round {r + 1}: ours {ours['tokens_per_s']:,.0f} tok/s, original {orig['tokens_per_s']:,.0f} tok/s,"
                  f" ratio {rounds[-1]['ratio']:.2f}", flush=True)
        med = lambda side, key: statistics.median(x[side][key] for x in rounds)
        ratios = [x["ratio"] for x in rounds]
        # Tokens per CPU-second (both timers report it): steadier than wall time on a shared machine.
        cpu_ratios = [x["ours"]["tokens_per_cpu_s"] / x["original"]["tokens_per_cpu_s"] for x in rounds]
        rows.append(dict(
            shape=dict(zip(("layers", "d_model", "heads", "seq", "micro_batch", "accum"), dims)),
            preset="tiny" if shape == "tiny" else None, ours_compute_dtype=rounds[0]["ours"]["compute_dtype"],
            ours_tokens_per_s=med("ours", "tokens_per_s"), original_tokens_per_s=med("original", "tokens_per_s"),
            ours_peak_rss_mb=med("ours", "peak_rss_mb"), original_peak_rss_mb=med("original", "peak_rss_mb"),
            ratio_median=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios),
            cpu_ratio_median=statistics.median(cpu_ratios), cpu_ratio_min=min(cpu_ratios), cpu_ratio_max=max(cpu_ratios),
            rounds=rounds))
    result = dict(machine=dict(cpus=os.cpu_count(), device=jax.devices()[0].device_kind), rounds=args.rounds,
                  steps=args.steps, reference=str(reference), shapes=rows)
    out = repo / args.out / "compare_original.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    head = f"{'shape (L,D,H,T,B,A)':<26}{'ours tok/s':>11}{'orig tok/s':>11}{'ratio':>7}{'  [min-max]':<14}{'ours RSS':>9}{'orig RSS':>9}  ratio per CPU-s"
    print(head)
    for row in rows:
        s = row["shape"]
        name = ("tiny " if row["preset"] else "") + ",".join(str(v) for v in s.values())
        print(f"{name:<26}{row['ours_tokens_per_s']:>11,.0f}{row['original_tokens_per_s']:>11,.0f}{row['ratio_median']:>7.2f}"
              f"  [{row['ratio_min']:.2f}-{row['ratio_max']:.2f}]{'':<2}{row['ours_peak_rss_mb']:>7,} MB{row['original_peak_rss_mb']:>6,} MB"
              f"  {row['cpu_ratio_median']:.2f} [{row['cpu_ratio_min']:.2f}-{row['cpu_ratio_max']:.2f}]")
    print(f"wrote {out}")


def main() -> None:
    """Measure and print."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20; 6 with --compare-original)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--compare-original", action="store_true", help="interleaved side-by-side with the original PlanckGPT")
    ap.add_argument("--rounds", type=int, default=3, help="--compare-original: rounds per shape (>= 3)")
    ap.add_argument("--reference", default="../shared/reference",
                    help="--compare-original: folder holding time_original.py, relative to the repository root")
    ap.add_argument("--shapes", default=None,
                    help='--compare-original: e.g. "4,128,4,256,8,4;tiny" (default: the three shapes above)')
    ap.add_argument("--out", type=Path, default=Path("bench/results"),
                    help="folder for the result (train_step_CONFIG.json, or compare_original.json)")
    ap.add_argument("--ours-once", action="store_true",
                    help="time our step once at --config/--set and print one JSON line (what --compare-original runs)")
    ap.add_argument("--variant", default="default", type=_variants,
                    help="--ours-once: a change undone to measure it (" + ", ".join(VARIANTS[1:]) + "; comma-joined for several)")  # one subprocess of --compare-original
    args = ap.parse_args()
    if args.compare_original:
        args.steps = args.steps or 6
        return compare_original(args)
    if args.ours_once:
        print(json.dumps(ours_once(args.config, args.overrides, args.steps or 6, args.variant)))
        return
    args.steps = args.steps or 20
    cfg, model, opt, batch, shape = build(args.config, args.overrides)
    m = cfg.model
    t0 = time.perf_counter()
    float(train_step(model, opt, batch)[0])
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = train_step(model, opt, batch)[0]
    float(loss)
    step_s = (time.perf_counter() - t0) / args.steps
    tokens = int(np.prod(shape))
    tps = tokens / step_s
    peak = peak_flops()
    result = {
        "config": args.config, "device": jax.devices()[0].device_kind, "devices": jax.device_count(),
        "parameters": count_params(model), "tokens_per_step": tokens, "compile_s": compile_s,
        "step_s": step_s, "tokens_per_s": tps, "flops_per_token": flops_per_token(m),
        "peak_flops": peak, "mfu": flops_per_token(m) * tps / peak if peak else None, **peak_memory(),
    }
    out = args.out / f"train_step_{args.config}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"{args.config} on {result['devices']} x {result['device']}: {result['parameters']:,} params, "
          f"{tokens:,} tokens/step, compile {compile_s:.1f} s, step {1000 * step_s:.1f} ms, {tps:,.0f} tok/s"
          + (f", MFU {100 * result['mfu']:.1f}%" if result["mfu"] else "")
          + f", peak RSS {result['peak_rss_bytes'] / 1e6:,.0f} MB"
          + (f", peak device {result['peak_device_bytes'] / 1e6:,.0f} MB" if "peak_device_bytes" in result else ""))


if __name__ == "__main__":
    main()
