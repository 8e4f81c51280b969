"""The import graph between the top-level packages, read from the source (every import, lazy ones included).

    python bench/import_graph.py          # one line per package: what it imports
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("schemas", "shards", "tokenize", "model", "train", "serve", "eval", "report", "configs", "planck")


def package_of(module: str) -> str | None:
    """'planck.train.loop' -> 'train'; the CLI package 'planck.cli' -> 'planck'."""
    parts = module.split(".")
    if parts[0] != "planck":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in PACKAGES else "planck"


def graph() -> dict[str, set[str]]:
    """{package: packages it imports}, from every .py file of each package folder."""
    edges: dict[str, set[str]] = defaultdict(set)
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    target = package_of(name)
                    if target and target != pkg:
                        edges[pkg].add(target)
            edges.setdefault(pkg, set())
    return edges


def main() -> int:
    """Print the graph; exit 1 if it has a cycle (the CLI package `planck` excepted: it imports every job)."""
    edges = graph()
    for pkg in PACKAGES:
        print(f"{pkg:9} -> {', '.join(sorted(edges[pkg])) or '(nothing of ours)'}")
    state: dict[str, int] = {}

    def cyclic(n: str) -> bool:
        state[n] = 1
        for m in edges[n] - {"planck"}:
            if state.get(m) == 1 or (m not in state and cyclic(m)):
                return True
        state[n] = 2
        return False

    has_cycle = any(cyclic(p) for p in PACKAGES if p != "planck" and p not in state)
    print("cycles: " + ("yes" if has_cycle else "none"))
    return 1 if has_cycle else 0


if __name__ == "__main__":
    sys.exit(main())
