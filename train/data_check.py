"""The data check before step 1: every shard a run reads passes shards/preflight.py once, recorded in preflight.json.

It runs in a background thread while the model and optimizer are built and the checkpoint restored,
and is joined before the first step: a bad shard stops the run before it trains on anything. A
resumed run re-checks only when a shard file's size or modification time changed since the record.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from typing import Any

from planck.schemas.atomic import atomic_write_text
from planck.schemas.run_folder import RunFolder
from planck.shards.folder import ShardFolder
from planck.shards.preflight import preflight

SPLITS = ("train", "val")


def file_stamps(folder: ShardFolder) -> dict[str, list[int]]:
    """{shard file: [size, mtime_ns]} for every listed shard (missing files get [-1, -1]: they differ)."""
    out = {}
    for e in folder.entries():
        try:
            st = (folder.folder / e.file).stat()
            out[e.file] = [st.st_size, st.st_mtime_ns]
        except OSError:
            out[e.file] = [-1, -1]
    return out


class DataCheck:
    """Start with start(); join() returns the record (or raises the pre-flight's one-line error)."""

    def __init__(self, folder: ShardFolder, run: RunFolder, is_main: bool):
        self.folder, self.run, self.is_main = folder, run, is_main
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.record: dict[str, Any] | None = None
        self.skipped = False

    def _recorded(self) -> dict[str, Any] | None:
        """The earlier record, when it covers this folder and no shard file changed since."""
        try:
            old = json.loads(self.run.preflight.read_text())
        except (OSError, ValueError):
            return None
        same = (isinstance(old, dict) and old.get("folder") == str(self.folder.folder.absolute())
                and old.get("files") == file_stamps(self.folder))
        return old if same else None

    def _work(self) -> None:
        try:
            recorded = self._recorded()
            if recorded is not None:
                self.record, self.skipped = recorded, True
                return
            stamps = file_stamps(self.folder)
            report = preflight(self.folder.folder, SPLITS)
            self.record = {**report.as_dict(), "folder": str(self.folder.folder.absolute()), "files": stamps,
                           "checked": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        except BaseException as exc:  # handed to join(), in the main thread
            self._error = exc

    def start(self) -> "DataCheck":
        """Begin checking in a background thread."""
        self._thread = threading.Thread(target=self._work, name="planck-data-check", daemon=True)
        self._thread.start()
        return self

    def join(self) -> dict[str, Any]:
        """Wait for the check; raise its error, or write preflight.json (process 0) and return the record."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self.is_main and not self.skipped:
            atomic_write_text(self.run.preflight, json.dumps(self.record, indent=2) + "\n")
        return self.record
