"""The figures a report shows, derived from a run's files: training figures from metrics.jsonl, the parameter
count, and the scores and samples of eval.json (as `planck eval` writes it: planck.eval.report.merge_eval_json)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .markdown import fmt_int, fmt_num
from .run import RunFiles

# Keys of an eval.json task summary that describe the task rather than score it.
EVAL_META_KEYS = ("n", "baseline", "seconds", "samples", "metric", "skipped")


def is_num(x: Any) -> bool:
    """A JSON number (true and false are not)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


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


def training_figures(run: RunFiles) -> TrainingFigures:
    """Throughput, training time, losses; see the Training section for what each figure means."""
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
        f.wall_method = f"sum over {run.folder.metrics.name}'s log windows of tokens ÷ tokens/s, plus the compiling step"
        if seconds > 0:
            f.mean_tps = run_tokens / seconds
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


@dataclass
class ValCoverage:
    """What one validation figure was measured on: the first `windows` windows of seq_len tokens of a val split."""

    windows: int | None
    seq_len: int | None
    split_windows: int | None  # the split's windows at that length; None when its folder cannot be read
    scored: int | None = None  # the tokens the loss counted (eval.json records them; a chat mask leaves some out)
    how: str = ""  # where the counts come from, when they are not recorded

    @property
    def tokens(self) -> int | None:
        return self.windows * self.seq_len if self.windows is not None and self.seq_len else None


def split_windows(data: Any, seq_len: int) -> int | None:
    """The windows of seq_len + 1 tokens in a shard folder's val split, as trainer and eval cut them; None if unreadable."""
    if not data:
        return None
    from planck.schemas.errors import PlanckError
    from planck.shards.windows import ShardWindows  # numpy only: opens the shards' headers, reads no tokens

    try:
        return len(ShardWindows(Path(data), "val", int(seq_len)))
    except (OSError, ValueError, PlanckError):
        return None  # a moved or damaged folder: the figure is shown without the split's size


