"""The run's plots: loss.png (drawn by the training loop at every checkpoint) and lr.png (drawn by the report).

matplotlib is optional (`pip install 'planckgpt[plot]'`): without it nothing is drawn and the report says so.
"""

from __future__ import annotations

import os
from pathlib import Path

from .run import RunFiles


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


def write_plots(run: RunFiles) -> tuple[list[Path], str | None]:
    """Write lr.png (and loss.png when the loop's is missing); returns (the plots present, a note when skipped)."""
    folder = run.folder
    lr = [(r["step"], r["lr"]) for r in run.rows if isinstance(r.get("lr"), (int, float))]
    adam = [(r["step"], r["adam_lr"]) for r in run.rows if isinstance(r.get("adam_lr"), (int, float))]
    need_loss = not folder.loss_plot.exists() and any("loss" in r for r in run.rows)
    plt = _pyplot() if (lr or need_loss) else None
    note = None
    if plt is None and (lr or need_loss):
        note = "plots skipped: matplotlib is not installed (`pip install 'planckgpt[plot]'`)"
    if plt is not None and need_loss:
        plot_loss(run.rows, run.name, folder.loss_plot)
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
        tmp = folder.lr_plot.with_name(folder.lr_plot.name + ".tmp.png")
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        os.replace(tmp, folder.lr_plot)
    return [p for p in (folder.loss_plot, folder.lr_plot) if p.exists()], note
