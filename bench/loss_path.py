"""The loss path alone (head matmul, soft-cap, cross-entropy, and their gradients), old vs fused, interleaved.

    .venv/bin/python bench/loss_path.py N D [CHUNK ...] [--h32]

N tokens of random (N, D) hidden states against a (D, 50304) head: value_and_grad of the
straightforward loss (2-D logits, log_softmax, take_along_axis; autodiff) and of
model/loss.py's softcapped_ce_sum at each CHUNK, timed in rounds (each variant once per round),
medians. --h32: float32 hidden states (float32 compute, like the tiny preset), else bfloat16.
"""
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from planck.model import loss as M

N, D, V = int(sys.argv[1]), int(sys.argv[2]), 50304
f32, bf = jnp.float32, jnp.bfloat16
k = jax.random.split(jax.random.key(0), 3)
DT = f32 if "--h32" in sys.argv else bf
h = jax.random.normal(k[0], (N, D)).astype(DT)
w = jax.random.normal(k[1], (D, V)) * 0.05
tg = jax.random.randint(k[2], (N,), 0, V)
m = jnp.ones((N,), f32)


def ref(h, w):
    z = jnp.dot(h, w.astype(DT), preferred_element_type=f32)
    logits = 15 * jnp.tanh(z / 15)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), tg[:, None], -1)[:, 0]
    return jnp.sum(jnp.where(m > 0, nll * m, 0.0))


fns = {"reference autodiff": jax.jit(jax.value_and_grad(ref, (0, 1)))}
chunks = [int(c) for c in sys.argv[3:] if not c.startswith("-")]
for chunk in chunks:
    f = jax.jit(jax.value_and_grad(lambda h, w, c=chunk: M.softcapped_ce_sum(h, w, tg, m, 15.0, c), (0, 1)))
    jax.block_until_ready(f(h, w))
    fns[f"fused chunk={chunk}"] = f
jax.block_until_ready(fns["reference autodiff"](h, w))
times = {n: [] for n in fns}
for _ in range(4):
    for n, f in fns.items():
        t0 = time.perf_counter()
        jax.block_until_ready(f(h, w))
        times[n].append(time.perf_counter() - t0)
base = np.median(times["reference autodiff"])
for n, t in times.items():
    print(f"{n:40s} {1e3 * np.median(t):8.1f} ms  x{base / np.median(t):5.2f} vs reference", flush=True)
