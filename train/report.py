"""The report card of a run: `runs/NAME/report.md` (data, model, training, plots, evaluation) and side-by-side comparisons.

Reads only the files a run leaves behind (config.json, metrics.jsonl, final/model.json, eval.json, the
shard folder's manifest.json); it imports neither JAX nor the model unless final/ is missing and the
parameter count has to be computed from the config.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from planck.shards.atomic import atomic_write_text

from .errors import TrainingError

REPORT_NAME = "report.md"
LR_PLOT = "lr.png"
LOSS_PLOT = "loss.png"
EVAL_NAME = "eval.json"
# Keys of an eval.json task that describe the task rather than score it.
EVAL_META_KEYS = ("n", "baseline", "seconds", "samples", "metric", "skipped")
MISSING = "–"


# ---- formatting ---------------------------------------------------------------------------------

def fmt_int(n: Any) -> str:
    """1234567 -> '1,234,567'."""
    return f"{int(n):,}"


def fmt_sig(x: Any, digits: int = 3) -> str:
    """Three significant digits, trailing zeros kept (5.16, 2.03, 0.310, 12.0); losses, bpb and scores."""
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    if x != 0 and (abs(x) >= 10 ** digits or abs(x) < 1e-4):
        return f"{x:.{digits - 1}e}"
    return f"{x:#.{digits}g}".rstrip(".")


def fmt_num(x: Any) -> str:
    """Any number from a JSON file: integers with thousands separators, others with three significant digits."""
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) >= 1000):
        return f"{int(x):,}"
    return fmt_sig(x)


def fmt_setting(x: Any) -> str:
    """A config value as it was given: 0.06 stays 0.06, 50304 reads 50,304, True reads true."""
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return repr(x)
    return str(x)


def fmt_short(n: float) -> str:
    """6529024 -> '6.53M'."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{fmt_sig(n / scale)}{unit}"
    return fmt_num(n)


