"""The tokenizer job's output folder: numbered shards per split, a progress file for resuming, and the final manifest."""

from __future__ import annotations

import json
import re
import sys
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from planck.schemas.atomic import atomic_write_text
from planck.schemas.chat_template import TRAINED_ROLES
from planck.schemas.errors import PlanckError
from planck.schemas.manifest import Manifest, ShardEntry, SourceEntry
from planck.schemas.shard_header import FORMAT_VERSION
from planck.schemas.tokenizer import PADDED_VOCAB_SIZE, TOKENIZER_NAME, VOCAB_SIZE, get_tokenizer, tokenizer_fingerprint
from planck.shards.folder import read_manifest
from planck.shards.reader import ShardError, read_header
from planck.shards.writer import ShardWriter


class JobError(PlanckError, RuntimeError):
    """The output folder holds something this job must not overwrite or cannot resume."""


@contextmanager
def output_folder(folder: Path) -> Iterator[Path]:
    """Create the job's folder (and missing parents); if the job fails, remove those it created while they are still empty.

    A folder that existed before is never removed, and one holding anything (finished shards, a resume record,
    rendered sources) stays for the re-run.
    """
    folder = Path(folder)
    created = []
    p = folder
    while not p.exists():
        created.append(p)
        if p.parent == p:
            break
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        for p in [folder / ".work", *created]:  # deepest first
            try:
                p.rmdir()  # only ever removes an empty folder
            except OSError:
                if p != folder / ".work":
                    break
        raise


def part_suffix(worker_index: int, num_workers: int) -> str:
    """'' for a single-machine job, 'w003' for part 3 of a multi-machine one."""
    return f"w{worker_index:03d}" if num_workers > 1 else ""


def tokenizer_record() -> dict[str, Any]:
    """The tokenizer fields every manifest carries."""
    get_tokenizer()
    return {
        "name": TOKENIZER_NAME,
        "fingerprint": tokenizer_fingerprint().hex(),
        "vocab_size": VOCAB_SIZE,
        "padded_vocab_size": PADDED_VOCAB_SIZE,
    }


def made_by(command: list[str]) -> dict[str, Any]:
    """Who made a shard folder: the command line and the versions that matter for its bytes."""
    from importlib.metadata import version

    from planck.schemas.version import planck_version

    return {
        "command": command,
        "planck": planck_version(),
        "shard_format": FORMAT_VERSION,
        "python": sys.version.split()[0],
        "tiktoken": version("tiktoken"),
        "datasets": version("datasets"),
    }


class Progress:
    """The resume record of a job: written atomically after every finished shard."""

    def __init__(self, folder: Path, options: dict[str, Any], part: str = ""):
        self.path = folder / (f"progress.{part}.json" if part else "progress.json")
        self.options = options
        self.position = 0  # rows (pretrain) or mixture entries (chat) fully accounted for
        self.shards: list[ShardEntry] = []
        self.sources: list[SourceEntry] = []
        self.extra: dict[str, Any] = {}

    def load(self) -> bool:
        """Restore a previous run's record; False if there is none. Refuses one made with other options."""
        if not self.path.exists():
            return False
        raw = json.loads(self.path.read_text())
        if raw["options"] != self.options:
            changed = sorted(k for k in set(raw["options"]) | set(self.options) if raw["options"].get(k) != self.options.get(k))
            raise JobError(
                f"{self.path.parent} holds an unfinished job made with other options ({', '.join(changed)}); "
                "re-run it with the same options, or choose another --out"
            )
        self.position = raw["position"]
        self.shards = [ShardEntry(**s) for s in raw["shards"]]
        self.sources = [SourceEntry(**s) for s in raw["sources"]]
        self.extra = raw.get("extra", {})
        return True

    def save(self) -> None:
        """Write the record atomically."""
        atomic_write_text(
            self.path,
            json.dumps(
                {
                    "options": self.options,
                    "position": self.position,
                    "shards": [asdict(s) for s in self.shards],
                    "sources": [asdict(s) for s in self.sources],
                    "extra": self.extra,
                },
                indent=1,
            ),
        )

    def check_finished_shards(self, folder: Path) -> None:
        """Every shard the record lists must still be there, unchanged."""
        for e in self.shards:
            try:
                h = read_header(folder / e.file)
            except ShardError as exc:
                raise JobError(f"cannot resume: {exc}; delete {folder} and start again") from None
            if h.checksum.hex() != e.checksum or (folder / e.file).stat().st_size != e.bytes:
                raise JobError(f"cannot resume: {folder / e.file} changed since it was written")


