"""One Muon update of a model's block matrices: optax.contrib.muon against train/muon.py's 2-D Newton-Schulz.

    .venv/bin/python bench/muon_update.py [--layers 6 --d-model 384 --heads 6 --ff 1536] [--rounds 4]

The matrices of a multi-query model at that shape (q, k, v, out, up, down per layer), float32
as the trainer keeps them; both transformations jitted, timed interleaved over the rounds
(median of 3 calls each), and the largest difference between their updates printed.
"""

from __future__ import annotations

import argparse
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import optax

from measure import interleaved_ms
from planck.train.muon import muon


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--d-model", type=int, default=384)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--ff", type=int, default=None, help="MLP width (default 4 x d_model)")
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    d, head_dim = args.d_model, args.d_model // args.heads
    ff = args.ff or 4 * d
    shapes = {"q": (d, d), "k": (d, head_dim), "v": (d, head_dim), "out": (d, d), "up": (d, ff), "down": (ff, d)}
    rng = np.random.default_rng(0)
    params = {f"{i}.{k}": jnp.asarray(rng.standard_normal(s), jnp.float32) for i in range(args.layers) for k, s in shapes.items()}
    grads = jax.tree.map(lambda p: p * 0.01, params)
    txs = {"optax.contrib.muon": optax.contrib.muon(0.02), "train/muon.py": muon(0.02)}
    calls = {name: (jax.jit(tx.update), tx.init(params)) for name, tx in txs.items()}
    outputs = {name: jax.block_until_ready(f(grads, s, params)[0]) for name, (f, s) in calls.items()}
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(*(jax.tree.leaves(o) for o in outputs.values())))
    times = interleaved_ms({name: lambda f=f, s=s: f(grads, s, params) for name, (f, s) in calls.items()}, args.rounds)
    print(f"{len(params)} matrices, {args.layers} layers of d {d}, ff {ff}; largest update difference {diff:.1e}")
    for name, ts in times.items():
        print(f"  {name:<20} {statistics.median(ts):8.1f} ms  [{min(ts):.1f}-{max(ts):.1f}]")


if __name__ == "__main__":
    main()
