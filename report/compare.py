"""Several runs side by side: one Markdown table (a column per run) linking to each run's report.md."""

from __future__ import annotations

import os
from pathlib import Path

from planck.schemas.atomic import atomic_write_text
from planck.schemas.run_folder import RunFolder, RunFolderError

from .figures import TrainingFigures, eval_scores, is_num, parameter_count, training_figures
from .markdown import MISSING, fmt_duration, fmt_int, fmt_num, fmt_short, fmt_sig, table
from .run import load_run


def default_comparison_path(run_dirs: list[Path]) -> Path:
    """report.md in the runs' common parent folder (runs/ for runs/pretrain runs/midtrain runs/sft)."""
    absolute = [Path(d).absolute() for d in run_dirs]
    common = Path(os.path.commonpath([str(p) for p in absolute]))
    if common in absolute:  # one run inside another: never overwrite a run's own report
        common = common.parent
    return RunFolder(common).report


def render_comparison(run_dirs: list[Path], out: Path) -> str:
    """One table, a column per run, and links to each run's report (relative to `out`)."""
    runs = [load_run(Path(d)) for d in run_dirs]
    out_dir = Path(out).absolute().parent
    rel = [Path(os.path.relpath(r.root.absolute(), out_dir)).as_posix() for r in runs]
    reports = [f"{p}/{r.folder.report.name}" for p, r in zip(rel, runs)]
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
        ["final val loss (trainer's evaluation)"] + [val(f, "val_loss") for f in figs],
        ["final val bpb (trainer's evaluation)"] + [val(f, "val_bpb") for f in figs],
    ]
    if any(f.mfu is not None for f in figs):
        rows.insert(6, ["MFU"] + [f"{100 * f.mfu:.1f}%" if f.mfu is not None else MISSING for f in figs])
    per_run = [{(s["task"], s["metric"]): s for s in eval_scores(r.evals)} for r in runs]
    keys: list[tuple[str, str]] = []
    for scores in per_run:
        keys += [k for k in scores if k not in keys]
    for key in keys:
        label = key[0] if key[0] == key[1] else f"{key[0]} {key[1]}"
        notes = ["planck eval"] if key[0] == "bpb" else []  # not the trainer's val bpb above
        baselines = {s[key].get("baseline") for s in per_run if key in s and isinstance(s[key].get("baseline"), (int, float))}
        if len(baselines) == 1:
            notes.append(f"random {fmt_num(baselines.pop())}")
        if notes:
            label += f" ({'; '.join(notes)})"
        rows.append([label] + [fmt_num(s[key]["score"]) if key in s else MISSING for s in per_run])
    if not keys:
        rows.append(["evaluation"] + ["not evaluated" if r.evals is None else "no scores" for r in runs])
    rows.append(["report"] + [f"[{label}]({link})" for label, link in zip(labels, reports)])
    lines = ["# Runs side by side", "", table([""] + labels, rows), ""]
    if any(k[0] == "bpb" for k in keys) and any(is_num(f.final_val.get("val_bpb")) for f in figs):
        lines += ["The two val bpb rows differ because they cover different parts of the val split: the trainer's "
                  "evaluation its first train.eval_batches batches, `planck eval` the windows it scored (each run's "
                  "report gives the counts).", ""]
    lines += ["Reports:", ""]
    lines += [f"- [{label}]({link}) ({r.phase}, `{r.root}`)" for label, link, r in zip(labels, reports, runs)]
    return "\n".join(lines) + "\n"


def write_comparison(run_dirs: list[Path], out: Path | None = None) -> Path:
    """Write the side-by-side comparison of several runs; returns its path."""
    path = Path(out) if out is not None else default_comparison_path(run_dirs)
    if any(path.absolute() == RunFolder(Path(d)).report.absolute() for d in run_dirs):
        raise RunFolderError(f"{path}: is a run's own report; choose another --out for the comparison")
    text = render_comparison(run_dirs, path)
    if not path.parent.is_dir():
        raise RunFolderError(f"{path.parent}: no such folder for the comparison")
    atomic_write_text(path, text)
    return path