def shard_name(split: str, part: str, index: int) -> str:
    """train_00012.bin, or train_w003_00012.bin for part 3 of a multi-machine job."""
    return f"{split}_{part + '_' if part else ''}{index:05d}.bin"


def clean_for_resume(folder: Path, progress: Progress, part: str) -> None:
    """Remove what a killed run left: temporary files, and this part's shards the record does not list yet."""
    listed = {e.file for e in progress.shards}
    mine = re.compile(rf"^(train|val)_{part + '_' if part else ''}\d{{5}}\.bin$")
    # Only this part's temporary files: another machine may be writing its own into the same folder.
    for p in folder.glob("*.tmp"):
        stem = p.name.removesuffix(".tmp").removesuffix(".roles")
        if mine.match(stem) or stem in (progress.path.name, progress.path.name.replace("progress", "manifest", 1)):
            p.unlink()
    for p in folder.glob("*.bin"):
        if mine.match(p.name) and p.name not in listed:
            p.unlink()  # renamed but not yet recorded: the resumed run rewrites the same bytes


class ShardOutput:
    """Writes documents into numbered shards, one split after another, and calls `on_shard` after each."""

    def __init__(
        self,
        folder: Path,
        *,
        part: str,
        shard_tokens: int,
        with_roles: bool,
        entries: list[ShardEntry],
        on_shard: Callable[[], None],
    ):
        self.folder = folder
        self.part = part
        self.shard_tokens = shard_tokens
        self.with_roles = with_roles
        self.entries = entries
        self.on_shard = on_shard
        self._writer: ShardWriter | None = None
        self._split = ""

    def _next_name(self, split: str) -> str:
        return shard_name(split, self.part, sum(1 for e in self.entries if e.split == split))

    def add(self, split: str, ids: np.ndarray, roles: np.ndarray | None, source: int) -> None:
        """Append a document; a shard that is full (or of another split) is finished first."""
        w = self._writer
        if w is not None and (split != self._split or (w.num_tokens and w.num_tokens + len(ids) > self.shard_tokens)):
            self.finish_shard()
        if self._writer is None:
            self._split = split
            self._writer = ShardWriter(
                self.folder / self._next_name(split),
                vocab_size=VOCAB_SIZE,
                fingerprint=tokenizer_fingerprint(),
                with_roles=self.with_roles,
            )
        self._writer.add(ids, roles, source)

    def finish_shard(self) -> None:
        """Close the open shard (if any), record it, and let the job save its progress."""
        if self._writer is None:
            return
        w = self._writer.close()
        self._writer = None
        self.entries.append(ShardEntry(w.path.name, self._split, w.tokens, w.documents, w.bytes, w.checksum))
        self.on_shard()

    def abort(self) -> None:
        """Drop the unfinished shard (on error or interrupt)."""
        if self._writer is not None:
            self._writer.abort()
            self._writer = None


def finished(folder: Path, options: dict[str, Any], manifest_name: str = "manifest.json") -> Manifest | None:
    """The manifest of a job already completed with these options; JobError if it was made with others."""
    if not (folder / manifest_name).exists():
        return None
    m = read_manifest(folder) if manifest_name == "manifest.json" else Manifest.from_json((folder / manifest_name).read_text())
    if m.options.get("job") != options:
        raise JobError(
            f"{folder} already holds finished shards made with other options; choose another --out or delete it"
        )
    return m


def publish(path: Path, manifest: Manifest, progress: Progress) -> None:
    """Write the manifest last (its presence means the job finished), then drop the resume record."""
    atomic_write_text(path, manifest.to_json())
    progress.path.unlink(missing_ok=True)


def build_manifest(kind: str, shards: list[ShardEntry], sources: list[SourceEntry], options: dict[str, Any], command: list[str]) -> Manifest:
    """The manifest of a finished job."""
    trained = sorted(int(r) for r in TRAINED_ROLES) if kind == "chat" else [0]
    return Manifest(
        kind=kind,
        tokenizer=tokenizer_record(),
        shards=shards,
        sources=sources,
        trained_roles=trained,
        made_by=made_by(command),
        options={"job": options},
    )
