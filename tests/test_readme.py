"""The README's generated examples (tests/readme_examples.py, `make docs`) equal what planck prints today."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def examples():
    spec = importlib.util.spec_from_file_location("readme_examples", HERE / "readme_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_blocks_equal_live_output_and_drift_is_caught(examples):
    text = examples.README.read_text()
    present = {m["name"] for m in examples.MARKER.finditer(text)}
    assert set(examples.FAST) <= present, f"README.md lacks generated blocks {set(examples.FAST) - present}"
    # A stale figure in one block (as the demo mixture's 'identity x8' once was) must be found, and only that one.
    stale = text.replace("| `sft` | arc_easy |", "| `sft` | arc_eazy |", 1)
    assert stale != text
    scratch = examples.Scratch()
    try:
        _, changed = examples.render(stale, set(examples.FAST), scratch)
    finally:
        scratch.close()
    assert changed == ["mixtures"], f"README blocks differ from live output: {changed}; run `make docs`"


def test_unknown_block_names_are_refused(examples):
    with pytest.raises(SystemExit, match="unknown blocks: no-such-block"):
        examples.render("<!-- make docs: no-such-block -->\nx\n<!-- /make docs -->", set(), None)
