"""A shard folder: its manifest.json plus the shards it lists, opened and cross-checked together."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from planck.schemas.atomic import atomic_write_text
from planck.schemas.manifest import MANIFEST_NAME, Manifest, ManifestError, ShardEntry

from .reader import Shard, ShardError, file_kind, open_shard


def read_manifest(folder: Path) -> Manifest:
    """Load and validate `folder/manifest.json`; ManifestError names the path (never a hang on a FIFO, never a traceback)."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise ManifestError(f"{folder}: no such folder; make the shards first: `make shards` (or `make demo-shards` for "
                            f"the offline demo), or `planck tokenize pretrain|chat --out {folder} ...`")
    try:
        st = os.stat(path)  # follows a symlink: what would be read
    except FileNotFoundError:
        raise ManifestError(f"{path}: missing; is {folder} a shard folder made by `planck tokenize`?") from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ManifestError(f"{path}: cannot be read: {file_kind(st.st_mode)}, not a regular file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text (byte {exc.start}): not a manifest written by planck") from None
    return Manifest.from_json(text, where=str(path))


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Write the manifest atomically (it is the last file a job writes: its presence means done)."""
    atomic_write_text(Path(folder) / MANIFEST_NAME, manifest.to_json())


class ShardFolder:
    """The shards of one folder as its manifest lists them, tokenizer-checked on open."""

    def __init__(self, folder: Path, *, verify: bool = False):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.fingerprint = bytes.fromhex(self.manifest.tokenizer["fingerprint"])
        self.verify = verify

    def check_tokenizer(self) -> None:
        """Refuse a folder made with another tokenizer than this install's: its ids would mean other text."""
        from planck.schemas.tokenizer import tokenizer_fingerprint

        if self.manifest.tokenizer.get("fingerprint") != tokenizer_fingerprint().hex():
            raise ManifestError(f"{self.folder} was tokenized with another tokenizer than this planck's")

    @property
    def source_names(self) -> list[str]:
        return [s.name for s in self.manifest.sources]

    def entries(self, split: str | None = None) -> list[ShardEntry]:
        """Manifest entries, optionally of one split."""
        return self.manifest.shards if split is None else self.manifest.split(split)

    def open(self, entry: ShardEntry) -> Shard:
        """Open one listed shard, checking it against its manifest entry."""
        shard = open_shard(self.folder / entry.file, fingerprint=self.fingerprint, verify=self.verify)
        h = shard.header
        if (h.num_tokens, h.num_documents, h.checksum.hex()) != (entry.tokens, entry.documents, entry.checksum):
            raise ShardError(shard.path, "does not match the manifest (counts or checksum differ): replaced or stale file")
        return shard

    def shards(self, split: str | None = None) -> list[Shard]:
        """All listed shards of a split (or all), opened."""
        return [self.open(e) for e in self.entries(split)]


def verify_folder(folder: Path, workers: int | None = None) -> tuple[list[str], list[str]]:
    """The pre-flight's checks (shards/preflight.py) over every split, collecting every problem rather than stopping at
    the first: (problems, warnings), each a line naming its file."""
    from .preflight import verify_problems

    return verify_problems(Path(folder), workers=workers)
