"""The run folder: what `planck train` writes into runs/NAME/ and what training, evaluation, the report and serving read.

    runs/NAME/
        config.json       phase, data folder and the full run config (a re-run must match it to resume)
        changes.jsonl     settings changed on resume (learning rates, schedule, cadence): step, old and new values
        preflight.json    the data check done before step 1: shards, bytes, seconds, what was checked
        metrics.jsonl     one JSON object per logged step (loss, lr, tokens/s, val_loss, ...)
        checkpoints/      orbax steps: model, optimizer, loader position
        final/            the finished model: model.json (config, tokenizer, phase, step) + params/
        eval.json         `planck eval` scores, merged task by task
        report.md         the report card; loss.png and lr.png beside it

Every name is written here once; JSON readers give one-line RunFolderError naming the file.
No JAX: the report and the CLI read run folders without it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planck.schemas.errors import PlanckError

FINAL = "final"
MODEL_JSON = "model.json"  # inside final/
PARAMS = "params"  # inside final/: the orbax weights


class RunFolderError(PlanckError):
    """A run folder (or one of its files) that cannot be read; the message names the path."""


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: a config's dotted keys, as `--set` spells them."""
    out: dict[str, Any] = {}
    for k, v in table.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def read_json(path: Path, what: str) -> Any:
    """A JSON file's value; RunFolderError naming the file when it is missing, unreadable or not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunFolderError(f"{path}: cannot read the {what} ({exc})") from None


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run folder, and readers for the files in it."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def name(self) -> str:
        """The folder's name (runs/pretrain -> pretrain)."""
        return self.root.name

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def changes(self) -> Path:
        return self.root / "changes.jsonl"

    @property
    def preflight(self) -> Path:
        return self.root / "preflight.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def final(self) -> Path:
        return self.root / FINAL

    @property
    def final_meta(self) -> Path:
        return self.root / FINAL / MODEL_JSON

    @property
    def eval(self) -> Path:
        return self.root / "eval.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def loss_plot(self) -> Path:
        return self.root / "loss.png"

    @property
    def lr_plot(self) -> Path:
        return self.root / "lr.png"

    def is_run(self) -> bool:
        """True when `planck train` has started here (config.json exists)."""
        return self.config.is_file()

    def is_finished(self) -> bool:
        """True when the run wrote its final weights' description."""
        return self.final_meta.is_file()

    def read_config(self) -> dict[str, Any]:
        """config.json as written by the trainer: {"phase", "data", "config"}."""
        if not self.root.is_dir():
            raise RunFolderError(f"{self.root}: no such run folder")
        if not self.is_run():
            raise RunFolderError(f"{self.root}: not a run folder (no config.json; `planck train` writes one in --run-dir)")
        config = read_json(self.config, "run configuration")
        if not isinstance(config, dict):
            raise RunFolderError(f"{self.config}: not a run configuration (expected a JSON object)")
        return config

    def read_metrics(self) -> tuple[list[dict[str, Any]], list[str]]:
        """The logged rows (objects with a numeric step) and a note per line that could not be read."""
        rows: list[dict[str, Any]] = []
        notes: list[str] = []
        if not self.metrics.exists():
            return rows, notes
        for i, line in enumerate(self.metrics.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                notes.append(f"metrics.jsonl line {i} is not JSON (a write cut short?): skipped")
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
                rows.append(row)
        return rows, notes

    def read_changes(self) -> list[dict[str, Any]]:
        """Settings changed on resume, oldest first: {"step", "time", "changed": {key: [old, new]}}."""
        if not self.changes.exists():
            return []
        out = []
        for line in self.changes.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("changed"), dict):
                out.append(row)
        return out

    def truncate_metrics(self, step: int) -> None:
        """Drop rows logged after `step` (the checkpoint a run resumes from): they will be logged again, identically."""
        if not self.metrics.exists():
            return
        keep = [line for line in self.metrics.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        self.metrics.write_text("".join(line + "\n" for line in keep))

    def read_optional(self, path: Path, what: str) -> tuple[dict[str, Any] | None, str | None]:
        """A JSON object file that may be absent: (value, None), (None, None) if absent, (None, note) if unreadable."""
        if not path.is_file():
            return None, None
        try:
            value = read_json(path, what)
        except RunFolderError as exc:
            return None, f"{path.relative_to(self.root)} is unreadable ({exc})"
        if not isinstance(value, dict):
            return None, f"{path.relative_to(self.root)} is unreadable (not a JSON object)"
        return value, None
