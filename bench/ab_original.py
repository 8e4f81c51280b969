"""A/B of the kit's earlier choices against the original PlanckGPT's, one at a time and all four, at tiny on the embedded corpus.

    TIKTOKEN_CACHE_DIR=.cache/tiktoken .venv/bin/python bench/ab_original.py [--seeds 0 1 2] [--steps 200] [--variants ...]

Every variant trains `planck train pretrain --config tiny` from scratch on the same shards, with
the same seed (the same initial draws and the same batches in the same order), for the same
steps, and is scored on the whole validation split (train.eval_batches large enough to take
every window) at the last step. Only the --set overrides of the variant differ. The shards are the
ones `make demo-shards` writes (the same command line), kept in --work so no other run touches them.
Prints one row per variant: val bpb per seed, mean, spread (max - min) and the mean difference
from `ours`; bench/results/ab_original.json keeps the figures and the command of every run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLANCK = [sys.executable, "-m", "planck.cli"]

# name -> every --set the variant runs with (explicit, so a rerun measures the same whatever the defaults):
# "ours" is the kit's choices before this A/B, each other variant changes one of them to the original's.
OURS = ["optim.adam_eps=1e-10", "optim.clip=global", "model.init=uniform_fan_in", "model.head_init_std=0.001"]
ORIGINAL = ["optim.adam_eps=1e-8", "optim.clip=per_group", "model.init=original", "model.head_init_std=0"]
VARIANTS: dict[str, list[str]] = {
    "ours": OURS,
    "adam_eps_1e-8": [ORIGINAL[0], *OURS[1:]],
    "clip_per_group": [OURS[0], ORIGINAL[1], *OURS[2:]],
    "init_original": [*OURS[:2], ORIGINAL[2], OURS[3]],
    "head_zeros": [*OURS[:3], ORIGINAL[3]],
    "all_original": ORIGINAL,
}

# make demo-shards' pretraining command (Makefile), into the A/B's own folder.
SHARDS_ARGS = ["--source", "embedded", "--max-tokens", "400k", "--val-tokens", "40k", "--shard-tokens", "200k"]


def sh(argv: list[str]) -> None:
    """Run a command from the repository root; stop with its output if it fails."""
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"failed: {' '.join(argv)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def shards(work: Path) -> Path:
    """The demo's pretraining shards under work/ (tokenized once, ~15 s)."""
    out = work / "shards" / "pretrain"
    if not (out / "manifest.json").exists():
        sh(PLANCK + ["tokenize", "pretrain", *SHARDS_ARGS, "--out", str(out), "--workers", "1", "--quiet"])
    return out


def train(data: Path, run_dir: Path, seed: int, steps: int, overrides: list[str]) -> tuple[float, float, str]:
    """(val bpb, val loss) at the last step of one fresh run, and its command line."""
    sets = [f"seed={seed}", f"train.steps={steps}", f"train.eval_every={steps}", "train.eval_batches=100000",
            f"train.checkpoint_every={steps}", *overrides]
    argv = PLANCK + ["train", "pretrain", "--config", "tiny", "--data", str(data), "--run-dir", str(run_dir), "--quiet"]
    for s in sets:
        argv += ["--set", s]
    if run_dir.exists():  # a fresh run every time: a finished one would be kept as it is
        subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    sh(argv)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    last = [r for r in rows if "val_bpb" in r][-1]
    assert last["step"] == steps, last
    shown = ["planck"] + argv[len(PLANCK):]
    return float(last["val_bpb"]), float(last["val_loss"]), " ".join(shown)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "ab")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "ab_original.json")
    args = ap.parse_args()
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(REPO / ".cache" / "tiktoken"))
    data = shards(args.work)
    results: dict[str, dict[int, dict]] = {v: {} for v in args.variants}
    # Seeds outside, variants inside: a machine that slows down midway slows every variant alike.
    for seed in args.seeds:
        for name in args.variants:
            t0 = time.perf_counter()
            bpb, loss, cmd = train(data, args.work / f"{name}-s{seed}", seed, args.steps, VARIANTS[name])
            results[name][seed] = {"val_bpb": bpb, "val_loss": loss, "command": cmd, "wall_s": round(time.perf_counter() - t0, 1)}
            print(f"seed {seed} {name:15s} val bpb {bpb:.4f}  val loss {loss:.4f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    base = statistics.mean(r["val_bpb"] for r in results["ours"].values()) if "ours" in results else None
    head = f"| variant | --set | {' | '.join(f'seed {s}' for s in args.seeds)} | mean | spread | vs ours |"
    print("\n" + head + "\n|" + "---|" * (head.count("|") - 1))
    for name in args.variants:
        vals = [results[name][s]["val_bpb"] for s in args.seeds]
        mean = statistics.mean(vals)
        delta = f"{mean - base:+.4f}" if base is not None else "-"
        sets = " ".join(x for x in VARIANTS[name] if x not in OURS or name == "ours")
        print(f"| {name} | {sets} | {' | '.join(f'{v:.4f}' for v in vals)} | {mean:.4f} | {max(vals) - min(vals):.4f} | {delta} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"steps": args.steps, "seeds": args.seeds, "variants": VARIANTS, "results": results}, indent=2))
    print(f"\n{args.out}")


if __name__ == "__main__":
    main()