def fmt_duration(seconds: float) -> str:
    """12.3 s, 4 min 05 s, 2 h 03 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m:02d} min"


def fmt_time(ts: float) -> str:
    """A file time in UTC: '2025-11-25 13:51 UTC'."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def cell(value: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def table(header: list[str], rows: list[list[Any]], align: str | None = None) -> str:
    """A GitHub Markdown table; `align` holds one of 'l', 'r' per column (default: first left, the rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>#|~!{}])")
_LIST_START = re.compile(r"^(\s*)([-+]|\d+\.)(\s)")


def quote(text: str) -> str:
    """`text` as a Markdown block quote that renders literally (model output may hold Markdown or HTML)."""
    lines = []
    for line in str(text).splitlines() or [""]:
        line = _MD_SPECIAL.sub(r"\\\1", line)
        line = _LIST_START.sub(lambda m: m.group(1) + m.group(2).replace(".", "\\.").replace("-", "\\-").replace("+", "\\+") + m.group(3), line)
        lines.append(f"> {line}" if line.strip() else ">")
    return "  \n".join(lines)  # two trailing spaces: a hard line break, so the text keeps its lines


# ---- reading a run folder -----------------------------------------------------------------------

@dataclass
class RunFiles:
    """Everything one run folder holds that a report uses."""

    root: Path
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    final: dict[str, Any] | None
    evals: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def phase(self) -> str:
        return str(self.config.get("phase") or (self.final or {}).get("phase") or "?")

    @property
    def cfg(self) -> dict[str, Any]:
        return self.config.get("config") or {}

    def section(self, name: str) -> dict[str, Any]:
        value = self.cfg.get(name)
        return value if isinstance(value, dict) else {}

    def recorded(self, key: str) -> Any:
        """A value recorded in config.json or final/model.json (the command line, --init-from)."""
        for source in (self.config, self.final or {}):
            if source.get(key) not in (None, "", []):
                return source[key]
        return None


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TrainingError(f"{path}: cannot read the {what} ({exc})") from None


def load_run(run_dir: Path) -> RunFiles:
    """Read a run folder; TrainingError (one line, naming the path) when it is not one."""
    root = Path(run_dir)
    if not root.is_dir():
        raise TrainingError(f"{root}: no such run folder")
    if not (root / "config.json").is_file():
        raise TrainingError(f"{root}: not a run folder (no config.json; `planck train` writes one in --run-dir)")
    config = _read_json(root / "config.json", "run configuration")
    if not isinstance(config, dict):
        raise TrainingError(f"{root / 'config.json'}: not a run configuration (expected a JSON object)")
    notes: list[str] = []
    rows: list[dict[str, Any]] = []
    metrics = root / "metrics.jsonl"
    if metrics.exists():
        for i, line in enumerate(metrics.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                notes.append(f"metrics.jsonl line {i} is not JSON (a write cut short?): skipped")
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
                rows.append(row)
    final = None
    if (root / "final" / "model.json").is_file():
        try:
            final = json.loads((root / "final" / "model.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            notes.append(f"final/model.json is unreadable ({exc})")
    evals = None
    if (root / EVAL_NAME).is_file():
        try:
            evals = json.loads((root / EVAL_NAME).read_text(encoding="utf-8"))
            if not isinstance(evals, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            notes.append(f"{EVAL_NAME} is unreadable ({exc})")
            evals = None
    return RunFiles(root, config, rows, final, evals, notes)


# ---- figures derived from metrics.jsonl -----------------------------------------------------------

@dataclass
class TrainingFigures:
    step: int | None = None
    tokens_seen: int | None = None
    tokens_per_step: int | None = None
    step_seconds: float | None = None  # compile + every logged window
    wall_method: str = ""
    compile_s: float | None = None
    mean_tps: float | None = None  # tokens per second outside the compiling steps
    mfu: float | None = None
    final_loss: float | None = None
    final_grad_norm: float | None = None
    final_val: dict[str, Any] = field(default_factory=dict)
    best_val_loss: tuple[float, int] | None = None
    best_val_bpb: tuple[float, int] | None = None
    val_rows: list[dict[str, Any]] = field(default_factory=list)


def _timestamps(rows: list[dict[str, Any]]) -> list[float]:
    for key in ("time", "timestamp", "wall_time"):
        ts = [float(r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if len(ts) >= 2:
            return ts
    return []


def training_figures(run: RunFiles) -> TrainingFigures:
    """Throughput, wall time, losses; see the Training section for what each figure means."""
    f = TrainingFigures()
    rows = run.rows
    if not rows:
        return f
    last = rows[-1]
    f.step = int(last["step"])
    with_tokens = [r for r in rows if isinstance(r.get("tokens_seen"), (int, float))]
    if with_tokens:
        f.tokens_seen = int(with_tokens[-1]["tokens_seen"])
        first = with_tokens[0]
        f.tokens_per_step = round(first["tokens_seen"] / first["step"]) if first["step"] else None
    # Each log line's tokens_per_sec covers the steps since the line before. The line holding compile_s
    # also covers the compiling step: its rate counts the other steps only, and compile_s is that step's time.
    seconds = run_tokens = 0.0
    compile_total = 0.0
    prev_tokens = 0
    ok = f.tokens_per_step is not None
    for r in rows:
        tps, seen = r.get("tokens_per_sec"), r.get("tokens_seen")
        if not (isinstance(tps, (int, float)) and tps > 0 and isinstance(seen, (int, float))):
            ok = False
            break
        window = seen - prev_tokens
        if window < 0:  # a resumed run whose metrics were truncated starts over here
            window = seen - (r["step"] - 1) * f.tokens_per_step if f.tokens_per_step else 0
        prev_tokens = seen
        if isinstance(r.get("compile_s"), (int, float)):
            compile_total += float(r["compile_s"])
            window -= f.tokens_per_step or 0
        if window > 0:
            seconds += window / tps
            run_tokens += window
    if ok:
        f.compile_s = compile_total or None
        f.step_seconds = seconds + compile_total
        f.wall_method = "sum over metrics.jsonl's log windows of tokens ÷ tokens/s, plus the compiling step"
        if seconds > 0:
            f.mean_tps = run_tokens / seconds
    ts = _timestamps(rows)
    if ts:
        f.step_seconds = ts[-1] - ts[0]
        f.wall_method = "first to last timestamp in metrics.jsonl"
    mfu_rows = [r for r in rows if isinstance(r.get("mfu"), (int, float)) and r.get("tokens_per_sec")]
    if mfu_rows:
        per_tps = mfu_rows[-1]["mfu"] / mfu_rows[-1]["tokens_per_sec"]  # MFU is proportional to tokens/s
        f.mfu = per_tps * f.mean_tps if f.mean_tps else sum(r["mfu"] for r in mfu_rows) / len(mfu_rows)
    losses = [r for r in rows if isinstance(r.get("loss"), (int, float))]
    if losses:
        f.final_loss = float(losses[-1]["loss"])
        if isinstance(losses[-1].get("grad_norm"), (int, float)):
            f.final_grad_norm = float(losses[-1]["grad_norm"])
    f.val_rows = [r for r in rows if isinstance(r.get("val_loss"), (int, float)) or isinstance(r.get("val_bpb"), (int, float))]
    if f.val_rows:
        f.final_val = f.val_rows[-1]
        vl = [(float(r["val_loss"]), int(r["step"])) for r in f.val_rows if isinstance(r.get("val_loss"), (int, float))]
        vb = [(float(r["val_bpb"]), int(r["step"])) for r in f.val_rows if isinstance(r.get("val_bpb"), (int, float))]
        f.best_val_loss = min(vl) if vl else None
        f.best_val_bpb = min(vb) if vb else None
    return f


def parameter_count(run: RunFiles) -> tuple[int | None, str]:
    """(parameters, where the figure comes from)."""
    if run.final and isinstance(run.final.get("parameters"), int):
        return run.final["parameters"], "final/model.json"
    model = run.section("model")
    if model:
        try:
            from .config import ModelConfig
            from .model import param_count_formula

            return param_count_formula(ModelConfig(**model)), "computed from the config (no final/ yet)"
        except (TypeError, ValueError):  # an older or newer config: leave the figure out rather than fail the report
            pass
    return None, ""


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def eval_scores(evals: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One entry per score in eval.json: task, metric, score, baseline, n, seconds, details.

    Two shapes of task are read: `planck eval`'s {"metric": "accuracy", "value": 0.31, "baseline": 0.25, "n": 100, ...}
    (other numeric fields go to `details`, except `K` with a `K_baseline`, which gets a row of its own) and a plain
    {"accuracy": 0.31, "baseline": 0.25, "n": 100} (a row per numeric field). Unknown keys never fail the report.
    """
    out: list[dict[str, Any]] = []
    tasks = (evals or {}).get("tasks")
    if not isinstance(tasks, dict):
        return out
    for task, body in tasks.items():
        if _is_num(body):
            out.append({"task": task, "metric": "score", "score": body, "details": ""})
        if not isinstance(body, dict):
            continue
        common = {"task": task, "n": body.get("n"), "seconds": body.get("seconds")}
        skipped = body.get("skipped")
        skipped_text = ", ".join(f"{k} {fmt_num(v)}" for k, v in skipped.items() if _is_num(v) and v) if isinstance(skipped, dict) else ""
        if isinstance(body.get("metric"), str) and "value" in body:
            paired = [k for k, v in body.items() if _is_num(v) and _is_num(body.get(f"{k}_baseline"))]
            shown = set(EVAL_META_KEYS) | {"value", *paired} | {f"{k}_baseline" for k in paired}
            details = [f"{k} {fmt_num(v)}" for k, v in body.items() if k not in shown and _is_num(v)]
            if skipped_text:
                details.append(f"skipped: {skipped_text}")
            if _is_num(body["value"]):
                out.append({**common, "metric": body["metric"], "score": body["value"], "baseline": body.get("baseline"),
                            "details": ", ".join(details)})
            for k in paired:
                out.append({**common, "metric": k, "score": body[k], "baseline": body[f"{k}_baseline"], "details": ""})
            continue
        for metric, value in body.items():
            if metric in EVAL_META_KEYS or not _is_num(value):
                continue
            out.append({**common, "metric": metric, "score": value, "baseline": body.get("baseline"),
                        "details": f"skipped: {skipped_text}" if skipped_text else ""})
    return out


