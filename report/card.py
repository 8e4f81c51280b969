"""The report card of one run, `runs/NAME/report.md`: header, data, model & config, training, plots, evaluation.

Reads only the files a run leaves behind (config.json, metrics.jsonl, final/model.json, eval.json, the shard
folder's manifest.json); it imports neither JAX nor the model unless final/ is missing and the parameter
count has to be computed from the config.
"""

from __future__ import annotations

from pathlib import Path

from planck.schemas.atomic import atomic_write_text
from planck.schemas.manifest import MANIFEST_NAME, Manifest, ManifestError
from planck.schemas.run_folder import RunFolder, flatten

from .figures import (TrainingFigures, ValCoverage, coverage_short, coverage_text, eval_samples, eval_scores,
                      eval_val_coverage, is_num, parameter_count, trainer_val_coverage, training_figures)
from .markdown import MISSING, fmt_duration, fmt_int, fmt_num, fmt_setting, fmt_short, fmt_sig, fmt_time, quote, table
from .plots import write_plots
from .run import RunFiles, load_run


def _header(run: RunFiles, figs: TrainingFigures) -> list[str]:
    f = run.folder
    out = [f"# Run report: {run.name}", ""]
    facts = [f"**Phase:** {run.phase}", f"**Folder:** `{run.root}`"]
    when = f"started {fmt_time(f.config.stat().st_mtime)}"
    steps = run.section("train").get("steps")
    if f.final_meta.exists():
        end = f.final_meta.stat().st_mtime
        when += (f", finished {fmt_time(end)} ({f.final.name}/ written at step "
                 f"{fmt_int((run.final or {}).get('step', figs.step or 0))})")
    elif f.metrics.exists():
        when += (f"; not finished: last logged step {figs.step if figs.step is not None else 0}"
                 + (f" of {fmt_int(steps)}" if steps else "")
                 + f", {f.metrics.name} updated {fmt_time(f.metrics.stat().st_mtime)}")
    else:
        when += "; no step logged yet"
    facts.append(f"**When:** {when}")
    if run.init_from:
        facts.append(f"**Started from:** `{run.init_from}` (its {f.final.name}/ weights, fresh optimizer)")
    elif run.phase != "pretrain" and run.phase != "?":
        facts.append("**Started from:** not recorded")
    out.append("  \n".join(facts))
    for note in run.notes:
        out += ["", f"> Note: {note}"]
    out.append("")
    return out


def _read_manifest(folder: Path) -> Manifest:
    """The shard folder's manifest (an existing folder); ManifestError names the path."""
    path = folder / MANIFEST_NAME
    if not path.exists():
        raise ManifestError(f"{path}: missing; is {folder} a shard folder made by `planck tokenize`?")
    return Manifest.from_json(path.read_text(encoding="utf-8"), where=str(path))


def _data_section(run: RunFiles) -> list[str]:
    out = ["## Data", ""]
    data = run.config.get("data")
    if not data:
        return out + [f"The data folder is not recorded in {run.folder.config.name}.", ""]
    folder = Path(data)
    out.append(f"Shard folder: `{folder}`")
    out.append("")
    if not folder.is_dir():
        return out + [f"**The data folder is missing** ({folder} was moved or deleted): its manifest cannot be shown.", ""]
    try:
        m = _read_manifest(folder)
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
            decay = f"linear decay to {100 * final:.0f}% of the peak by the end"
            lr += f"; {decay} from the first step" if stable == 0 else f"; constant for {100 * stable:.0f}% of the steps, then {decay}"
        facts.append(lr)
    if "seed" in run.cfg:
        facts.append(f"**Seed:** {run.cfg['seed']}")
    out += ["  \n".join(facts), ""]
    flat = flatten(run.cfg) if run.cfg else {}
    if flat:
        rows = [[f"`{k}`", fmt_setting(v)] for k, v in flat.items()]
        out += ["<details><summary>Every config field</summary>", "", table(["field", "value"], rows, "ll"), "", "</details>", ""]
    return out


