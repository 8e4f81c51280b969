"""Chat mixtures: a TOML file of `[[source]]` tables, validated strictly (an unknown key is an error)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from planck.configs.shipped import shipped_file
from planck.schemas.errors import PlanckError
from planck.schemas.rows import CHAT_FORMATS

from .sources import BUILTIN_PREFIX, SourceSpec

SHIPPED = ("midtrain", "sft", "demo")
_TOP_KEYS = {"description", "seed", "source"}
_SOURCE_KEYS = {"name", "hf", "config", "split", "path", "format", "max_rows", "repeats"}


class MixtureError(PlanckError, ValueError):
    """A mixture file that cannot be used; the message names the file and the key."""


@dataclass
class Mixture:
    name: str
    origin: str  # the file it came from
    seed: int
    sources: list[SourceSpec]
    description: str = ""


def _shipped_path(name: str) -> Path:
    path = shipped_file("mixtures", f"{name}.toml")
    if path is None:
        raise MixtureError(f"shipped mixture {name!r} is missing from this installation")
    return path


def load_mixture(name_or_path: str) -> Mixture:
    """Load `midtrain`, `sft`, or a TOML file; relative `path`s resolve against the file's folder."""
    path = _shipped_path(name_or_path) if name_or_path in SHIPPED else Path(name_or_path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MixtureError(f"{path}: no such mixture file (shipped mixtures: {', '.join(SHIPPED)})") from None
    except tomllib.TOMLDecodeError as exc:
        raise MixtureError(f"{path}: invalid TOML ({exc})") from None
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise MixtureError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
    tables = raw.get("source")
    if not isinstance(tables, list) or not tables:
        raise MixtureError(f"{path}: needs at least one [[source]] table")
    seed = raw.get("seed", 0)
    if not isinstance(seed, int):
        raise MixtureError(f"{path}: seed must be an integer")
    sources, names = [], set()
    for i, t in enumerate(tables):
        where = f"{path}: [[source]] #{i + 1}"
        unknown = set(t) - _SOURCE_KEYS
        if unknown:
            raise MixtureError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_SOURCE_KEYS)}")
        for key in ("name", "format"):
            if not isinstance(t.get(key), str) or not t[key]:
                raise MixtureError(f"{where}: `{key}` is required (a string)")
        where = f"{path}: source {t['name']!r}"
        if t["name"] in names:
            raise MixtureError(f"{where}: duplicate name")
        names.add(t["name"])
        if t["format"] not in CHAT_FORMATS:
            raise MixtureError(f"{where}: format {t['format']!r} is not one of {list(CHAT_FORMATS)}")
        if ("hf" in t) == ("path" in t):
            raise MixtureError(f"{where}: give exactly one of `hf` (a hub dataset) or `path` (local files)")
        for key in ("hf", "config", "split", "path"):
            if key in t and not isinstance(t[key], str):
                raise MixtureError(f"{where}: `{key}` must be a string")
        for key, low in (("max_rows", 1), ("repeats", 1)):
            if key in t and (not isinstance(t[key], int) or isinstance(t[key], bool) or t[key] < low):
                raise MixtureError(f"{where}: `{key}` must be an integer >= {low}")
        local = t.get("path")
        if local is not None and not local.startswith(BUILTIN_PREFIX) and not Path(local).is_absolute():
            local = str((path.parent / local).resolve())
        sources.append(
            SourceSpec(
                name=t["name"], format=t["format"], hf=t.get("hf"), config=t.get("config"),
                split=t.get("split", "train"), path=local, max_rows=t.get("max_rows"), repeats=t.get("repeats", 1),
            )
        )
    return Mixture(name_or_path if name_or_path in SHIPPED else path.stem, str(path), seed, sources, raw.get("description", ""))


def point_at_local(mixture: Mixture, overrides: list[str]) -> None:
    """Apply `NAME=PATH` overrides: read that source from local files of the same schema instead of the hub."""
    by_name = {s.name: s for s in mixture.sources}
    for item in overrides:
        name, sep, local = item.partition("=")
        if not sep or not local:
            raise MixtureError(f"--source-path {item!r}: expected NAME=PATH")
        if name not in by_name:
            raise MixtureError(f"--source-path {item!r}: mixture {mixture.name!r} has no source {name!r}; it has {sorted(by_name)}")
        by_name[name].path = local
        by_name[name].hf = None
        by_name[name].config = None  # a hub config names a subset of the hub repo, not of local files
