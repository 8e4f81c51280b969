"""Serving figures: prefill tokens/s, time to first token, decode tokens/s at batch 1 and 8, beside the memory-bandwidth ceiling.

    .venv/bin/python bench/decode_throughput.py --config tiny [--checkpoint RUN] [--set model.seq_len=256]

Random weights of the preset unless --checkpoint is given (speed does not depend on the values).
Everything goes through the real serving path: Engine (compiled prefill/decode, KV cache) and
Batcher (slots, text streaming). The ceiling: a decode step must read every weight and the cached
keys/values of each busy slot once, so steps/s <= memory bandwidth / bytes read per step;
bandwidth is measured here with a large numpy copy (CPU) or taken from the GPU's data sheet.
Writes bench/results/decode_<config>.json, with the peak memory (device on GPU, process RSS always).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from measure import peak_memory

from planck.model.gpt import GPT
from planck.model.weights import LoadedModel
from planck.serve.batcher import Batcher, SamplingParams, TextDelta
from planck.serve.engine import Engine, SlotSampling
from planck.serve.weights import load_for_serving, serving_dtype
from planck.train.config import load_config

# HBM bandwidth in bytes/s of the GPUs we know (data sheets).
GPU_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12, "RTX 4090": 1.01e12}


def host_bandwidth() -> float:
    """Bytes/s of a 512 MB numpy copy (read + write counted), best of 3."""
    src = np.ones(64 * 2**20, np.float64)
    dst = np.empty_like(src)
    best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(3))
    return 2 * src.nbytes / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bandwidth() -> tuple[float, str]:
    """The device's memory bandwidth and where the figure comes from."""
    kind = jax.devices()[0].device_kind
    for name, bw in GPU_BANDWIDTH.items():
        if name in kind:
            return bw, f"{kind} data sheet"
    return host_bandwidth(), "measured numpy copy"


def random_model(preset: str, overrides: list[str], dtype: str | None) -> LoadedModel:
    """The preset's model in the serving dtype, with its parameters stored in it, as load_for_serving does."""
    cfg = load_config(preset, "sft", overrides).model
    cfg.compute_dtype = serving_dtype(cfg.compute_dtype, dtype)
    model = GPT(cfg, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree_util.tree_map(lambda x: x.astype(jnp.dtype(cfg.compute_dtype)), state))
    return LoadedModel(model, cfg, {"chat": False}, Path(preset))


def timed_request(batcher: Batcher, prompt: list[int], max_tokens: int, seed: int) -> dict:
    """Submit one request; time to its first token and its decode rate after that."""
    t0 = time.perf_counter()
    first = None
    done = None
    for event in batcher.stream(prompt, SamplingParams(temperature=1.0, max_tokens=max_tokens, seed=seed)):
        if first is None:
            first = time.perf_counter()
        if not isinstance(event, TextDelta):
            done = event
    end = time.perf_counter()
    return {"ttft_s": first - t0, "tokens": done.completion_tokens, "decode_s": end - first, "wall_s": end - t0}


def main() -> None:
    """Measure and print."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--concurrent", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default=None, help="serving dtype (default: float32 on CPU, the model's on GPU)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="folder for the JSON")
    args = ap.parse_args()
    loaded = load_for_serving(args.checkpoint, args.dtype) if args.checkpoint else random_model(args.config, args.overrides, args.dtype)
    cfg = loaded.config
    # One slot, as `planck chat` runs, for the single-user figures; --concurrent slots as `planck serve` runs.
    engine = Engine(loaded, slots=1)
    t0 = time.perf_counter()
    engine.warm_up()
    compile_s = time.perf_counter() - t0
    batcher = Batcher(engine, chat=False)
    rng = np.random.default_rng(0)
    prompt_len = engine.context // 2
    prompt = rng.integers(0, 50000, prompt_len).tolist()
    gen = engine.context - prompt_len  # until the context is full (random weights rarely stop earlier)

    # Prefill alone: the compiled call on a full bucket, synchronised.
    sampling = SlotSampling.zeros(engine.slots)
    prefill_s = min(_timed(lambda: engine.prefill(0, prompt, sampling)[0].block_until_ready()) for _ in range(args.repeats))

    single = min((timed_request(batcher, prompt, gen, s) for s in range(args.repeats)), key=lambda r: r["wall_s"])
    decode1 = (single["tokens"] - 1) / single["decode_s"]
    batcher.close()

    engine_n = Engine(loaded, slots=args.concurrent)
    engine_n.warm_up()
    batcher = Batcher(engine_n, chat=False)
    results: list[dict] = []
    threads = [threading.Thread(target=lambda s=s: results.append(timed_request(batcher, prompt, gen, s)))
               for s in range(args.concurrent)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    batcher.close()
    decode_n = sum(r["tokens"] for r in results) / wall

    bw, bw_source = bandwidth()
    cache_row = engine_n.cache_bytes / engine_n.slots / engine_n.context  # bytes of K+V per slot per position
    mean_pos = prompt_len + gen / 2
    step_bytes_1 = engine.weight_bytes + cache_row * mean_pos
    step_bytes_n = engine.weight_bytes + args.concurrent * cache_row * mean_pos
    out = {
        "config": args.config if not args.checkpoint else str(args.checkpoint),
        "device": jax.devices()[0].device_kind, "context": engine.context, "prompt_tokens": prompt_len,
        "weight_bytes": engine.weight_bytes, "cache_bytes": engine_n.cache_bytes, "compile_s": compile_s,
        "prefill_tok_s": prompt_len / prefill_s, "ttft_s": single["ttft_s"],
        "decode_tok_s_batch1": decode1, f"decode_tok_s_{args.concurrent}_concurrent": decode_n,
        "bandwidth_bytes_s": bw, "bandwidth_source": bw_source,
        "ceiling_tok_s_batch1": bw / step_bytes_1, f"ceiling_tok_s_{args.concurrent}_concurrent": args.concurrent * bw / step_bytes_n,
        **peak_memory(),
    }
    print(f"{out['config']} on {out['device']}: {cfg.n_layer} layers, d_model {cfg.d_model}, context {engine.context}, "
          f"weights {engine.weight_bytes / 1e6:.1f} MB ({cfg.compute_dtype}), KV cache {engine_n.cache_bytes / 1e6:.1f} MB "
          f"for {engine_n.slots} slots; compile {compile_s:.1f} s")
    print(f"  prefill           {out['prefill_tok_s']:>10,.0f} tok/s  ({prompt_len}-token prompt, {prefill_s * 1e3:.1f} ms)")
    print(f"  time to 1st token {out['ttft_s'] * 1e3:>10.1f} ms")
    print(f"  decode batch 1    {decode1:>10,.0f} tok/s  ceiling {out['ceiling_tok_s_batch1']:>10,.0f} ({decode1 / out['ceiling_tok_s_batch1']:.0%})")
    ceil_n = out[f"ceiling_tok_s_{args.concurrent}_concurrent"]
    print(f"  decode {args.concurrent} at once  {decode_n:>10,.0f} tok/s  ceiling {ceil_n:>10,.0f} ({decode_n / ceil_n:.0%})")
    print(f"  bandwidth {bw / 1e9:.1f} GB/s ({bw_source})")
    print(f"  peak RSS {out['peak_rss_bytes'] / 1e6:,.0f} MB"
          + (f", peak device {out['peak_device_bytes'] / 1e6:,.0f} MB" if "peak_device_bytes" in out else ""))
    path = args.out / f"decode_{Path(out['config']).name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"  -> {path}")


if __name__ == "__main__":
    main()
