"""The dataset manifest (`manifest.json` in every shard folder): versioned, validated on load."""

from __future__ import annotations

import json
import re
from dataclasses import MISSING as _MISSING, asdict, dataclass, field, fields
from typing import Any

from planck.schemas.errors import PlanckError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "planck-shards-manifest"
MANIFEST_VERSION = 1
SPLITS = ("train", "val")
KINDS = ("pretrain", "chat")
FINGERPRINT_HEX_CHARS = 16  # tokenizer_fingerprint() is 8 bytes (the shard header's fingerprint field)
CHECKSUM_HEX_CHARS = 32  # blake2b-128 of a shard's payload
MAX_ROLE_ID = 255  # role ids are one byte; shards/preflight.py checks them against the Role enum


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
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, an int of 5,000 digits, [[[[...
            raise ManifestError(f"{where}: not valid JSON ({str(exc)[:200]})") from None
        if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
            raise ManifestError(f"{where}: not a PlanckGPT shards manifest")
        version = raw.get("version")
        if not _count(version) or version < 1:
            raise ManifestError(f"{where}: manifest version {version!r} is not a version number")
        if version > MANIFEST_VERSION:
            raise ManifestError(
                f"{where}: manifest version {version!r} is newer than this planck reads ({MANIFEST_VERSION})"
            )
        return _validate(raw, where, cls)


def _hex(value: Any, chars: int) -> bool:
    return isinstance(value, str) and len(value) == chars and re.fullmatch(r"[0-9a-f]*", value) is not None


def _count(value: Any) -> bool:
    """A non-negative int (JSON's true/false and 1.0 are not counts)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _plain_shard_name(value: Any) -> bool:
    """A file name inside the folder, as `planck tokenize` writes them: no path separators, no '..', ends in .bin."""
    return isinstance(value, str) and ".." not in value and re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*\.bin", value) is not None


def _r(value: Any) -> str:
    """repr() cut to a readable length: error messages stay one short line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _record(raw: Any, dc: type, what: str, where: str) -> dict[str, Any]:
    """The keys of a JSON object meant for dataclass `dc`: unknown keys and missing required ones are refused."""
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: {what} is {type(raw).__name__}, not an object")
    names = {f.name for f in fields(dc)}
    required = {f.name for f in fields(dc) if f.default is f.default_factory is _MISSING}
    unknown = sorted(set(raw) - names)
    missing = sorted(required - set(raw))
    if unknown:
        raise ManifestError(f"{where}: {what} has unknown key(s) {', '.join(map(_r, unknown))}")
    if missing:
        raise ManifestError(f"{where}: {what} lacks key(s) {', '.join(map(_r, missing))}")
    return raw


def _validate(raw: dict[str, Any], where: str, cls: type) -> "Manifest":
    """Check every field's type and range; ManifestError names the file, the field and the value."""
    for key in ("kind", "tokenizer", "shards", "sources", "trained_roles", "made_by"):
        if key not in raw:
            raise ManifestError(f"{where}: malformed manifest (no {_r(key)})")
    kind = raw["kind"]
    if kind not in KINDS:
        raise ManifestError(f"{where}: unknown kind {_r(kind)} (expected one of {', '.join(KINDS)})")
    tok = raw["tokenizer"]
    if not isinstance(tok, dict):
        raise ManifestError(f"{where}: 'tokenizer' is {type(tok).__name__}, not an object")
    if not isinstance(tok.get("name"), str) or not tok["name"]:
        raise ManifestError(f"{where}: tokenizer name {_r(tok.get('name'))} is not a name")
    if not _hex(tok.get("fingerprint"), FINGERPRINT_HEX_CHARS):
        raise ManifestError(
            f"{where}: tokenizer fingerprint {_r(tok.get('fingerprint'))} is not {FINGERPRINT_HEX_CHARS} lowercase hex digits"
        )
    for key in ("vocab_size", "padded_vocab_size"):
        if not _count(tok.get(key)) or tok[key] == 0:
            raise ManifestError(f"{where}: tokenizer {key} {_r(tok.get(key))} is not a positive integer")
    if tok["padded_vocab_size"] < tok["vocab_size"]:
        raise ManifestError(f"{where}: tokenizer padded_vocab_size {tok['padded_vocab_size']} is below vocab_size {tok['vocab_size']}")

    if not isinstance(raw["shards"], list):
        raise ManifestError(f"{where}: 'shards' is {type(raw['shards']).__name__}, not a list")
    shards: list[ShardEntry] = []
    seen: set[str] = set()
    for i, s in enumerate(raw["shards"]):
        s = _record(s, ShardEntry, f"shards[{i}]", where)
        name = s["file"]
        if not _plain_shard_name(name):
            raise ManifestError(f"{where}: shards[{i}] file {_r(name)} is not a plain shard file name (NAME.bin, no folders)")
        if name in seen:
            raise ManifestError(f"{where}: shard {name} is listed twice")
        seen.add(name)
        if s["split"] not in SPLITS:
            raise ManifestError(f"{where}: shard {name} has unknown split {_r(s['split'])} (expected one of {', '.join(SPLITS)})")
        for key in ("tokens", "documents", "bytes"):
            if not _count(s[key]):
                raise ManifestError(f"{where}: shard {name} {key} {_r(s[key])} is not a non-negative integer")
        if not _hex(s["checksum"], CHECKSUM_HEX_CHARS):
            raise ManifestError(f"{where}: shard {name} checksum {_r(s['checksum'])} is not {CHECKSUM_HEX_CHARS} lowercase hex digits")
        shards.append(ShardEntry(**s))

    if not isinstance(raw["sources"], list):
        raise ManifestError(f"{where}: 'sources' is {type(raw['sources']).__name__}, not a list")
    sources: list[SourceEntry] = []
    for i, s in enumerate(raw["sources"]):
        s = _record(s, SourceEntry, f"sources[{i}]", where)
        for key in ("name", "spec", "format"):
            if not isinstance(s[key], str):
                raise ManifestError(f"{where}: sources[{i}] {key} {_r(s[key])} is not a string")
        for key in ("rows_read", "documents", "tokens", "repeats"):
            if key in s and not _count(s[key]):
                raise ManifestError(f"{where}: source {_r(s['name'])} {key} {_r(s[key])} is not a non-negative integer")
        skipped = s.get("skipped", {})
        if not isinstance(skipped, dict) or not all(isinstance(k, str) and _count(v) for k, v in skipped.items()):
            raise ManifestError(f"{where}: source {_r(s['name'])} skipped {_r(skipped)} is not an object of counts")
        sources.append(SourceEntry(**s))

    roles = raw["trained_roles"]
    if not isinstance(roles, list) or not all(_count(r) and r <= MAX_ROLE_ID for r in roles):
        raise ManifestError(f"{where}: trained_roles {_r(roles)} is not a list of role ids (0..{MAX_ROLE_ID})")
    for key in ("made_by", "options"):
        if not isinstance(raw.get(key, {}), dict):
            raise ManifestError(f"{where}: {_r(key)} is {type(raw[key]).__name__}, not an object")
    return cls(
        kind=kind,
        tokenizer=tok,
        shards=shards,
        sources=sources,
        trained_roles=list(roles),
        made_by=raw["made_by"],
        options=raw.get("options", {}),
        format=raw["format"],
        version=raw["version"],
    )
