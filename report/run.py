"""One run folder as the report sees it: config.json, the metrics rows, final/model.json and eval.json.

The paths and readers are planck.schemas.run_folder's; a folder that is not a run is a RunFolderError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planck.schemas.run_folder import RunFolder


@dataclass
class RunFiles:
    """Everything one run folder holds that a report uses; `notes` name the files that could not be read."""

    folder: RunFolder
    config: dict[str, Any]  # config.json: {"phase", "data", "config"}
    rows: list[dict[str, Any]]  # metrics.jsonl
    final: dict[str, Any] | None  # final/model.json, once the run has finished
    evals: dict[str, Any] | None  # eval.json, once `planck eval` has scored the run
    notes: list[str] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.folder.root

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def phase(self) -> str:
        return str(self.config.get("phase") or (self.final or {}).get("phase") or "?")

    @property
    def cfg(self) -> dict[str, Any]:
        return self.config.get("config") or {}

    def section(self, name: str) -> dict[str, Any]:
        """One table of the run config (model, optim, train), {} when absent."""
        value = self.cfg.get(name)
        return value if isinstance(value, dict) else {}

    @property
    def init_from(self) -> str | None:
        """The run whose final/ weights this one started from (--init-from), as final/model.json records it."""
        return (self.final or {}).get("init_from") or None


def load_run(run_dir: Path) -> RunFiles:
    """Read a run folder; RunFolderError (one line, naming the path) when it is not one."""
    folder = RunFolder(Path(run_dir))
    config = folder.read_config()
    rows, notes = folder.read_metrics()
    final, note = folder.read_optional(folder.final_meta, "final model description")
    notes += [note] if note else []
    evals, note = folder.read_optional(folder.eval, "evaluation results")
    notes += [note] if note else []
    return RunFiles(folder, config, rows, final, evals, notes)
