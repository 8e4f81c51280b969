"""Train-step figures: compile time, step time and tokens/s of a preset on this machine's devices.

    .venv/bin/python bench/train_step.py --config tiny [--steps 20] [--set key=value ...]

Random tokens (speed does not depend on them), the real compiled step (grad accumulation
scan, Muon + Adam). MFU is printed when the device's peak is known (GPUs in train/devices.py).
Writes bench/results/train_step_<config>.json, with the peak memory (device on GPU, process RSS always).
"""

from __future__ import annotations

import argparse
import json
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


def main() -> None:
    """Measure and print."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    cfg = load_config(args.config, "pretrain", args.overrides)
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
    out = Path(f"bench/results/train_step_{args.config}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"{args.config} on {result['devices']} x {result['device']}: {result['parameters']:,} params, "
          f"{tokens:,} tokens/step, compile {compile_s:.1f} s, step {1000 * step_s:.1f} ms, {tps:,.0f} tok/s"
          + (f", MFU {100 * result['mfu']:.1f}%" if result["mfu"] else "")
          + f", peak RSS {result['peak_rss_bytes'] / 1e6:,.0f} MB"
          + (f", peak device {result['peak_device_bytes'] / 1e6:,.0f} MB" if "peak_device_bytes" in result else ""))


if __name__ == "__main__":
    main()
