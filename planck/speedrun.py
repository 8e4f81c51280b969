"""`planck speedrun` (`make speedrun`): raw data to a chat model in one command, every phase resumable.

    shards (pretrain, midtrain, sft) -> pretrain -> midtrain -> sft -> eval -> report

Each phase is the same `planck` command a user would type, so re-running the speedrun continues
where it stopped: finished shard folders and runs are kept, an interrupted one resumes from its
last checkpoint, and a run whose eval.json already holds every task (written after its final
weights) is not evaluated again. The estimated time comes from `planck plan` before anything starts. On a CPU only
the tiny config is allowed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

PHASES = ("pretrain", "midtrain", "sft")
# What each phase is evaluated on, by data source (the embedded demo has no benchmark rows).
EVAL_TASKS = {"embedded": ["bpb", "sample"], "hub": ["bpb", "sample", "arc_easy", "arc_challenge", "mmlu", "gsm8k"]}


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `speedrun` subcommand."""
    s = sub.add_parser(
        "speedrun",
        help="shards -> pretrain -> midtrain -> sft -> eval -> report in one command (each phase resumable)",
        description="Run the whole pipeline with one config: tokenize the three datasets, train the three phases "
        "(each from the previous one's weights), evaluate and write the report cards. Re-running continues where it "
        "stopped. --source embedded uses the built-in offline data (Python's own prose and the demo chat set).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    s.add_argument("--config", default="planck150m", help="preset (tiny, planck150m) or a .toml file")
    s.add_argument("--tokens", help="pretraining token budget (3B, 500M, ...), both tokenized and trained on; "
                   "default: 3B tokenized, the config's steps trained")
    s.add_argument("--source", choices=("hub", "embedded"), default="hub",
                   help="hub: Fineweb-edu and the chat mixtures; embedded: offline demo data")
    s.add_argument("--shards", type=Path, default=Path("shards"), help="where the shard folders go")
    s.add_argument("--runs", type=Path, default=Path("runs"), help="where the run folders go")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to every training phase")
    s.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: all cores)")
    s.set_defaults(handler=_speedrun)


def phase_overrides(args: argparse.Namespace, phase: str) -> list[str]:
    """The --set values a phase trains with: the user's, and the token budget for pretraining."""
    return list(args.overrides) + ([f"train.tokens={args.tokens}"] if args.tokens and phase == "pretrain" else [])


def steps(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(what, planck arguments) for every step of the run, in order."""
    import os

    workers = str(args.workers or os.cpu_count() or 1)
    sh = args.shards / ("demo" if args.source == "embedded" else "")
    data = {p: sh / p for p in PHASES}
    if args.source == "embedded":
        data["midtrain"] = data["sft"] = sh / "sft"
        tokenize = [
            ("tokenize pretrain", ["tokenize", "pretrain", "--source", "embedded", "--out", str(data["pretrain"]),
                                   "--max-tokens", "400k", "--val-tokens", "40k", "--shard-tokens", "200k", "--workers", workers]),
            ("tokenize chat", ["tokenize", "chat", "--mixture", "demo", "--out", str(data["sft"]), "--val-rows", "40",
                               "--workers", "1"]),
        ]
    else:
        tokenize = [
            # A budget tokenizes what it trains on (a 100M trial need not fetch 3B); without one, tokenize's 3B.
            ("tokenize pretrain", ["tokenize", "pretrain", "--out", str(data["pretrain"]), "--workers", workers,
                                   *(["--max-tokens", args.tokens] if args.tokens else [])]),
            ("tokenize midtrain", ["tokenize", "chat", "--mixture", "midtrain", "--out", str(data["midtrain"]),
                                   "--val-rows", "5000", "--workers", workers]),
            ("tokenize sft", ["tokenize", "chat", "--mixture", "sft", "--out", str(data["sft"]), "--val-rows", "500",
                              "--workers", workers]),
        ]
    train = []
    for i, phase in enumerate(PHASES):
        init = ["--init-from", str(args.runs / PHASES[i - 1])] if i else []
        sets = [x for o in phase_overrides(args, phase) for x in ("--set", o)]
        train.append((f"train {phase}", ["train", phase, "--config", args.config, "--data", str(data[phase]),
                                         "--run-dir", str(args.runs / phase), *init, *sets]))
    evaluate = [(f"eval {phase}", ["eval", "--checkpoint", str(args.runs / phase), "--data", str(data[phase]),
                                   "--tasks", ",".join(EVAL_TASKS[args.source])])
                for phase in PHASES]
    report = [("report", ["report", *(str(args.runs / p) for p in PHASES), "--out", str(args.runs / "report.md")])]
    return tokenize + train + evaluate + report


def already_evaluated(run: Path, tasks: list[str]) -> bool:
    """True when the run's eval.json already holds every task, written after the final weights it scores."""
    import json

    results, weights = run / "eval.json", run / "final" / "model.json"
    try:
        done = json.loads(results.read_text()).get("tasks") or {}
        return set(tasks) <= set(done) and results.stat().st_mtime_ns >= weights.stat().st_mtime_ns
    except (OSError, ValueError, AttributeError):  # no results yet, or unreadable ones: evaluate
        return False


def _estimate(pretrain_cfg) -> str:
    """The pretraining phase's time from `planck plan`'s figures (the other phases are a few percent of it)."""
    from planck.train.plan import make_plan

    plan = make_plan(pretrain_cfg, find_largest=False)
    if plan.hours is None:
        return ("no estimate: this device's peak FLOP/s is unknown (PLANCK_PEAK_TFLOPS=N make speedrun gives it, "
                "in dense bf16 TFLOP/s per device)")
    return (f"pretraining ~{plan.hours:.1f} h at 40% MFU ({plan.steps:,} steps of {plan.tokens_per_step:,} tokens); "
            "midtrain and sft add a few percent")


def _speedrun(args: argparse.Namespace) -> int:
    import jax

    from planck.cli import main as planck_main

    if jax.default_backend() == "cpu" and args.config != "tiny":
        print(f"planck: error: speedrun --config {args.config} on a CPU would take weeks: use --config tiny here, "
              "or a GPU (make install ACCEL=cuda12; planck doctor)", file=sys.stderr)
        return 1
    from planck.train.config import load_config

    # Every phase's settings are checked before hours of tokenizing, not when its turn comes.
    configs = {phase: load_config(args.config, phase, phase_overrides(args, phase)) for phase in PHASES}
    print(f"planck speedrun ({args.config}, {args.source} data): {_estimate(configs['pretrain'])}", flush=True)
    started = time.perf_counter()
    for what, argv in steps(args):
        print(f"\n== {what}: planck {' '.join(argv)}", flush=True)
        if what.startswith("eval ") and already_evaluated(args.runs / what.removeprefix("eval "), EVAL_TASKS[args.source]):
            print(f"== {what}: already evaluated (eval.json is newer than the final weights): nothing to do", flush=True)
            continue
        t0 = time.perf_counter()
        rc = planck_main(argv)
        if rc:
            print(f"planck speedrun: stopped at `{what}` (exit {rc}); fix what it says and re-run `make speedrun`: "
                  "finished phases are kept", file=sys.stderr)
            return rc
        print(f"== {what}: {time.perf_counter() - t0:,.0f} s", flush=True)
    print(f"\nplanck speedrun: done in {(time.perf_counter() - started) / 60:,.1f} min; "
          f"report {args.runs / 'report.md'}; chat with: planck chat --checkpoint {args.runs / 'sft'}")
    return 0