def _training_section(run: RunFiles, figs: TrainingFigures) -> list[str]:
    f = run.folder
    out = ["## Training", ""]
    if figs.step is None:
        return out + [f"No step logged yet ({f.metrics.name} is missing or empty).", ""]
    steps = run.section("train").get("steps")
    rows: list[list[str]] = [["steps", fmt_int(figs.step) + (f" of {fmt_int(steps)}" if steps else "")]]
    if figs.tokens_seen is not None:
        rows.append(["tokens seen", fmt_int(figs.tokens_seen)])
    if figs.step_seconds is not None:
        rows.append(["training time", f"{fmt_duration(figs.step_seconds)} ({figs.wall_method})"])
    if f.final_meta.exists():
        elapsed = f.final_meta.stat().st_mtime - f.config.stat().st_mtime
        if elapsed >= (figs.step_seconds or 0):  # shorter than the steps themselves: the folder was copied
            rows.append(["elapsed wall clock", (f"{fmt_duration(elapsed)} ({f.config.name} to {f.final.name}/: start-up, "
                                                "evaluation, checkpoints and any pause before a resume included)")])
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
    val_cov = trainer_val_coverage(run, figs) if fv else None
    if fv:
        if isinstance(fv.get("val_loss"), (int, float)):
            rows.append(["final val loss", f"{fmt_sig(fv['val_loss'])} nats/token (step {fmt_int(fv['step'])})"])
        if isinstance(fv.get("val_bpb"), (int, float)):
            rows.append(["final val bpb", f"{fmt_sig(fv['val_bpb'])} bits/byte (step {fmt_int(fv['step'])}; the trainer's "
                                          f"evaluation on {coverage_short(val_cov)})"])
    if figs.best_val_loss:
        rows.append(["best val loss", f"{fmt_sig(figs.best_val_loss[0])} (step {fmt_int(figs.best_val_loss[1])})"])
    if figs.best_val_bpb:
        rows.append(["best val bpb", f"{fmt_sig(figs.best_val_bpb[0])} (step {fmt_int(figs.best_val_bpb[1])})"])
    if figs.val_rows:
        # metrics.jsonl's val figures do not say what they cover; `planck eval`'s bpb covers more, and differs.
        rows.append(["val figures measured on",
                     f"the trainer's evaluation, the same windows each time: {coverage_text(val_cov)} ({val_cov.how})"
                     if val_cov else "the trainer's evaluation: the first train.eval_batches batches of the val split"])
    out += [table(["figure", "value"], rows, "ll"), ""]
    if len(figs.val_rows) > 1:
        shown = figs.val_rows
        if len(shown) > 20:  # keep the table short: the first, the last and evenly spaced ones between
            idx = sorted({round(i * (len(shown) - 1) / 19) for i in range(20)})
            shown = [shown[i] for i in idx]
        vrows = [[fmt_int(r["step"]), fmt_sig(r["loss"]) if isinstance(r.get("loss"), (int, float)) else MISSING,
                  fmt_sig(r["val_loss"]) if isinstance(r.get("val_loss"), (int, float)) else MISSING,
                  fmt_sig(r["val_bpb"]) if isinstance(r.get("val_bpb"), (int, float)) else MISSING] for r in shown]
        out += ["Validation along the way (the trainer's evaluation):", "",
                table(["step", "train loss", "val loss", "val bpb"], vrows), ""]
    changes = f.read_changes()
    if changes:
        crows = [[fmt_int(c.get("step", 0)), key, fmt_setting(old), fmt_setting(new), str(c.get("time", ""))]
                 for c in changes for key, (old, new) in sorted(c["changed"].items())]
        out += [f"Settings changed on resume ({f.changes.name}; {f.config.name} holds the latest):", "",
                table(["from step", "setting", "was", "now", "when"], crows), ""]
    return out


def _plots_section(folder: RunFolder, plots: list[Path], note: str | None) -> list[str]:
    out = ["## Plots", ""]
    loss, lr = folder.loss_plot.name, folder.lr_plot.name
    if folder.loss_plot in plots:
        out += [f"[{loss}]({loss}): training and validation loss", "", f"![loss]({loss})", ""]
    if folder.lr_plot in plots:
        out += [f"[{lr}]({lr}): learning rate per step", "", f"![learning rate]({lr})", ""]
    if note:
        out += [note, ""]
    elif not plots:
        out += ["No plots: no step logged yet.", ""]
    return out


