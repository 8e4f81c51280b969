"""All benchmark figures beside their ceilings: reads bench/results/*.json, writes bench/results/bench.json, prints a table.

    .venv/bin/python bench/summary.py      # the last step of `make bench`

Each row is {benchmark, figure, value, unit, ceiling, ceiling_is, fraction_of_ceiling, note, source_file}.
A result file that is missing is skipped with a note line under the table; the figures are whatever
the last run of each benchmark left in bench/results/ (see each file's own "device").
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
EXPECTED = {  # file pattern -> the command that writes it
    "tokenize.json": "bench/tokenize_throughput.py",
    "loader.json": "bench/loader_throughput.py",
    "train_step_*.json": "bench/train_step.py --config tiny",
    "decode_*.json": "bench/decode_throughput.py --config tiny",
    "compare_original.json": "bench/train_step.py --compare-original",
}


def row(benchmark, figure, value, unit, source, ceiling=None, ceiling_is=None, note=None) -> dict:
    """One figure; the fraction of its ceiling when both are known."""
    fraction = value / ceiling if value is not None and ceiling else None
    return {"benchmark": benchmark, "figure": figure, "value": value, "unit": unit, "ceiling": ceiling,
            "ceiling_is": ceiling_is, "fraction_of_ceiling": fraction, "note": note, "source_file": source}


def tokenize_rows(d: dict, source: str) -> list[dict]:
    """Marginal tokens/s of the tokenizer job per worker count, beside raw tiktoken on as many threads."""
    return [row("tokenizer", f"marginal tok/s, {r['workers']} worker{'s' * (r['workers'] > 1)}", r["marginal_tokens_per_s"],
                "tok/s", source, r["raw_tokens_per_s"], "raw tiktoken, same threads") for r in d["rows"]]


def loader_rows(d: dict, source: str, train_step: dict | None) -> list[dict]:
    """Batches/s of each loader per shape beside raw memmap slicing; loader tokens/s beside the tiny train step's."""
    out = [row("loader", f"{r['loader']}, {sh['batch']} x {sh['seq_len']}", r["batches_per_s"], "batches/s", source,
               sh["ceiling_batches_per_s"], "raw memmap slicing")
           for sh in d["shapes"] for r in sh["rows"] if r["batches_per_s"] != sh["ceiling_batches_per_s"]]
    trainer = d.get("trainer")
    if trainer:  # the train step's current figure when there is one, else the one loader.json saw
        step_tps = train_step["tokens_per_s"] if train_step else trainer["train_step_tokens_per_s"]
        out.append(row("loader", f"tokens/s, {trainer['loader']}, vs the train step's", trainer["loader_tokens_per_s"], "tok/s",
                       f"{source} + {trainer['source_file']}", step_tps, "tiny train step's consumption"))
    else:
        out.append(row("loader", "tokens/s vs the train step", None, "tok/s", source,
                       note="no train_step_tiny.json when the loader ran"))
    return out


def memory_rows(name: str, d: dict, source: str) -> list[dict]:
    """Peak device memory beside the device's limit, and peak process RSS beside the host's RAM."""
    out = []
    if d.get("peak_device_bytes") is not None:
        out.append(row(name, "peak device memory", d["peak_device_bytes"], "bytes", source, d.get("device_limit_bytes"), "device memory"))
    if d.get("peak_rss_bytes") is not None:
        out.append(row(name, "peak process RSS", d["peak_rss_bytes"], "bytes", source, d.get("host_ram_bytes"), "host RAM"))
    if not out:
        out.append(row(name, "peak memory", None, "bytes", source, note="not recorded (older result file)"))
    return out


def train_step_rows(d: dict, source: str) -> list[dict]:
    """Tokens/s beside the peak FLOP/s' worth of tokens, compile time, MFU, peak memory."""
    name = f"train step ({d['config']})"
    peak = d.get("peak_flops") or (d["flops_per_token"] * d["tokens_per_s"] / d["mfu"] if d.get("mfu") else None)
    cpu = d["device"].lower() == "cpu"
    unknown = "n/a on CPU" if cpu else "peak FLOP/s unknown"
    return [
        row(name, "tokens/s", d["tokens_per_s"], "tok/s", source, peak / d["flops_per_token"] if peak else None,
            "peak FLOP/s / FLOPs per token", None if peak else unknown),
        row(name, "compile", d["compile_s"], "s", source),
        row(name, "MFU", d.get("mfu"), "fraction", source, note=None if d.get("mfu") is not None else unknown),
        *memory_rows(name, d, source),
    ]


def compare_rows(d: dict, source: str) -> list[dict]:
    """Our train step's tokens/s beside the original PlanckGPT's at the same shape (interleaved rounds), and peak RSS."""
    out = []
    for s in d["shapes"]:
        sh = s["shape"]
        name = "tiny" if s.get("preset") == "tiny" else ",".join(str(sh[k]) for k in ("layers", "d_model", "heads", "seq", "micro_batch", "accum"))
        spread = f"ratio {s['ratio_median']:.2f} [{s['ratio_min']:.2f}-{s['ratio_max']:.2f}] over {len(s['rounds'])} rounds"
        out.append(row("vs original", f"train step tok/s, shape {name}", s["ours_tokens_per_s"], "tok/s", source,
                       s["original_tokens_per_s"], "the original's own loop, same shape", spread))
        out.append(row("vs original", f"peak RSS, shape {name}", s["ours_peak_rss_mb"], "MB", source,
                       s["original_peak_rss_mb"], "the original's peak RSS"))
    return out


