"""The dataset manifest (`manifest.json` in every shard folder): versioned, validated on load."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from planck.schemas.errors import PlanckError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "planck-shards-manifest"
MANIFEST_VERSION = 1
SPLITS = ("train", "val")
KINDS = ("pretrain", "chat")


class ManifestError(PlanckError, ValueError):
    """The manifest is missing, malformed, or from a newer planck."""


@dataclass
class ShardEntry:
    file: str
    split: str
    tokens: int
    documents: int
    bytes: int
    checksum: str  # hex blake2b-128 of the payload, the same as in the shard's header


@dataclass
class SourceEntry:
    """One input source: what was read, what became documents, and what was skipped and why."""

    name: str
    spec: str  # where the rows came from: a hub id with config/split, file paths, or 'embedded'
    format: str
    rows_read: int = 0
    documents: int = 0
    tokens: int = 0
    repeats: int = 1
    skipped: dict[str, int] = field(default_factory=dict)


@dataclass
class Manifest:
    kind: str
    tokenizer: dict[str, Any]  # name, fingerprint (hex), vocab_size, padded_vocab_size
    shards: list[ShardEntry]
    sources: list[SourceEntry]
    trained_roles: list[int]
    made_by: dict[str, Any]  # command, planck version, python, library versions
    options: dict[str, Any] = field(default_factory=dict)
    format: str = MANIFEST_FORMAT
    version: int = MANIFEST_VERSION

    def split(self, name: str) -> list[ShardEntry]:
        """The shards of one split, in order."""
        return [s for s in self.shards if s.split == name]

    def to_json(self) -> str:
        """Stable, human-readable JSON (sorted keys inside entries keep diffs small)."""
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "manifest") -> "Manifest":
        """Parse and validate; ManifestError names the file and the problem."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{where}: not valid JSON ({exc})") from None
        if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
            raise ManifestError(f"{where}: not a PlanckGPT shards manifest")
        if not isinstance(raw.get("version"), int) or raw["version"] > MANIFEST_VERSION:
            raise ManifestError(
                f"{where}: manifest version {raw.get('version')!r} is newer than this planck reads ({MANIFEST_VERSION})"
            )
        try:
            m = cls(
                kind=raw["kind"],
                tokenizer=raw["tokenizer"],
                shards=[ShardEntry(**s) for s in raw["shards"]],
                sources=[SourceEntry(**s) for s in raw["sources"]],
                trained_roles=list(raw["trained_roles"]),
                made_by=raw["made_by"],
                options=raw.get("options", {}),
                format=raw["format"],
                version=raw["version"],
            )
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"{where}: malformed manifest ({exc})") from None
        if m.kind not in KINDS:
            raise ManifestError(f"{where}: unknown kind {m.kind!r}")
        for s in m.shards:
            if s.split not in SPLITS:
                raise ManifestError(f"{where}: shard {s.file} has unknown split {s.split!r}")
        return m
