"""The embedded corpus: real English prose that ships with Python itself, for offline demos and tests."""

from __future__ import annotations

import ast
import sys
import sysconfig
from pathlib import Path
from typing import Iterator

# Folders of the standard library whose docstrings are test scaffolding, not prose.
_SKIP_PARTS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "lib2to3", "turtledemo"}
_MIN_DOCSTRING = 40  # characters; shorter docstrings are mostly "Return x." one-liners


def describe() -> str:
    """Where the embedded corpus comes from (recorded in the manifest)."""
    return f"embedded: pydoc_data.topics and standard-library docstrings of Python {sys.version.split()[0]}"


def _docstrings(tree: ast.Module) -> list[str]:
    out = []
    nodes: list[ast.AST] = [tree]
    while nodes:  # depth-first in source order: deterministic
        node = nodes.pop(0)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc) >= _MIN_DOCSTRING:
                out.append(doc)
            nodes[0:0] = [n for n in node.body if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    return out


def embedded_rows() -> Iterator[dict]:
    """Rows {"text", "id"}: each pydoc help topic, then each standard-library module's docstrings."""
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield {"text": topics[key], "id": f"pydoc:{key}"}
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if _SKIP_PARTS.intersection(rel.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a handful of files are deliberately unparsable fixtures, not prose
        docs = _docstrings(tree)
        if docs:
            yield {"text": "\n\n".join(docs), "id": f"stdlib:{rel.as_posix()}"}