def decode_rows(d: dict, source: str) -> list[dict]:
    """Prefill, time to first token, decode at batch 1 and N concurrent beside the bandwidth ceilings, peak memory."""
    name = f"decode ({Path(d['config']).name})"
    bw = f"memory bandwidth, {d['bandwidth_source']}"
    out = [row(name, f"prefill ({d['prompt_tokens']} tokens)", d["prefill_tok_s"], "tok/s", source),
           row(name, "time to first token", d["ttft_s"], "s", source),
           row(name, "decode, batch 1", d["decode_tok_s_batch1"], "tok/s", source, d["ceiling_tok_s_batch1"], bw)]
    for n in sorted(int(m.group(1)) for k in d if (m := re.fullmatch(r"decode_tok_s_(\d+)_concurrent", k))):
        out.append(row(name, f"decode, {n} concurrent", d[f"decode_tok_s_{n}_concurrent"], "tok/s", source,
                       d.get(f"ceiling_tok_s_{n}_concurrent"), bw))
    return out + memory_rows(name, d, source)


def fmt_value(value, unit: str) -> str:
    """A figure with its unit, readable."""
    if value is None:
        return ""
    if unit == "fraction":
        return f"{value:.1%}"
    if unit == "bytes":
        return f"{value / 1e9:,.2f} GB" if value >= 1e9 else f"{value / 1e6:,.0f} MB"
    if unit == "s":
        return f"{value * 1e3:,.1f} ms" if value < 1 else f"{value:,.2f} s"
    return f"{value:,.0f} {unit}" if value >= 100 else f"{value:,.1f} {unit}"


def fmt_fraction(f: float | None) -> str:
    """A percentage, or a multiple once the figure is well past its comparison."""
    if f is None:
        return ""
    return f"{f:,.0f}x" if f >= 10 else f"{f:.1f}x" if f >= 2 else f"{f:.0%}" if f >= 0.1 else f"{f:.1%}"


def machine() -> dict:
    """This machine: architecture, cores, Python, and JAX's first device."""
    info = {"machine": platform.machine(), "cpu_count": os.cpu_count(), "python": platform.python_version()}
    try:
        import jax

        info.update(jax_version=jax.__version__, device_kind=jax.devices()[0].device_kind, device_count=jax.device_count())
    except RuntimeError as e:  # no usable backend: the summary must not fail for want of a device
        info.update(device_kind=None, device_error=str(e))
    return info


def main() -> None:
    """Collect, write, print."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args()
    res: Path = args.results
    load = lambda p: json.loads(p.read_text())
    rows, notes = [], []
    for pattern, command in EXPECTED.items():
        if not list(res.glob(pattern)):
            notes.append(f"no {pattern} in {res}: run {command}")
    if (p := res / "tokenize.json").exists():
        rows += tokenize_rows(load(p), p.name)
    if (p := res / "loader.json").exists():
        step = res / "train_step_tiny.json"
        rows += loader_rows(load(p), p.name, load(step) if step.exists() else None)
    for p in sorted(res.glob("train_step_*.json")):
        rows += train_step_rows(load(p), p.name)
    for p in sorted(res.glob("decode_*.json")):
        rows += decode_rows(load(p), p.name)
    if (p := res / "compare_original.json").exists():
        rows += compare_rows(load(p), p.name)

    sources = sorted({s for r in rows for s in r["source_file"].split(" + ")})
    result = {
        "generated": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        **machine(),
        "source_files": {s: datetime.datetime.fromtimestamp((res / s).stat().st_mtime).astimezone().isoformat(timespec="seconds")
                         for s in sources},
        "rows": rows, "notes": notes,
    }
    res.mkdir(parents=True, exist_ok=True)
    (res / "bench.json").write_text(json.dumps(result, indent=2) + "\n")

    print(f"{result['machine']}, {result['cpu_count']} cores, Python {result['python']}, JAX device: {result['device_kind']}\n")
    print("| benchmark | figure | value | ceiling | of ceiling |")
    print("|---|---|---|---|---|")
    for r in rows:
        value = fmt_value(r["value"], r["unit"]) or r["note"] or ""
        ceiling = f"{fmt_value(r['ceiling'], r['unit'])} ({r['ceiling_is']})" if r["ceiling"] is not None else (
            r["note"] if r["value"] is not None and r["note"] else "")
        print(f"| {r['benchmark']} | {r['figure']} | {value} | {ceiling} | {fmt_fraction(r['fraction_of_ceiling'])} |")
    if notes:
        print("\n" + "\n".join(f"note: {n}" for n in notes))
    print(f"\n-> {res / 'bench.json'}")


if __name__ == "__main__":
    main()
