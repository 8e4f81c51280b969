"""A shard folder: its manifest.json plus the shards it lists, opened and cross-checked together."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from planck.schemas.atomic import atomic_write_text
from planck.schemas.manifest import MANIFEST_NAME, Manifest, ManifestError, ShardEntry

from .reader import Shard, ShardError, open_shard


def read_manifest(folder: Path) -> Manifest:
    """Load and validate `folder/manifest.json`; ManifestError names the path."""
    path = Path(folder) / MANIFEST_NAME
    if not Path(folder).is_dir():
        raise ManifestError(f"{folder}: no such folder")
    if not path.exists():
        raise ManifestError(f"{path}: missing; is {folder} a shard folder made by `planck tokenize`?")
    return Manifest.from_json(path.read_text(encoding="utf-8"), where=str(path))


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


def verify_folder(folder: Path) -> tuple[list[str], list[str]]:
    """Recompute every checksum and cross-check the manifest: (problems, warnings), each naming its file."""
    folder = Path(folder)
    try:
        sf = ShardFolder(folder, verify=True)
    except ManifestError as exc:
        return [str(exc)], []
    problems: list[str] = []
    warnings: list[str] = []
    per_source = np.zeros(max(len(sf.manifest.sources), 1), dtype=np.int64)
    listed = set()
    for entry in sf.entries():
        listed.add(entry.file)
        try:
            shard = sf.open(entry)
        except ShardError as exc:
            problems.append(str(exc))
            continue
        if shard.path.stat().st_size != entry.bytes:
            problems.append(f"{shard.path}: size differs from the manifest")
        if len(shard.doc_sources) and int(shard.doc_sources.max()) >= len(sf.manifest.sources):
            problems.append(f"{shard.path}: documents refer to a source the manifest does not list")
            continue
        per_source += np.bincount(shard.doc_sources, minlength=len(per_source))[: len(per_source)]
    for p in sorted(folder.glob("*.bin")):
        if p.name not in listed:
            problems.append(f"{p}: not listed in the manifest")
    for p in sorted(folder.glob("*.tmp")):
        warnings.append(f"{p}: leftover of an interrupted job (harmless; a re-run removes it)")
    if not problems:
        for i, src in enumerate(sf.manifest.sources):
            if per_source[i] != src.documents:
                problems.append(
                    f"{folder / MANIFEST_NAME}: source {src.name!r} lists {src.documents} documents, the shards hold {per_source[i]}"
                )
    return problems, warnings