def eval_samples(evals: dict[str, Any] | None) -> list[tuple[str, dict[str, Any]]]:
    """(task, sample) for every sample listed under a task's "samples"."""
    out = []
    tasks = (evals or {}).get("tasks")
    if isinstance(tasks, dict):
        for task, body in tasks.items():
            samples = body.get("samples") if isinstance(body, dict) else None
            for s in samples if isinstance(samples, list) else []:
                out.append((task, s if isinstance(s, dict) else {"completion": s}))
    return out


# ---- plots --------------------------------------------------------------------------------------

def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_loss(rows: list[dict], title: str, path: Path) -> bool:
    """Train and validation loss against step as a PNG (the training loop redraws it at every log); False without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return False
    train = [(r["step"], r["loss"]) for r in rows if isinstance(r.get("loss"), (int, float))]
    val = [(r["step"], r["val_loss"]) for r in rows if isinstance(r.get("val_loss"), (int, float))]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1)
    if val:
        ax.plot(*zip(*val), "o-", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_plots(run: RunFiles) -> tuple[list[str], str | None]:
    """Write lr.png (and loss.png when the loop's is missing); returns (file names present, a note when skipped)."""
    have = []
    lr = [(r["step"], r["lr"]) for r in run.rows if isinstance(r.get("lr"), (int, float))]
    adam = [(r["step"], r["adam_lr"]) for r in run.rows if isinstance(r.get("adam_lr"), (int, float))]
    need_loss = not (run.root / LOSS_PLOT).exists() and any("loss" in r for r in run.rows)
    plt = _pyplot() if (lr or need_loss) else None
    note = None
    if plt is None and (lr or need_loss):
        note = "plots skipped: matplotlib is not installed (`pip install 'planckgpt[plot]'`)"
    if plt is not None and need_loss:
        plot_loss(run.rows, run.name, run.root / LOSS_PLOT)
    if plt is not None and lr:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.plot(*zip(*lr), label="Muon LR (block matrices)", lw=1.5)
        if adam:
            ax.plot(*zip(*adam), label="Adam LR (embedding, head)", lw=1.5)
        ax.set_xlabel("step")
        ax.set_ylabel("learning rate")
        ax.set_ylim(bottom=0)
        ax.set_title(f"{run.name}: learning rate")
        ax.legend()
        fig.tight_layout()
        tmp = run.root / (LR_PLOT + ".tmp.png")
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        os.replace(tmp, run.root / LR_PLOT)
    for name in (LOSS_PLOT, LR_PLOT):
        if (run.root / name).exists():
            have.append(name)
    return have, note


# ---- the report ---------------------------------------------------------------------------------

def _header(run: RunFiles, figs: TrainingFigures) -> list[str]:
    out = [f"# Run report: {run.name}", ""]
    facts = [f"**Phase:** {run.phase}", f"**Folder:** `{run.root}`"]
    cfg_path = run.root / "config.json"
    final_path = run.root / "final" / "model.json"
    when = f"started {fmt_time(cfg_path.stat().st_mtime)}"
    steps = run.section("train").get("steps")
    if final_path.exists():
        end = final_path.stat().st_mtime
        when += f", finished {fmt_time(end)} (final/ written at step {fmt_int((run.final or {}).get('step', figs.step or 0))})"
    elif (run.root / "metrics.jsonl").exists():
        when += (f"; not finished: last logged step {figs.step if figs.step is not None else 0}"
                 + (f" of {fmt_int(steps)}" if steps else "")
                 + f", metrics.jsonl updated {fmt_time((run.root / 'metrics.jsonl').stat().st_mtime)}")
    else:
        when += "; no step logged yet"
    facts.append(f"**When:** {when}")
    init = run.recorded("init_from")
    if init:
        facts.append(f"**Started from:** `{init}` (its final/ weights, fresh optimizer)")
    elif run.phase != "pretrain" and run.phase != "?":
        facts.append("**Started from:** not recorded")
    out.append("  \n".join(facts))
    command = run.recorded("command") or run.recorded("command_line")
    if command:
        text = " ".join(map(str, command)) if isinstance(command, list) else str(command)
        out += ["", "```", text, "```"]
    for note in run.notes:
        out += ["", f"> Note: {note}"]
    out.append("")
    return out


def _data_section(run: RunFiles) -> list[str]:
    out = ["## Data", ""]
    data = run.config.get("data")
    if not data:
        return out + ["The data folder is not recorded in config.json.", ""]
    folder = Path(data)
    out.append(f"Shard folder: `{folder}`")
    out.append("")
    if not folder.is_dir():
        return out + [f"**The data folder is missing** ({folder} was moved or deleted): its manifest cannot be shown.", ""]
    from planck.schemas.manifest import ManifestError
    from planck.shards.folder import read_manifest

    try:
        m = read_manifest(folder)
    except ManifestError as exc:
        return out + [f"**The data folder's manifest cannot be read:** {exc}", ""]
    docs_word = "conversations" if m.kind == "chat" else "documents"
    tok = m.tokenizer
    out.append(
        f"Kind **{m.kind}**; tokenizer `{tok.get('name', '?')}` (fingerprint `{tok.get('fingerprint', '?')}`, "
        f"vocabulary {fmt_int(tok['vocab_size']) if 'vocab_size' in tok else '?'}"
        + (f", padded to {fmt_int(tok['padded_vocab_size'])}" if "padded_vocab_size" in tok else "") + ")."
    )
    out.append("")
    rows = []
    total = [0, 0, 0]
    for split in ("train", "val"):
        entries = m.split(split)
        if not entries:
            continue
        n = [len(entries), sum(e.documents for e in entries), sum(e.tokens for e in entries)]
        total = [a + b for a, b in zip(total, n)]
        rows.append([split, fmt_int(n[0]), fmt_int(n[1]), fmt_int(n[2])])
    rows.append(["**total**", fmt_int(total[0]), fmt_int(total[1]), fmt_int(total[2])])
    out += [table(["split", "shards", docs_word, "tokens"], rows), ""]
    if m.sources:
        src_rows = []
        chat = m.kind == "chat"
        for s in m.sources:
            skipped = sum(s.skipped.values())
            why = ", ".join(f"{k} {fmt_int(v)}" for k, v in sorted(s.skipped.items()) if v)
            row = [s.name, fmt_int(s.rows_read), fmt_int(s.documents), fmt_int(s.tokens)]
            if chat:
                row.append(f"×{s.repeats}")
            row.append(fmt_int(skipped) + (f" ({why})" if why else ""))
            src_rows.append(row)
        header = ["source", "rows read", docs_word, "tokens"] + (["repeats"] if chat else []) + ["skipped"]
        out += [table(header, src_rows), ""]
        specs = [f"- `{s.name}`: {s.spec}" for s in m.sources if s.spec]
        if specs:
            out += specs + [""]
    command = (m.made_by or {}).get("command")
    if command:
        out += ["Made by:", "", "```", " ".join(map(str, command)) if isinstance(command, list) else str(command), "```", ""]
    return out


def _model_section(run: RunFiles, figs: TrainingFigures) -> list[str]:
    out = ["## Model & config", ""]
    model, optim, train = run.section("model"), run.section("optim"), run.section("train")
    n_params, where = parameter_count(run)
    facts = []
    if n_params is not None:
        facts.append(f"**Parameters:** {fmt_int(n_params)} ({fmt_short(n_params)}; {where})")
    if model:
        g = model.get
        facts.append(
            f"**Architecture:** {g('n_layer', '?')} layers, d_model {g('d_model', '?')}, {g('n_head', '?')} query heads / "
            f"{g('n_kv_head', '?')} KV heads of {g('head_dim', '?')}, MLP ×{g('mlp_ratio', '?')}, sequence length "
            f"{fmt_int(g('seq_len', 0))}, vocabulary {fmt_int(g('vocab_size', 0))}; compute dtype {g('compute_dtype', '?')}"
            + (", rematerialised blocks" if g("remat") else "")
        )
    if train and model:
        micro, accum, seq = train.get("micro_batch", 0), train.get("grad_accum", 0), model.get("seq_len", 0)
        per_device = micro * accum * seq
        if figs.tokens_per_step and per_device and figs.tokens_per_step % per_device == 0:
            devices = figs.tokens_per_step // per_device
            facts.append(
                f"**Batch:** {micro} sequences × {accum} accumulation steps × {devices} device{'s' if devices != 1 else ''} "
                f"× {fmt_int(seq)} tokens = {fmt_int(figs.tokens_per_step)} tokens per step"
            )
        else:
            facts.append(
                f"**Batch:** {micro} sequences × {accum} accumulation steps × devices (not recorded) × {fmt_int(seq)} tokens "
                f"= {fmt_int(per_device)} tokens per step per device"
            )
    if train:
        steps = f"**Steps:** {fmt_int(train.get('steps', 0))}"
        if train.get("tokens"):
            steps += f" (from a budget of {fmt_int(train['tokens'])} tokens)"
        facts.append(steps)
    if optim:
        stable, final = optim.get("stable_fraction"), optim.get("final_lr_fraction")
        lr = (f"**Learning rates:** Muon {fmt_setting(optim.get('muon_lr', '?'))} (block matrices), "
              f"Adam {fmt_setting(optim.get('adam_lr', '?'))} (embedding, head)")
        if isinstance(stable, (int, float)) and isinstance(final, (int, float)):
            decay = f"linear decay to {100 * final:.0f}% of the peak at the last step"
            lr += f"; {decay} from the first step" if stable == 0 else f"; constant for {100 * stable:.0f}% of the steps, then {decay}"
        facts.append(lr)
    if "seed" in run.cfg:
        facts.append(f"**Seed:** {run.cfg['seed']}")
    out += ["  \n".join(facts), ""]
    from .config import flatten

    flat = flatten(run.cfg) if run.cfg else {}
    if flat:
        rows = [[f"`{k}`", fmt_setting(v)] for k, v in flat.items()]
        out += ["<details><summary>Every config field</summary>", "", table(["field", "value"], rows, "ll"), "", "</details>", ""]
    return out


def _training_section(run: RunFiles, figs: TrainingFigures) -> list[str]:
    out = ["## Training", ""]
    if figs.step is None:
        return out + ["No step logged yet (metrics.jsonl is missing or empty).", ""]
    steps = run.section("train").get("steps")
    rows: list[list[str]] = [["steps", fmt_int(figs.step) + (f" of {fmt_int(steps)}" if steps else "")]]
    if figs.tokens_seen is not None:
        rows.append(["tokens seen", fmt_int(figs.tokens_seen)])
    if figs.step_seconds is not None:
        rows.append(["training time", f"{fmt_duration(figs.step_seconds)} ({figs.wall_method})"])
    cfg_path, final_path = run.root / "config.json", run.root / "final" / "model.json"
    if final_path.exists():
        elapsed = final_path.stat().st_mtime - cfg_path.stat().st_mtime
        if elapsed >= (figs.step_seconds or 0):  # shorter than the steps themselves: the folder was copied
            rows.append(["elapsed wall clock", (f"{fmt_duration(elapsed)} (config.json to final/: start-up, evaluation, "
                                                "checkpoints and any pause before a resume included)")])
    if figs.compile_s is not None:
        rows.append(["compilation", f"{fmt_duration(figs.compile_s)} (the first step of each process start)"])
    if figs.mean_tps is not None:
        rows.append(["mean throughput", f"{fmt_int(round(figs.mean_tps))} tokens/s (compiling step excluded)"])
    if figs.mfu is not None:
        rows.append(["MFU", f"{100 * figs.mfu:.1f}% (model FLOPs ÷ dense bf16 peak)"])
    if figs.final_loss is not None:
        rows.append(["final train loss", f"{fmt_sig(figs.final_loss)} nats/token"])
    if figs.final_grad_norm is not None:
        rows.append(["final gradient norm", fmt_sig(figs.final_grad_norm)])
    fv = figs.final_val
    if fv:
        if isinstance(fv.get("val_loss"), (int, float)):
            rows.append(["final val loss", f"{fmt_sig(fv['val_loss'])} nats/token (step {fmt_int(fv['step'])})"])
        if isinstance(fv.get("val_bpb"), (int, float)):
            rows.append(["final val bpb", f"{fmt_sig(fv['val_bpb'])} bits/byte (step {fmt_int(fv['step'])})"])
    if figs.best_val_loss:
        rows.append(["best val loss", f"{fmt_sig(figs.best_val_loss[0])} (step {fmt_int(figs.best_val_loss[1])})"])
    if figs.best_val_bpb:
        rows.append(["best val bpb", f"{fmt_sig(figs.best_val_bpb[0])} (step {fmt_int(figs.best_val_bpb[1])})"])
    out += [table(["figure", "value"], rows, "ll"), ""]
    if len(figs.val_rows) > 1:
        shown = figs.val_rows
        if len(shown) > 20:  # keep the table short: the first, the last and evenly spaced ones between
            idx = sorted({round(i * (len(shown) - 1) / 19) for i in range(20)})
            shown = [shown[i] for i in idx]
        vrows = [[fmt_int(r["step"]), fmt_sig(r["loss"]) if isinstance(r.get("loss"), (int, float)) else MISSING,
                  fmt_sig(r["val_loss"]) if isinstance(r.get("val_loss"), (int, float)) else MISSING,
                  fmt_sig(r["val_bpb"]) if isinstance(r.get("val_bpb"), (int, float)) else MISSING] for r in shown]
        out += ["Validation along the way:", "", table(["step", "train loss", "val loss", "val bpb"], vrows), ""]
    return out


def _plots_section(plots: list[str], note: str | None) -> list[str]:
    out = ["## Plots", ""]
    if LOSS_PLOT in plots:
        out += [f"[{LOSS_PLOT}]({LOSS_PLOT}): training and validation loss", "", f"![loss]({LOSS_PLOT})", ""]
    if LR_PLOT in plots:
        out += [f"[{LR_PLOT}]({LR_PLOT}): learning rate per step", "", f"![learning rate]({LR_PLOT})", ""]
    if note:
        out += [note, ""]
    elif not plots:
        out += ["No plots: no step logged yet.", ""]
    return out


def _eval_section(run: RunFiles) -> list[str]:
    out = ["## Evaluation", ""]
    if run.evals is None:
        return out + [f"Not evaluated yet: run `planck eval --checkpoint {run.root}`.", ""]
    facts = []
    if run.evals.get("checkpoint"):
        facts.append(f"Checkpoint `{run.evals['checkpoint']}`")
    if run.evals.get("written"):
        facts.append(f"written {run.evals['written']}")
    if facts:
        out += [", ".join(facts) + f" ({EVAL_NAME}).", ""]
    scores = eval_scores(run.evals)
    if scores:
        rows = [[s["task"], s["metric"], fmt_num(s["score"]),
                 fmt_num(s["baseline"]) if _is_num(s.get("baseline")) else MISSING,
                 fmt_int(s["n"]) if _is_num(s.get("n")) else MISSING,
                 fmt_duration(s["seconds"]) if _is_num(s.get("seconds")) else MISSING,
                 s.get("details") or ""] for s in scores]
        out += [table(["task", "metric", "score", "random baseline", "n", "time", "details"], rows, "llrrrrl"), ""]
    else:
        out += ["eval.json holds no scores.", ""]
    samples = eval_samples(run.evals)
    if samples:
        out += ["### Samples", ""]
        for i, (task, s) in enumerate(samples, 1):
            label = f"**{i}.**" + (f" {task}:" if task not in ("sample", "samples") else "")
            temp = s.get("temperature")
            how = (" (greedy)" if temp == 0 else f" (temperature {fmt_setting(temp)})") if _is_num(temp) else ""
            if "prompt" in s:
                out += [f"{label} Prompt:", "", quote(s.get("prompt", "")), "", f"Completion{how}:", "",
                        quote(s.get("completion", "")), ""]
            else:
                out += [label, "", quote(s.get("completion", json.dumps(s))), ""]
    return out


def render_report(run: RunFiles, plots: list[str], plot_note: str | None) -> str:
    """The Markdown text of a run's report."""
    figs = training_figures(run)
    parts = (
        _header(run, figs) + _data_section(run) + _model_section(run, figs) + _training_section(run, figs)
        + _plots_section(plots, plot_note) + _eval_section(run)
    )
    return "\n".join(parts).rstrip() + "\n"


def write_report(run_dir: Path) -> Path:
    """Write (or rewrite) `run_dir/report.md` and `run_dir/lr.png`; returns the report's path."""
    run = load_run(Path(run_dir))
    plots, note = write_plots(run)
    path = run.root / REPORT_NAME
    atomic_write_text(path, render_report(run, plots, note))
    return path


# ---- comparison ---------------------------------------------------------------------------------

def default_comparison_path(run_dirs: list[Path]) -> Path:
    """report.md in the runs' common parent folder (runs/ for runs/pretrain runs/midtrain runs/sft)."""
    absolute = [Path(d).absolute() for d in run_dirs]
    common = Path(os.path.commonpath([str(p) for p in absolute]))
    if common in absolute:  # one run inside another: never overwrite a run's own report
        common = common.parent
    return common / REPORT_NAME


def render_comparison(run_dirs: list[Path], out: Path) -> str:
    """One table, a column per run, and links to each run's report (relative to `out`)."""
    runs = [load_run(Path(d)) for d in run_dirs]
    out_dir = Path(out).absolute().parent
    rel = [Path(os.path.relpath(r.root.absolute(), out_dir)).as_posix() for r in runs]
    names = [r.name for r in runs]
    labels = names if len(set(names)) == len(names) else rel
    figs = [training_figures(r) for r in runs]

    def val(f: TrainingFigures, key: str) -> str:
        v = f.final_val.get(key)
        return fmt_sig(v) if isinstance(v, (int, float)) else MISSING

    params = [parameter_count(r)[0] for r in runs]
    rows: list[list[str]] = [
        ["phase"] + [r.phase for r in runs],
        ["parameters"] + [fmt_short(p) if p else MISSING for p in params],
        ["steps"] + [fmt_int(f.step) if f.step is not None else MISSING for f in figs],
        ["tokens seen"] + [fmt_int(f.tokens_seen) if f.tokens_seen is not None else MISSING for f in figs],
        ["training time"] + [fmt_duration(f.step_seconds) if f.step_seconds is not None else MISSING for f in figs],
        ["tokens/s"] + [fmt_int(round(f.mean_tps)) if f.mean_tps else MISSING for f in figs],
        ["final train loss"] + [fmt_sig(f.final_loss) if f.final_loss is not None else MISSING for f in figs],
        ["final val loss"] + [val(f, "val_loss") for f in figs],
        ["final val bpb"] + [val(f, "val_bpb") for f in figs],
    ]
    if any(f.mfu is not None for f in figs):
        rows.insert(6, ["MFU"] + [f"{100 * f.mfu:.1f}%" if f.mfu is not None else MISSING for f in figs])
    per_run = [{(s["task"], s["metric"]): s for s in eval_scores(r.evals)} for r in runs]
    keys: list[tuple[str, str]] = []
    for scores in per_run:
        keys += [k for k in scores if k not in keys]
    for key in keys:
        label = key[0] if key[0] == key[1] else f"{key[0]} {key[1]}"
        baselines = {s[key].get("baseline") for s in per_run if key in s and isinstance(s[key].get("baseline"), (int, float))}
        if len(baselines) == 1:
            label += f" (random {fmt_num(baselines.pop())})"
        rows.append([label] + [fmt_num(s[key]["score"]) if key in s else MISSING for s in per_run])
    if not keys:
        rows.append(["evaluation"] + ["not evaluated" if r.evals is None else "no scores" for r in runs])
    rows.append(["report"] + [f"[{label}]({p}/{REPORT_NAME})" for label, p in zip(labels, rel)])
    lines = ["# Runs side by side", "", table([""] + labels, rows), "", "Reports:", ""]
    lines += [f"- [{label}]({p}/{REPORT_NAME}) ({r.phase}, `{r.root}`)" for label, p, r in zip(labels, rel, runs)]
    return "\n".join(lines) + "\n"


def write_comparison(run_dirs: list[Path], out: Path | None = None) -> Path:
    """Write the side-by-side comparison of several runs; returns its path."""
    path = Path(out) if out is not None else default_comparison_path(run_dirs)
    if any(path.absolute() == (Path(d) / REPORT_NAME).absolute() for d in run_dirs):
        raise TrainingError(f"{path}: is a run's own report; choose another --out for the comparison")
    text = render_comparison(run_dirs, path)
    if not path.parent.is_dir():
        raise TrainingError(f"{path.parent}: no such folder for the comparison")
    atomic_write_text(path, text)
    return path
