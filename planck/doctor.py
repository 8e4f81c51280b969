"""`planck doctor`: what a run on this machine will use, and one line per problem that would stop it.

Backend and devices (with their memory), the JAX stack's versions against the ones pinned, the
tokenizer file, free disk under shards/ and runs/, and whether cudnn flash attention runs for the
model's compute dtype. Exit 0 when nothing would stop a run, 1 otherwise. A version other than the
pinned one is a warning, not a problem: a machine image with its own CUDA build of jax (a cluster's,
a container's) can still run, but not on the releases the tests ran on.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path
from typing import Any

STACK = ("jax", "jaxlib", "flax", "optax", "grain", "orbax-checkpoint", "numpy", "tiktoken")
# Below this much free disk a real run cannot keep its shards (about 6 GB for 3B tokens) or checkpoints.
MIN_FREE_GB = {"shards": 8.0, "runs": 8.0}


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `doctor` subcommand."""
    d = sub.add_parser(
        "doctor",
        help="check what a run on this machine will use (devices, versions, tokenizer, disk, flash attention)",
        description="Print the backend, devices and their memory, the JAX stack's versions (against the pinned ones), "
        "the tokenizer file, free disk under --shards and --runs, and whether cudnn flash attention runs for the "
        "model's dtype. Exits 1 with one line per problem that would stop a run; a version other than the pinned "
        "one is a warning.",
    )
    d.add_argument("--shards", type=Path, default=Path("shards"), help="where shard folders go")
    d.add_argument("--runs", type=Path, default=Path("runs"), help="where run folders go")
    d.add_argument("--dtype", default="bfloat16", help="the compute dtype to try flash attention with")
    d.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    d.set_defaults(handler=_doctor)


def pinned_versions() -> dict[str, str]:
    """{package: version} as pyproject.toml pins them (read from the installed distribution's metadata)."""
    out = {}
    try:
        for req in requires("planckgpt") or []:
            if "==" in req and ";" not in req:
                name, _, ver = req.partition("==")
                out[name.strip().lower()] = ver.strip()
    except PackageNotFoundError:
        pass
    return out


def _free_gb(path: Path) -> float:
    from planck.schemas.atomic import free_bytes

    return free_bytes(path) / 1e9


def flash_attention(dtype: str) -> tuple[bool, str]:
    """(available, why): runs cudnn's fused attention once at the model's head shape."""
    import jax
    import jax.numpy as jnp

    if jax.default_backend() != "gpu":
        return False, f"not on a GPU (backend {jax.default_backend()}): XLA attention is used"
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return False, f"cudnn flash attention needs bfloat16 or float16, not {dtype}: XLA attention is used"
    try:
        q = jnp.ones((1, 128, 6, 128), dtype)
        kv = jnp.ones((1, 128, 1, 128), dtype)
        jax.block_until_ready(jax.nn.dot_product_attention(q, kv, kv, is_causal=True, implementation="cudnn"))
    except Exception as exc:  # cudnn's refusals come as several error types
        return False, f"cudnn refused ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
    return True, "cudnn flash attention runs"


def diagnose(shards: Path, runs: Path, dtype: str) -> dict[str, Any]:
    """Everything doctor reports, with the problems (empty when a run can start) and the warnings."""
    problems: list[str] = []
    warnings: list[str] = []
    info: dict[str, Any] = {"python": sys.version.split()[0]}
    pins = pinned_versions()
    info["versions"] = {}
    for name in STACK:
        try:
            have = version(name)
        except PackageNotFoundError:
            have = None
            problems.append(f"{name} is not installed (make install)")
        info["versions"][name] = have
        if have and name in pins and pins[name] != have:
            warnings.append(f"{name} {have} is installed, the tests ran on {pins[name]} (make install pins it)")
    try:
        import jax

        info["backend"] = jax.default_backend()
        devices = []
        for d in jax.devices():
            stats = d.memory_stats() or {}
            devices.append({"kind": d.device_kind, "platform": d.platform,
                            "memory_gb": round(stats["bytes_limit"] / 1e9, 1) if "bytes_limit" in stats else None})
        info["devices"] = devices
        info["flash_attention"] = dict(zip(("available", "why"), flash_attention(dtype)))
    except Exception as exc:  # a broken JAX install: say so, keep diagnosing the rest
        problems.append(f"JAX cannot start ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})")
    else:
        from planck.model.config import ConfigError
        from planck.train.devices import peak_flops

        try:
            peak = peak_flops()
            info["peak_tflops"] = None if peak is None else round(peak / 1e12, 1)
        except ConfigError as exc:
            problems.append(str(exc))
    from planck.schemas.tokenizer import TokenizerUnavailable, tokenizer_fingerprint

    try:
        info["tokenizer"] = tokenizer_fingerprint().hex()
    except TokenizerUnavailable as exc:
        info["tokenizer"] = None
        problems.append(str(exc))
    info["free_disk_gb"] = {}
    for label, path in (("shards", shards), ("runs", runs)):
        free = _free_gb(path)
        info["free_disk_gb"][str(path)] = round(free, 1)
        if free < MIN_FREE_GB[label]:
            problems.append(f"{path}: {free:.1f} GB free, a real run needs about {MIN_FREE_GB[label]:.0f} GB for its {label}")
    info["problems"] = problems
    info["warnings"] = warnings
    return info


def _doctor(args: argparse.Namespace) -> int:
    info = diagnose(args.shards, args.runs, args.dtype)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        rows = [("python", info["python"]), ("backend", info.get("backend", "?"))]
        for i, d in enumerate(info.get("devices", [])):
            mem = f", {d['memory_gb']} GB" if d["memory_gb"] is not None else ""
            rows.append((f"device {i}", f"{d['kind']} ({d['platform']}{mem})"))
        pins = pinned_versions()
        for name, have in info["versions"].items():
            pin = pins.get(name)
            rows.append((name, f"{have or 'missing'}" + (f" (pinned {pin})" if pin and pin != have else "")))
        rows.append(("tokenizer", f"gpt2+chat fingerprint {info['tokenizer']}" if info["tokenizer"] else "unavailable"))
        for path, free in info["free_disk_gb"].items():
            rows.append((f"free under {path}/", f"{free:,.1f} GB"))
        if "flash_attention" in info:
            rows.append((f"flash attention ({args.dtype})", info["flash_attention"]["why"]))
        if "peak_tflops" in info:
            rows.append(("peak bf16 (MFU, estimates)", f"{info['peak_tflops']:,} TFLOP/s" if info["peak_tflops"]
                         else "unknown for this device: set PLANCK_PEAK_TFLOPS to its dense bf16 TFLOP/s"))
        width = max(len(k) for k, _ in rows)
        for k, v in rows:
            print(f"{k:<{width}}  {v}")
    for w in info["warnings"]:
        print(f"planck doctor: warning: {w}", file=sys.stderr)
    for p in info["problems"]:
        print(f"planck doctor: problem: {p}", file=sys.stderr)
    if not args.json:
        print("ready to run" if not info["problems"] else f"{len(info['problems'])} problem(s)")
    return 1 if info["problems"] else 0