def _eval_section(run: RunFiles, figs: TrainingFigures) -> list[str]:
    out = ["## Evaluation", ""]
    if run.evals is None:
        return out + [f"Not evaluated yet: run `planck eval --checkpoint {run.root}`.", ""]
    facts = []
    if run.evals.get("checkpoint"):
        facts.append(f"Checkpoint `{run.evals['checkpoint']}`")
    if run.evals.get("written"):
        facts.append(f"written {run.evals['written']}")
    if facts:
        out += [", ".join(facts) + f" ({run.folder.eval.name}).", ""]
    scores = eval_scores(run.evals)
    cov = eval_val_coverage(run.evals)
    if cov is not None:  # bpb's details say what it covers: the Training section shows another val bpb
        for s in scores:
            if s["task"] == "bpb":
                s["details"] = (f"`planck eval`: {coverage_text(cov)}" if s["metric"] == "bpb" else "the same windows")
    if scores:
        rows = [[s["task"], s["metric"], fmt_num(s["score"]),
                 fmt_num(s["baseline"]) if is_num(s.get("baseline")) else MISSING,
                 fmt_int(s["n"]) if is_num(s.get("n")) else MISSING,
                 fmt_duration(s["seconds"]) if is_num(s.get("seconds")) else MISSING,
                 s.get("details") or ""] for s in scores]
        out += [table(["task", "metric", "score", "random baseline", "n", "time", "details"], rows, "llrrrrl"), ""]
        note = _two_bpb_note(run, figs, cov)
        if note:
            out += [note, ""]
    else:
        out += [f"{run.folder.eval.name} holds no scores.", ""]
    samples = eval_samples(run.evals)
    if samples:
        out += ["### Samples", ""]
        for i, (task, s) in enumerate(samples, 1):
            label = f"**{i}.**" + (f" {task}:" if task != "sample" else "")
            temp = s.get("temperature")
            how = (" (greedy)" if temp == 0 else f" (temperature {fmt_setting(temp)})") if is_num(temp) else ""
            out += [f"{label} Prompt:", "", quote(s.get("prompt", "")), "", f"Completion{how}:", "",
                    quote(s.get("completion", "")), ""]
    return out


def _two_bpb_note(run: RunFiles, figs: TrainingFigures, eval_cov: ValCoverage | None) -> str | None:
    """One line on why eval's bpb is not Training's final val bpb, when the report shows both."""
    trained = figs.final_val.get("val_bpb")
    if eval_cov is None or not is_num(trained):
        return None
    score = run.evals["tasks"]["bpb"]["value"]
    train_cov = trainer_val_coverage(run, figs)
    both = (f"this bpb ({fmt_sig(score)}, `planck eval` on {coverage_short(eval_cov)}) and Training's final val bpb "
            f"({fmt_sig(trained)}, the trainer's evaluation on {coverage_short(train_cov)})")
    data = (run.evals["tasks"]["bpb"].get("data"), run.config.get("data"))
    if all(data) and all(Path(d).exists() for d in data) and Path(data[0]).resolve() != Path(data[1]).resolve():
        return f"> Note: {both} differ because they are measured on different shard folders' val splits."
    if train_cov and (train_cov.windows, train_cov.seq_len) == (eval_cov.windows, eval_cov.seq_len):
        return f"> Note: {both} cover the same windows of the val split."
    return f"> Note: {both} differ because they cover different parts of the val split."


def render_report(run: RunFiles, plots: list[Path], plot_note: str | None) -> str:
    """The Markdown text of a run's report."""
    figs = training_figures(run)
    parts = (
        _header(run, figs) + _data_section(run) + _model_section(run, figs) + _training_section(run, figs)
        + _plots_section(run.folder, plots, plot_note) + _eval_section(run, figs)
    )
    return "\n".join(parts).rstrip() + "\n"


def write_report(run_dir: Path) -> Path:
    """Write (or rewrite) `run_dir/report.md` and `run_dir/lr.png`; returns the report's path."""
    run = load_run(Path(run_dir))
    plots, note = write_plots(run)
    path = run.folder.report
    atomic_write_text(path, render_report(run, plots, note))
    return path
