"""Where the compiled train step's time goes: top XLA ops (fusions) from a jax.profiler trace.

    .venv/bin/python bench/profile_train_step.py [--shape 4,128,4,256,8,4 | --config tiny] [--steps 3] [--top 15]

Runs the same step as bench/train_step.py --compare-original at that shape, traces a few steps
(perfetto trace, no extra packages needed) and sums the duration of each op event by name.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import tempfile

import jax
from train_step import build, shape_overrides

from planck.train.step import train_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="4,128,4,256,8,4", help="layers,d_model,heads,seq,micro_batch,accum")
    ap.add_argument("--config", default=None, help="a preset instead of --shape (e.g. tiny)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--hlo", default=None, help="write the optimized HLO of the step here")
    args = ap.parse_args()
    if args.config:
        cfg, model, opt, batch, _ = build(args.config, [])
    else:
        cfg, model, opt, batch, _ = build("planck150m", shape_overrides(*map(int, args.shape.split(","))))
    float(train_step(model, opt, batch)[0])
    float(train_step(model, opt, batch)[0])
    if args.hlo:
        with open(args.hlo, "w") as f:
            f.write(train_step.lower(model, opt, batch).compile().as_text())
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(args.steps):
                float(train_step(model, opt, batch)[0])
        path = glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)[0]
        trace = json.load(gzip.open(path))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    threads = {(e.get("pid"), e.get("tid")): e["args"].get("name", "") for e in events
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    by_name = collections.Counter()
    for e in events:
        if e.get("ph") != "X":
            continue
        name, dur = e.get("name", ""), float(e.get("dur", 0))
        thread = threads.get((e.get("pid"), e.get("tid")), "")
        if "XLAEigen" in thread and not name.startswith("ThunkExecutor"):
            by_name[name] += dur  # summed over the worker threads
    ops = list(by_name.items())
    if args.hlo:  # group by where the op comes from (its metadata op_name in the optimized HLO)
        import re
        origin = {}
        for line in open(args.hlo):
            m = re.match(r"\s*(?:ROOT )?%([\w.-]+) = .*op_name=\"([^\"]+)\"", line)
            if m:
                origin[m.group(1)] = m.group(2)
        def category(name: str) -> str:
            o = origin.get(name, "")
            if "/while/body/" not in o and not o.startswith("jit(train_step)/while"):
                return "outside the micro-batch scan (optimizer, clipping, norms)" if o else "unattributed (no metadata)"
            if "/jvp()/while/body/" in o:
                return "micro-batch: fused loss chunks (head matmuls, soft-cap, CE)"
            return "micro-batch backward (blocks)" if "transpose(" in o else "micro-batch forward (blocks, embedding)"
        groups = collections.Counter()
        for name, dur in ops:
            groups[category(name)] += dur
        tot = sum(groups.values())
        for g, dur in groups.most_common():
            print(f"{100 * dur / tot:5.1f}%  {dur / 1e3 / args.steps:9.2f} ms/step  {g}")
    ops.sort(key=lambda kv: -kv[1])
    total = sum(v for _, v in ops)
    print(f"{len(ops)} op names, {total / 1e3 / args.steps:,.1f} ms of op time per step (sum over threads)")
    for name, dur in ops[: args.top]:
        print(f"{100 * dur / total:5.1f}%  {dur / 1e3 / args.steps:9.2f} ms/step  {name}")


if __name__ == "__main__":
    main()
