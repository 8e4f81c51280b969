"""Decode one document of a shard folder with every token's role marked."""

from __future__ import annotations

from pathlib import Path

from planck.schemas.chat_template import TRAINED_ROLES, Role
from planck.schemas.errors import PlanckError
from planck.schemas.tokenizer import get_tokenizer

from .folder import ShardFolder


class NoSuchDocument(PlanckError, IndexError):
    """The document index is outside the split."""

_COLOURS = {
    Role.TEXT: "",
    Role.BOS: "\033[2m",
    Role.SYSTEM: "\033[35m",
    Role.USER: "\033[36m",
    Role.ASSISTANT_START: "\033[2;32m",
    Role.ASSISTANT: "\033[1;32m",
}
_RESET = "\033[0m"


def find_document(sf: ShardFolder, split: str, index: int):
    """(shard, index within it) of the index-th document of a split."""
    remaining = index
    entries = sf.entries(split)
    total = sum(e.documents for e in entries)
    if not 0 <= index < total:
        raise NoSuchDocument(f"{sf.folder}: the {split} split has {total:,} documents (0..{total - 1}), no document {index}")
    for e in entries:
        if remaining < e.documents:
            return sf.open(e), remaining
        remaining -= e.documents
    raise AssertionError("unreachable")


def render_document(folder: Path, index: int, split: str = "train", colour: bool = False) -> str:
    """A header line and the decoded text, role segments coloured or bracketed."""
    sf = ShardFolder(folder)
    from .preflight import check_manifest, check_shard

    # The pre-flight's checks of the manifest and of the one shard shown (one read of it: shards are <= ~200 MB):
    # what is printed is what a run would read.
    check_manifest(folder, sf.manifest, (split,))
    shard, local = find_document(sf, split, index)
    check_shard(sf.folder, next(e for e in sf.entries(split) if e.file == shard.path.name), sf.manifest)
    ids, roles = shard.document(local)
    enc = get_tokenizer()
    source = sf.source_names[int(shard.doc_sources[local])] if sf.source_names else "?"
    trained = len(ids) if roles is None else sum(int(r) in TRAINED_ROLES for r in roles)
    head = (
        f"# document {index} of the {split} split ({shard.path.name} #{local}, source {source}): "
        f"{len(ids):,} tokens, {trained:,} trained"
    )
    if roles is None:
        return head + "\n" + enc.decode(ids.tolist())
    parts = []
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or roles[i] != roles[start]:
            role = Role(int(roles[start]))
            text = enc.decode(ids[start:i].tolist())
            if colour:
                parts.append(f"{_COLOURS[role]}{text}{_RESET}")
            else:
                name = role.name.lower()
                mark = "*" if role in TRAINED_ROLES else ""
                parts.append(f"[{name}{mark}]{text}[/{name}]")
            start = i
    legend = "" if colour else "\n# [role*] = trained on"
    return head + legend + "\n" + "".join(parts)
