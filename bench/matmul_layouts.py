"""The blocks' linear gradients on XLA:CPU: autodiff's matmul forms against model/matmul.py's physically transposed ones.

    .venv/bin/python bench/matmul_layouts.py [--n 2048 --d 384 --f 1536] [--rounds 5]

x (N, D), W (D, F), dy (N, F) in bfloat16 with float32 accumulation: the forward x @ W, the
weight gradient x^T @ dy and the input gradient dy @ W^T as autodiff writes them, and the same
two with the transposed operand made a new row-major array first (physical_transpose). Prints
the median time of each and whether XLA gave it its fast 16-bit kernel (a "ynn" fusion) or
converted the operands to float32 first.
"""

from __future__ import annotations

import argparse
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from measure import interleaved_ms
from planck.model.matmul import physical_transpose


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--f", type=int, default=1536)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    k = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k[0], (args.n, args.d), jnp.bfloat16)
    w = jax.random.normal(k[1], (args.d, args.f), jnp.bfloat16)
    dy = jax.random.normal(k[2], (args.n, args.f), jnp.bfloat16)
    f32 = jnp.float32
    cases = {
        "forward x @ W": lambda x, w, dy: jnp.dot(x, w, preferred_element_type=f32),
        "dW = x^T @ dy (autodiff)": lambda x, w, dy: jnp.dot(x.T, dy, preferred_element_type=f32),
        "dW = T(x) @ dy (ours)": lambda x, w, dy: jnp.dot(physical_transpose(x), dy, preferred_element_type=f32),
        "dx = dy @ W^T (autodiff)": lambda x, w, dy: jnp.dot(dy, w.T, preferred_element_type=f32),
        "dx = dy @ T(W) (ours)": lambda x, w, dy: jnp.dot(dy, physical_transpose(w), preferred_element_type=f32),
    }
    jitted = {name: jax.jit(f) for name, f in cases.items()}
    kernel = {}
    for name, f in jitted.items():
        f(x, w, dy).block_until_ready()
        hlo = f.lower(x, w, dy).compile().as_text()
        kernel[name] = "16-bit (ynn)" if "ynn_fusion" in hlo and "convert" not in hlo else "float32 converts"
    times = interleaved_ms({name: lambda f=f: f(x, w, dy) for name, f in jitted.items()}, args.rounds, repeats=5)
    np.testing.assert_allclose(np.asarray(jitted["dW = T(x) @ dy (ours)"](x, w, dy)),
                               np.asarray(jitted["dW = x^T @ dy (autodiff)"](x, w, dy)), rtol=2e-2, atol=1.0)
    print(f"N {args.n}, D {args.d}, F {args.f}, bfloat16, {args.rounds} interleaved rounds")
    for name, t in times.items():
        print(f"  {name:28s} {statistics.median(t):8.2f} ms   {kernel[name]}")


if __name__ == "__main__":
    main()
