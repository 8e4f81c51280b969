"""Results out: the table on the terminal, one JSON object for scripts, and RUN/eval.json merged task by task."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from planck.schemas.atomic import atomic_write_text
from planck.schemas.run_folder import RunFolder


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _skip(reason: str, count: int, summary: dict) -> str:
    if reason == "too_long" and summary.get("context"):
        return f"too_long {count:,} (prompt over the {summary['context']:,}-token context)"
    return f"{reason} {count:,}"


def format_table(summaries: dict[str, dict]) -> str:
    """One line per task (task, metric, value, baseline, n, seconds), extra lines for val loss, skips and samples."""
    head = f"{'task':<14} {'metric':<9} {'value':>9} {'baseline':>9} {'n':>8} {'seconds':>9}"
    lines = [head, "-" * len(head)]
    for task, s in summaries.items():
        lines.append(
            f"{task:<14} {s.get('metric', '-'):<9} {_num(s.get('value')):>9} {_num(s.get('baseline')):>9} "
            f"{_num(s.get('n')):>8} {_num(s.get('seconds'), 1):>9}"
        )
        if "val_loss" in s:
            lines.append(f"{'':<14} {'val_loss':<9} {_num(s['val_loss']):>9} {_num(s.get('val_loss_baseline')):>9}")
        if s.get("skipped"):
            lines.append(f"{'':<14} skipped: " + ", ".join(_skip(k, v, s) for k, v in s["skipped"].items()))
    for task, s in summaries.items():
        if s.get("samples"):
            lines += ["", f"{task}:"]
            for item in s["samples"]:
                temp = "greedy" if not item["temperature"] else f"temperature {item['temperature']}"
                lines.append(f"  > {item['prompt']}  ({temp})")
                body = item["completion"].strip() or "(empty)"
                lines += ["    " + line for line in body.splitlines()]
    return "\n".join(lines)


def nothing_scored(task: str, read: int, skipped: dict[str, int]) -> str:
    """Why a task scored no rows, in words: how many rows were read and how many were rejected for what."""
    if not read:
        return f"{task} scored nothing: its source has no rows"
    why = ", ".join(f"{reason} {count:,}" for reason, count in sorted(skipped.items()))
    return f"{task} scored nothing: {read:,} row{'s' if read != 1 else ''} read, all rejected ({why or 'no reason recorded'})"


def eval_json_path(checkpoint: Path) -> Path | None:
    """RUN/eval.json when `checkpoint` is a run folder (it holds final/), else None: results belong to a run."""
    run = RunFolder(Path(checkpoint))
    return run.eval if run.root.is_dir() and run.is_finished() else None


def merge_eval_json(path: Path, summaries: dict[str, dict], checkpoint: str, model: dict) -> dict:
    """Merge these tasks' results into `path` (others are kept; the same task is replaced), written atomically."""
    path = Path(path)
    doc: dict[str, Any] = {}
    if path.exists():
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(doc, dict) or not isinstance(doc.get("tasks", {}), dict):
                raise ValueError("not an object with a 'tasks' object")
        except (OSError, ValueError) as exc:
            print(f"planck eval: warning: {path} is unreadable ({exc}); starting it afresh", file=sys.stderr)
            doc = {}
    tasks = dict(doc.get("tasks") or {})
    tasks.update(summaries)
    doc = {
        "tasks": tasks,
        "checkpoint": checkpoint,
        "model": model,
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
    return doc


def jsonable(value: Any) -> Any:
    """Plain JSON values: NaN and infinities (a diverged model) become null, numpy scalars Python numbers."""
    import math

    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
