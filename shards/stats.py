"""What a shard folder holds: counts per split and source, trained tokens, document-length distribution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from planck.schemas.chat_template import TRAINED_ROLE_TABLE, Role
from planck.schemas.manifest import SPLITS

from .folder import ShardFolder
from .reader import NUM_ROLES, ShardError, check_content

PERCENTILES = (0, 10, 50, 90, 99, 100)


def _trained_per_document(shard) -> tuple[np.ndarray, np.ndarray]:
    """(trained tokens per document, tokens per role id) of one shard."""
    lengths = np.diff(shard.doc_offsets).astype(np.int64)
    if shard.roles is None:
        role_counts = np.zeros(256, np.int64)
        role_counts[Role.TEXT] = shard.num_tokens
        return lengths, role_counts
    role_counts = np.bincount(shard.roles, minlength=256).astype(np.int64)
    table = np.zeros(256, bool)
    table[: len(TRAINED_ROLE_TABLE)] = TRAINED_ROLE_TABLE
    trained = table[shard.roles]
    per_doc = np.zeros(len(lengths), np.int64)
    nonempty = lengths > 0  # reduceat needs strictly valid starts; empty documents train on nothing
    if nonempty.any():
        per_doc[nonempty] = np.add.reduceat(trained, shard.doc_offsets[:-1][nonempty].astype(np.int64), dtype=np.int64)
    return per_doc, role_counts


def folder_stats(folder: Path) -> dict[str, Any]:
    """Every figure `planck shards stats` prints, as a JSON-ready dict."""
    sf = ShardFolder(folder)
    names = sf.source_names
    n_src = max(len(names), 1)
    src_docs = np.zeros(n_src, np.int64)
    src_tokens = np.zeros(n_src, np.int64)
    src_trained = np.zeros(n_src, np.int64)
    role_counts = np.zeros(256, np.int64)
    lengths_all: list[np.ndarray] = []
    splits: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        entries = sf.entries(split)
        if not entries:
            continue
        s = splits[split] = dict(shards=0, tokens=0, documents=0, trained_tokens=0, bytes=0)
        for entry in entries:
            shard = sf.open(entry)  # header, size, tokenizer, offsets and the manifest entry checked
            # what stats reads must be in range too (token bytes are not read here: `planck shards verify` checks them)
            check_content(shard, ids=False, num_sources=len(names))
            lengths = np.diff(shard.doc_offsets).astype(np.int64)
            trained, roles = _trained_per_document(shard)
            if roles[NUM_ROLES:].any():
                bad = int(np.flatnonzero(roles[NUM_ROLES:])[0]) + NUM_ROLES
                raise ShardError(shard.path, f"holds role id {bad}, outside the {NUM_ROLES} roles: the payload is corrupted")
            role_counts += roles
            lengths_all.append(lengths)
            s["shards"] += 1
            s["tokens"] += shard.num_tokens
            s["documents"] += shard.num_documents
            s["trained_tokens"] += int(trained.sum())
            s["bytes"] += shard.path.stat().st_size
            src = shard.doc_sources.astype(np.int64)
            src_docs += np.bincount(src, minlength=n_src)[:n_src]
            src_tokens += np.bincount(src, weights=lengths, minlength=n_src)[:n_src].astype(np.int64)
            src_trained += np.bincount(src, weights=trained, minlength=n_src)[:n_src].astype(np.int64)
    lengths = np.concatenate(lengths_all) if lengths_all else np.zeros(0, np.int64)
    tokens = sum(s["tokens"] for s in splits.values())
    trained_tokens = sum(s["trained_tokens"] for s in splits.values())
    size = sum(s["bytes"] for s in splits.values())
    sources = {}
    for i, src in enumerate(sf.manifest.sources):
        sources[src.name] = {
            "documents": int(src_docs[i]),
            "tokens": int(src_tokens[i]),
            "trained_tokens": int(src_trained[i]),
            "rows_read": src.rows_read,
            "repeats": src.repeats,
            "skipped": dict(src.skipped),
            "spec": src.spec,
        }
    return {
        "folder": str(folder),
        "kind": sf.manifest.kind,
        "tokens": tokens,
        "documents": int(lengths.size),
        "shards": sum(s["shards"] for s in splits.values()),
        "bytes": size,
        "bytes_per_token": size / tokens if tokens else 0.0,
        "trained_tokens": trained_tokens,
        "trained_fraction": trained_tokens / tokens if tokens else 0.0,
        "splits": splits,
        "sources": sources,
        "roles": {r.name.lower(): int(role_counts[r]) for r in Role if role_counts[r]},
        "document_length": _length_summary(lengths),
        "tokenizer": sf.manifest.tokenizer,
    }


def _length_summary(lengths: np.ndarray) -> dict[str, Any]:
    if lengths.size == 0:
        return {"mean": 0.0, "percentiles": {}, "histogram": []}
    top = max(int(lengths.max()), 1)
    edges = [0] + [2**k for k in range(0, int(np.ceil(np.log2(top))) + 2)]
    counts, _ = np.histogram(lengths, bins=edges)
    return {
        "mean": float(lengths.mean()),
        "percentiles": {f"p{p}": int(np.percentile(lengths, p, method="nearest")) for p in PERCENTILES},
        # bins [lo, hi): document lengths in tokens, powers of two
        "histogram": [{"lo": lo, "hi": hi, "count": int(c)} for lo, hi, c in zip(edges[:-1], edges[1:], counts) if c],
    }


def format_stats(st: dict[str, Any]) -> str:
    """The human-readable report."""
    out = [
        f"{st['folder']}  ({st['kind']} shards, tokenizer {st['tokenizer']['name']} {st['tokenizer']['fingerprint']})",
        f"  tokens          {st['tokens']:>15,}",
        f"  documents       {st['documents']:>15,}",
        f"  shards          {st['shards']:>15,}",
        f"  bytes           {st['bytes']:>15,}  ({st['bytes_per_token']:.3f} per token)",
        f"  trained tokens  {st['trained_tokens']:>15,}  ({100 * st['trained_fraction']:.1f}%)",
        "",
        f"  {'split':<22}{'shards':>8}{'documents':>13}{'tokens':>16}{'trained':>9}",
    ]
    for name, s in st["splits"].items():
        frac = s["trained_tokens"] / s["tokens"] if s["tokens"] else 0
        out.append(f"  {name:<22}{s['shards']:>8,}{s['documents']:>13,}{s['tokens']:>16,}{100 * frac:>8.1f}%")
    out += ["", f"  {'source':<22}{'rows read':>10}{'documents':>13}{'tokens':>16}{'trained':>9}  skipped"]
    for name, s in st["sources"].items():
        frac = s["trained_tokens"] / s["tokens"] if s["tokens"] else 0
        skipped = ", ".join(f"{k} {v:,}" for k, v in sorted(s["skipped"].items())) or "-"
        rep = f" x{s['repeats']}" if s["repeats"] != 1 else ""
        out.append(
            f"  {name + rep:<22}{s['rows_read']:>10,}{s['documents']:>13,}{s['tokens']:>16,}{100 * frac:>8.1f}%  {skipped}"
        )
    if st["kind"] == "chat":
        out += ["", "  tokens per role: " + ", ".join(f"{k} {v:,}" for k, v in st["roles"].items())]
    dl = st["document_length"]
    if dl["percentiles"]:
        pct = "  ".join(f"{k} {v:,}" for k, v in dl["percentiles"].items())
        out += ["", f"  document length (tokens): mean {dl['mean']:,.1f}  {pct}"]
        peak = max(b["count"] for b in dl["histogram"])
        for b in dl["histogram"]:
            bar = "#" * max(1, round(40 * b["count"] / peak))
            out.append(f"    {b['lo']:>7,} - {b['hi'] - 1:>7,}  {b['count']:>10,}  {bar}")
    return "\n".join(out)


def plot_stats(st: dict[str, Any], path: Path) -> None:
    """Write the document-length histogram as a PNG (needs matplotlib: `pip install planckgpt[plot]`)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'planckgpt[plot]'") from None
    hist = st["document_length"]["histogram"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar([f"{b['lo']}" for b in hist], [b["count"] for b in hist], color="#4a7bb7")
    ax.set_xlabel("document length in tokens (bin start, powers of two)")
    ax.set_ylabel("documents")
    ax.set_title(f"{st['folder']}: {st['documents']:,} documents, {st['tokens']:,} tokens")
    ax.tick_params(axis="x", labelrotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