def trainer_val_coverage(run: RunFiles, figs: TrainingFigures) -> ValCoverage | None:
    """The windows behind metrics.jsonl's val rows, which do not record them: train.eval_batches batches of
    micro_batch x devices windows from the start of the val split (fewer when the split is smaller), as the loop cuts them."""
    train, model = run.section("train"), run.section("model")
    n_batches, micro, accum, seq = (train.get("eval_batches"), train.get("micro_batch"), train.get("grad_accum"),
                                    model.get("seq_len"))
    if not all(isinstance(x, int) and x > 0 for x in (n_batches, micro, accum, seq)):
        return None
    per_device = micro * accum * seq
    if not figs.tokens_per_step or figs.tokens_per_step % per_device:
        return None  # the device count, hence the batch, is unknown
    devices = figs.tokens_per_step // per_device
    batch = micro * devices
    split = split_windows(run.config.get("data"), seq)
    windows = n_batches * batch if split is None else min(n_batches, split // batch) * batch
    capped = split is not None and windows < n_batches * batch
    how = (f"from config.json: train.eval_batches {fmt_int(n_batches)} × a batch of {fmt_int(batch)} windows, "
           f"train.micro_batch {micro} × {devices} device{'s' if devices != 1 else ''}"
           + ("; the split holds fewer" if capped else ""))
    return ValCoverage(windows, seq, split, how=how)


def eval_val_coverage(evals: dict[str, Any] | None) -> ValCoverage | None:
    """The windows behind eval.json's bpb score (`planck eval --tasks bpb`): it records them (n, seq_len, tokens, data)."""
    tasks = (evals or {}).get("tasks")
    bpb = tasks.get("bpb") if isinstance(tasks, dict) else None
    if not isinstance(bpb, dict) or not is_num(bpb.get("value")):
        return None
    windows = int(bpb["n"]) if is_num(bpb.get("n")) else None
    seq = int(bpb["seq_len"]) if is_num(bpb.get("seq_len")) else None
    split = split_windows(bpb.get("data"), seq) if seq else None
    return ValCoverage(windows, seq, split, scored=int(bpb["tokens"]) if is_num(bpb.get("tokens")) else None)


def coverage_text(c: ValCoverage) -> str:
    """As much as is known of what a figure covers: 'the first 4 of the val split's 74 windows, 4 × 64 = 256 tokens'."""
    if c.windows is None:
        return "windows not recorded" + (f", {fmt_int(c.scored)} tokens scored" if c.scored is not None else "")
    if c.split_windows is None:
        text = f"the first {fmt_int(c.windows)} windows of the val split"
    elif c.windows >= c.split_windows:
        text = f"all {fmt_int(c.split_windows)} windows of the val split"
    else:
        text = f"the first {fmt_int(c.windows)} of the val split's {fmt_int(c.split_windows)} windows"
    if c.tokens is not None:
        text += f", {fmt_int(c.windows)} × {fmt_int(c.seq_len)} = {fmt_int(c.tokens)} tokens"
    if c.scored is not None and c.scored != c.tokens:
        text += (f" ({fmt_int(c.scored)} of them scored: the mask leaves the others out)" if c.tokens
                 else f", {fmt_int(c.scored)} tokens scored")
    return text


def coverage_short(c: ValCoverage | None) -> str:
    """'256 tokens in 4 windows', for a line that names two figures."""
    if c is None:
        return "its train.eval_batches batches"  # the trainer's, with a batch the report cannot work out
    if c.windows is None:
        return "an unrecorded number of windows"
    return (f"{fmt_int(c.tokens)} tokens in " if c.tokens is not None else "") + f"{fmt_int(c.windows)} windows"


def parameter_count(run: RunFiles) -> tuple[int | None, str]:
    """(parameters, where the figure comes from): final/model.json's, else the formula on the run's model config."""
    if run.final and isinstance(run.final.get("parameters"), int):
        return run.final["parameters"], run.folder.final_meta.relative_to(run.root).as_posix()
    model = run.section("model")
    if model:
        try:
            from planck.model.config import ModelConfig
            from planck.model.gpt import param_count_formula

            return param_count_formula(ModelConfig(**model)), f"computed from the config (no {run.folder.final.name}/ yet)"
        except (TypeError, ValueError):  # an older or newer config: leave the figure out rather than fail the report
            pass
    return None, ""


def eval_scores(evals: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One entry per score in eval.json: task, metric, score, baseline, n, seconds, details.

    A task's summary is {"metric": "accuracy", "value": 0.31, "baseline": 0.25, "n": 100, "seconds": ..., ...}:
    other numeric fields go to `details`, except a field K with a `K_baseline` (bpb's val_loss), which gets a row
    of its own; `value` null (the sample task) is no score. Unknown keys never fail the report.
    """
    out: list[dict[str, Any]] = []
    tasks = (evals or {}).get("tasks")
    if not isinstance(tasks, dict):
        return out
    for task, body in tasks.items():
        if not isinstance(body, dict) or not isinstance(body.get("metric"), str):
            continue
        common = {"task": task, "n": body.get("n"), "seconds": body.get("seconds")}
        skipped = body.get("skipped")
        skipped_text = ", ".join(f"{k} {fmt_num(v)}" for k, v in skipped.items() if is_num(v) and v) if isinstance(skipped, dict) else ""
        paired = [k for k, v in body.items() if is_num(v) and is_num(body.get(f"{k}_baseline"))]
        shown = set(EVAL_META_KEYS) | {"value", *paired} | {f"{k}_baseline" for k in paired}
        details = [f"{k} {fmt_num(v)}" for k, v in body.items() if k not in shown and is_num(v)]
        if skipped_text:
            details.append(f"skipped: {skipped_text}")
        if is_num(body.get("value")):
            out.append({**common, "metric": body["metric"], "score": body["value"], "baseline": body.get("baseline"),
                        "details": ", ".join(details)})
        for k in paired:
            out.append({**common, "metric": k, "score": body[k], "baseline": body[f"{k}_baseline"], "details": ""})
    return out


def eval_samples(evals: dict[str, Any] | None) -> list[tuple[str, dict[str, Any]]]:
    """(task, sample) for every sample ({"prompt", "completion", "temperature"}) listed under a task's "samples"."""
    out = []
    tasks = (evals or {}).get("tasks")
    if isinstance(tasks, dict):
        for task, body in tasks.items():
            samples = body.get("samples") if isinstance(body, dict) else None
            out += [(task, s) for s in (samples if isinstance(samples, list) else []) if isinstance(s, dict)]
    return out
