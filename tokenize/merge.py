"""`planck tokenize merge`: join the part manifests of a multi-machine pretrain job into one manifest.json."""

from __future__ import annotations

from pathlib import Path

from planck.schemas.manifest import Manifest, ManifestError, SourceEntry
from planck.shards.folder import write_manifest

from .output import JobError


def merge_parts(folder: Path) -> Manifest:
    """Check that every part is finished and consistent, then write the combined manifest."""
    folder = Path(folder)
    paths = sorted(folder.glob("manifest.w[0-9][0-9][0-9].json"))
    if not paths:
        raise JobError(f"{folder}: no part manifests (manifest.wNNN.json) to merge")
    parts = [Manifest.from_json(p.read_text(), where=str(p)) for p in paths]
    n = parts[0].options["job"]["num_workers"]
    indices = sorted(p.options["job"]["worker_index"] for p in parts)
    if indices != list(range(n)):
        missing = sorted(set(range(n)) - set(indices))
        raise JobError(f"{folder}: parts {missing} of {n} are not finished yet (no manifest.wNNN.json)")
    common = {k: v for k, v in parts[0].options["job"].items() if k != "worker_index"}
    for path, m in zip(paths, parts):
        other = {k: v for k, v in m.options["job"].items() if k != "worker_index"}
        if other != common or m.tokenizer != parts[0].tokenizer:
            raise ManifestError(f"{path}: made with other options or another tokenizer than {paths[0].name}")
    merged: dict[str, SourceEntry] = {}
    for m in parts:
        for s in m.sources:
            t = merged.setdefault(s.name, SourceEntry(s.name, s.spec, s.format, repeats=s.repeats))
            t.rows_read += s.rows_read
            t.documents += s.documents
            t.tokens += s.tokens
            for reason, count in s.skipped.items():
                t.skipped[reason] = t.skipped.get(reason, 0) + count
    manifest = Manifest(
        kind=parts[0].kind,
        tokenizer=parts[0].tokenizer,
        shards=[s for split in ("val", "train") for m in parts for s in m.split(split)],
        sources=list(merged.values()),
        trained_roles=parts[0].trained_roles,
        made_by={**parts[0].made_by, "merged_parts": [p.name for p in paths]},
        options={"job": {**common, "worker_index": None}},
    )
    write_manifest(folder, manifest)
    return manifest
