"""One layer's training attention on XLA:CPU, forward and backward: jax.nn.dot_product_attention's XLA path against model/attention.py.

    .venv/bin/python bench/attention_layouts.py [--batch 4 --seq 512 --heads 6 --kv-heads 1 --head-dim 64] [--rounds 5] [--blocks 32,64]

Times value_and_grad of sum(attention(q, k, v) * dy) for the XLA path, ours with all query
rows in one block, ours in its default query blocks (model/attention.query_block) and, with
--blocks, in other block sizes, in bfloat16 and float32,
interleaved rounds, medians; prints the largest gradient difference relative to the XLA path's.
"""

from __future__ import annotations

import argparse
import statistics

import jax
import jax.numpy as jnp

from measure import interleaved_ms
from planck.model.attention import causal_attention


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--kv-heads", type=int, default=1)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--blocks", default="", help="also time these query-block sizes, e.g. 32,64,128 (positions per block)")
    args = ap.parse_args()
    B, T, N, K, H = args.batch, args.seq, args.heads, args.kv_heads, args.head_dim
    impls = {"XLA path": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla"),
             "folded, one block": lambda q, k, v: causal_attention(q, k, v, block=T),
             "folded, blocks (ours)": causal_attention}
    for size in (int(b) for b in args.blocks.split(",") if b):
        impls[f"folded, blocks of {size}"] = lambda q, k, v, size=size: causal_attention(q, k, v, block=size)
    for dtype in (jnp.bfloat16, jnp.float32):
        keys = jax.random.split(jax.random.key(0), 4)
        q = jax.random.normal(keys[0], (B, T, N, H), dtype)
        k = jax.random.normal(keys[1], (B, T, K, H), dtype)
        v = jax.random.normal(keys[2], (B, T, K, H), dtype)
        dy = jax.random.normal(keys[3], (B, T, N, H), jnp.float32)
        fns = {name: jax.jit(jax.value_and_grad(lambda q, k, v, f=f: jnp.sum(f(q, k, v).astype(jnp.float32) * dy), (0, 1, 2)))
               for name, f in impls.items()}
        outs = {name: jax.block_until_ready(f(q, k, v)) for name, f in fns.items()}
        ref, ours = outs["XLA path"][1], outs["folded, blocks (ours)"][1]
        err = max(float(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)).max() / jnp.abs(a.astype(jnp.float32)).max())
                  for a, b in zip(ref, ours))
        times = interleaved_ms({name: lambda f=f: f(q, k, v) for name, f in fns.items()}, args.rounds)
        print(f"{jnp.dtype(dtype).name}: B {B}, T {T}, {N} heads / {K} K/V of {H}; gradients within {err:.1e} of the XLA path's")
        for name, t in times.items():
            print(f"  {name:26s} forward + backward {statistics.median(t):8.1f} ms")


if __name__ == "__main__":
    main()
