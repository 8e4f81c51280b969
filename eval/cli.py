"""`planck eval`: score a finished model on bits per byte, multiple choice, GSM8K and fixed samples."""

from __future__ import annotations

import argparse
from pathlib import Path

from .tasks import TASKS  # the registry; it imports its tasks' code only when one runs


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `eval` subcommand."""
    e = sub.add_parser(
        "eval",
        help="score a finished model (bits per byte, ARC, MMLU, GSM8K, sample completions)",
        description="Score a finished model and print a table (task, metric, value, the random-guess baseline beside "
        "it, examples, seconds). Tasks: bpb = loss and bits per byte on a shard folder's val split (needs --data); "
        "arc_easy, arc_challenge, mmlu = accuracy of the answer letter the model weighs most (test splits of "
        "allenai/ai2_arc and cais/mmlu 'all'); gsm8k = exact match of the final number of a greedy solution "
        "(openai/gsm8k main test); sample = completions of a few fixed prompts. Rows stream from the Hugging Face hub "
        "unless --source-path points a task at local files. When --checkpoint is a run folder, the results are also "
        "merged into RUN/eval.json.",
    )
    e.add_argument("--checkpoint", type=Path, required=True,
                   help="a run folder (its final/ is used; results go to RUN/eval.json), a final/ folder, or a .npz from `planck export`")
    e.add_argument("--tasks", default=None, metavar="TASK[,TASK...]",
                   help=f"comma-separated, from {', '.join(TASKS)} (default: all; bpb only when --data is given)")
    e.add_argument("--limit", type=int, default=None, metavar="N",
                   help="score only the first N valid rows of each task (first N prompts of sample; N batches of bpb)")
    e.add_argument("--json", action="store_true", help="print one JSON object of the results instead of the table")
    e.add_argument("--data", type=Path, default=None, metavar="SHARD_FOLDER",
                   help="a shard folder made by `planck tokenize` (pretrain or chat): bpb scores its val split")
    e.add_argument("--source-path", action="append", default=[], metavar="TASK=PATH",
                   help="read TASK's rows (arc_easy, arc_challenge, mmlu, gsm8k) from local .parquet/.jsonl files, a glob "
                   "or a hub-like folder of the same schema instead of the hub (repeatable)")
    e.add_argument("--batch-size", type=int, default=8, metavar="N",
                   help="prompts per forward pass for multiple choice, windows per batch for bpb (default 8)")
    e.add_argument("--max-new-tokens", type=int, default=256, metavar="N",
                   help="longest GSM8K solution in tokens (default 256; sample completions stop at 64)")
    e.add_argument("--seed", type=int, default=0,
                   help="seed of the one sampled (temperature 0.7) sample prompt; every other task is greedy (default 0)")
    e.set_defaults(handler=_eval)


def _eval(args: argparse.Namespace) -> int:
    import json
    import sys

    from .errors import EvalError
    from .tasks import Settings, parse_source_paths, parse_tasks

    names = parse_tasks(args.tasks, args.data is not None)
    sources = parse_source_paths(args.source_path)
    for flag, value, low in (("--limit", args.limit, 1), ("--batch-size", args.batch_size, 1),
                             ("--max-new-tokens", args.max_new_tokens, 1), ("--seed", args.seed, 0)):
        if value is not None and value < low:
            raise EvalError(f"{flag} {value}: expected at least {low}")
    if args.seed >= 2**32:
        raise EvalError(f"--seed {args.seed}: expected less than 2**32")
    unused = sorted(set(sources) - set(names))
    if unused:
        print(f"planck eval: note: --source-path for {', '.join(unused)}, which --tasks does not run", file=sys.stderr)
    settings = Settings(limit=args.limit, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                        seed=args.seed, data=args.data, source_paths=sources)

    from planck.model.weights import resolve
    from planck.serve.weights import load_for_serving

    from .report import eval_json_path, format_table, jsonable, merge_eval_json, nothing_scored
    from .tasks import Context, PreparedRows, run_task

    resolve(args.checkpoint)  # a wrong path fails before any rows are read
    # Every task's rows and files first: a bad file or an unreachable hub fails before the model loads.
    prepared = {name: TASKS[name].prepare(name, settings) for name in names}
    out_path = eval_json_path(args.checkpoint)
    # A task that scores nothing fails, and its n-0 result never replaces an earlier score in eval.json.
    failed = {name: nothing_scored(name, p.reader.read, p.reader.skipped)
              for name, p in prepared.items() if isinstance(p, PreparedRows) and p.empty}
    if len(failed) == len(names):
        raise EvalError(_failure_line(failed, out_path))  # before the model loads: nothing could be scored
    loaded = load_for_serving(args.checkpoint)
    model_info = {"name": loaded.name, "phase": loaded.meta.get("phase"), "step": loaded.meta.get("step"),
                  "chat": loaded.is_chat, "dtype": loaded.config.compute_dtype}
    ctx = Context(loaded, settings)
    summaries: dict[str, dict] = {}
    try:
        for name in names:
            if name in failed:
                continue
            summary = jsonable(run_task(name, prepared.pop(name), ctx).summary)
            if summary.get("n") == 0:
                failed[name] = nothing_scored(name, summary.get("read", 0), summary.get("skipped") or {})
                continue
            summaries[name] = summary
            if out_path is not None:  # after every task: a long run keeps what it finished
                merge_eval_json(out_path, {name: summaries[name]}, str(loaded.source), model_info)
    finally:
        ctx.close()
    if summaries and args.json:
        print(json.dumps({"checkpoint": str(loaded.source), "model": model_info, "tasks": summaries,
                          **({"failed": failed} if failed else {})}, indent=2))
    elif summaries:
        print(f"{loaded.source} ({'chat' if loaded.is_chat else 'base'} model, {loaded.meta.get('phase')} "
              f"step {loaded.meta.get('step')})")
        print(format_table(summaries))
        if out_path is not None:
            print(f"results merged into {out_path}")
    if failed:
        sys.stdout.flush()
        raise EvalError(_failure_line(failed, out_path))
    return 0


def _failure_line(failed: dict[str, str], out_path: Path | None) -> str:
    """One line for the tasks that scored nothing, and that eval.json kept what it had for them."""
    kept = f"; {out_path} keeps its earlier results for {'it' if len(failed) == 1 else 'them'}" if out_path else ""
    return "; ".join(failed.values()) + kept
