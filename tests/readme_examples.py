"""The README's examples and figures, generated from live runs so that they cannot drift from what planck prints.

    .venv/bin/python tests/readme_examples.py            # rewrite the fast blocks (make docs, ~20 s)
    .venv/bin/python tests/readme_examples.py --slow     # also time `make demo` and take the A/B table (make docs-slow)
    .venv/bin/python tests/readme_examples.py --check    # exit 1 naming every fast block that differs

A generated block in README.md sits between `<!-- make docs: NAME -->` and `<!-- /make docs -->`;
everything between the two markers is what BLOCKS[NAME] returns. The fast blocks (command output on
the embedded corpus and the demo chat set, the mixtures table) are deterministic and are compared
by tests/test_readme.py; the slow ones (a timed `make demo`, the A/B of bench/ab_original.py) depend
on the machine and are rewritten only with --slow, stating the machine they were measured on.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MARKER = re.compile(r"<!-- make docs: (?P<name>[a-z0-9-]+) -->\n(?P<body>.*?)<!-- /make docs -->", re.S)
PLANCK = [str(Path(sys.executable).with_name("planck"))]
SHOW_WIDTH = 400  # characters of `shards show`'s one long line kept in the README

# The demo's own command lines (Makefile demo-shards), run in a scratch folder so paths read as in the README.
TOKENIZE_EMBEDDED = ["tokenize", "pretrain", "--source", "embedded", "--out", "shards/demo/pretrain",
                     "--max-tokens", "400k", "--val-tokens", "40k", "--shard-tokens", "200k"]
TOKENIZE_DEMO_CHAT = ["tokenize", "chat", "--mixture", "demo", "--out", "shards/demo/sft", "--val-rows", "40"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TIKTOKEN_CACHE_DIR", str(REPO / ".cache" / "tiktoken"))
    env["NO_COLOR"] = "1"
    return env


class Scratch:
    """A scratch working folder holding the demo's shards, made once for every block that needs them."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="planck-readme-"))
        self._made: dict[str, str] = {}

    def planck(self, args: list[str]) -> str:
        """planck's stdout for `args` run in the scratch folder; stop with its stderr when it fails."""
        proc = subprocess.run(PLANCK + args, cwd=self.root, env=_env(), capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"readme_examples: `planck {' '.join(args)}` failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return proc.stdout

    def once(self, args: list[str]) -> str:
        """The stdout of a command that writes shards, run at most once per scratch folder."""
        key = " ".join(args)
        if key not in self._made:
            self._made[key] = self.planck(args + ["--workers", "1", "--quiet"])
        return self._made[key]

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _fence(command: str, output: str) -> str:
    return f"```\n$ {command}\n{output.rstrip()}\n```\n"


def tokenize_embedded(s: Scratch) -> str:
    """`planck tokenize pretrain --source embedded ...`'s summary (the progress bar, on stderr, is left out)."""
    return _fence("planck " + " ".join(TOKENIZE_EMBEDDED), s.once(TOKENIZE_EMBEDDED))


def tokenize_demo_chat(s: Scratch) -> str:
    """`planck tokenize chat --mixture demo ...`'s summary."""
    return _fence("planck " + " ".join(TOKENIZE_DEMO_CHAT), s.once(TOKENIZE_DEMO_CHAT))


def stats_demo_sft(s: Scratch) -> str:
    """`planck shards stats` on the demo's chat shards."""
    s.once(TOKENIZE_DEMO_CHAT)
    return _fence("planck shards stats shards/demo/sft", s.planck(["shards", "stats", "shards/demo/sft"]))


def show_demo_sft(s: Scratch) -> str:
    """`planck shards show --doc 0`, its one long line cut to SHOW_WIDTH characters."""
    s.once(TOKENIZE_DEMO_CHAT)
    lines = s.planck(["shards", "show", "shards/demo/sft", "--doc", "0", "--color", "never"]).splitlines()
    lines = [line if len(line) <= SHOW_WIDTH else line[:SHOW_WIDTH] + "..." for line in lines]
    return _fence("planck shards show shards/demo/sft --doc 0 --color never", "\n".join(lines))


def _count(n: int) -> str:
    return f"{n // 1000}k" if n >= 10_000 and n % 1000 == 0 else f"{n:,}"


def mixtures(_: Scratch) -> str:
    """The shipped mixtures (configs/mixtures/*.toml), one row per source."""
    rows = ["| mixture | source | format | from | rows read | repeats |", "|---|---|---|---|---|---|"]
    for path in sorted((REPO / "configs" / "mixtures").glob("*.toml")):
        table = tomllib.loads(path.read_text())
        for i, src in enumerate(table.get("source", [])):
            if "hf" in src:
                where = f"`{src['hf']}`" + "".join(f" {src[k]}" for k in ("config", "split") if k in src)
            else:
                where = f"`{src['path'].removeprefix('../')}`" if not src["path"].startswith("builtin:") else "built in (offline)"
            rows.append(f"| {f'`{path.stem}`' if i == 0 else ''} | {src['name']} | {src['format']} | {where} | "
                        f"{_count(src['max_rows']) if 'max_rows' in src else 'all'} | {src.get('repeats', 1)} |")
    return "\n".join(rows) + "\n"


def _machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{os.cpu_count()} CPU cores, load average {load:.2f} at the start"


def demo_run(_: Scratch) -> str:
    """A timed `make demo` from no shards and no runs (install done), with the validation figures it reached."""
    for folder in ("runs/demo", "shards/demo"):
        shutil.rmtree(REPO / folder, ignore_errors=True)
    machine = _machine()
    t0 = time.perf_counter()
    proc = subprocess.run(["make", "demo"], cwd=REPO, env=_env(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"readme_examples: make demo failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    bpb = {phase: json.loads((REPO / "runs" / "demo" / phase / "eval.json").read_text())["tasks"]["bpb"]
           for phase in ("pretrain", "sft")}
    after = proc.stdout.split("== a chat reply from the fine-tuned model ==", 1)[-1]
    reply = next((line.split("planck> ", 1)[1].strip() for line in after.splitlines() if "planck> " in line), "")
    reply = reply if len(reply) <= 90 else reply[:90].rsplit(" ", 1)[0] + " ..."
    last = json.loads((REPO / "runs" / "demo" / "pretrain" / "metrics.jsonl").read_text().splitlines()[-1])
    minutes, seconds = divmod(round(wall), 60)
    return (f"Measured with `make docs-slow` (`make demo` after `rm -rf runs/demo shards/demo`, install done; "
            f"{machine}): **{minutes} min {seconds:02d} s**; a machine busy with other work takes longer "
            f"(the load average says how busy this one was). Validation on the whole held-out splits "
            f"(`planck eval`): pretrain {bpb['pretrain']['val_loss']:.2f} nats/token "
            f"({bpb['pretrain']['value']:.2f} bits per byte), SFT {bpb['sft']['val_loss']:.2f} nats/token "
            f"({bpb['sft']['value']:.2f} bits per byte, on 40 held-out conversations). The tiny model learns the "
            f"shape of a reply (asked \"Who are you?\" it answered \"{reply}\"), not facts: it has seen "
            f"{last['tokens_seen'] / 1000:,.0f}k tokens.\n")


def ab_original(_: Scratch) -> str:
    """The A/B table from bench/results/ab_original.json (written by bench/ab_original.py)."""
    path = REPO / "bench" / "results" / "ab_original.json"
    if not path.exists():
        sys.exit(f"readme_examples: {path} is missing: run .venv/bin/python bench/ab_original.py first")
    data = json.loads(path.read_text())
    seeds, res = data["seeds"], data["results"]
    ours = [res["ours"][str(s)]["val_bpb"] for s in seeds]
    base = set(data["variants"]["ours"])
    rows = [f"| variant | `--set` (what differs from `ours`) | val bpb, seeds {', '.join(map(str, seeds))} | mean | minus ours, per seed |",
            "|---|---|---|---|---|"]
    for name, sets in data["variants"].items():
        vals = [res[name][str(s)]["val_bpb"] for s in seeds]
        paired = ", ".join(f"{v - o:+.4f}" for v, o in zip(vals, ours))
        rows.append(f"| {name} | {' '.join(f'`{x}`' for x in sets if name == 'ours' or x not in base)} | "
                    f"{', '.join(f'{v:.4f}' for v in vals)} | {sum(vals) / len(vals):.4f} | {paired if name != 'ours' else '-'} |")
    return "\n".join(rows) + f"\n\nval bits per byte after {data['steps']} steps of `tiny` pretraining on the embedded corpus, whole validation split.\n"


FAST: dict[str, Callable[[Scratch], str]] = {
    "tokenize-embedded": tokenize_embedded, "tokenize-demo-chat": tokenize_demo_chat,
    "stats-demo-sft": stats_demo_sft, "show-demo-sft": show_demo_sft, "mixtures": mixtures,
}
SLOW: dict[str, Callable[[Scratch], str]] = {"demo-run": demo_run, "ab-original": ab_original}
BLOCKS = {**FAST, **SLOW}


def render(text: str, names: set[str], scratch: Scratch) -> tuple[str, list[str]]:
    """The README with the named blocks regenerated, and the names of those whose text changed."""
    changed: list[str] = []
    unknown = sorted({m["name"] for m in MARKER.finditer(text)} - set(BLOCKS))
    if unknown:
        sys.exit(f"readme_examples: README.md names unknown blocks: {', '.join(unknown)}")

    def one(m: re.Match) -> str:
        name, body = m["name"], m["body"]
        if name not in names:
            return m[0]
        new = BLOCKS[name](scratch)
        if new != body:
            changed.append(name)
        return f"<!-- make docs: {name} -->\n{new}<!-- /make docs -->"

    return MARKER.sub(one, text), changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare the fast blocks with live output; write nothing")
    ap.add_argument("--slow", action="store_true", help="also regenerate the machine-dependent blocks (minutes)")
    args = ap.parse_args(argv)
    text = README.read_text()
    names = set(FAST) | (set(SLOW) if args.slow and not args.check else set())
    scratch = Scratch()
    try:
        new, changed = render(text, names, scratch)
    finally:
        scratch.close()
    if args.check:
        for name in changed:
            print(f"README.md: block {name!r} differs from live output: run `make docs`")
        return 1 if changed else 0
    if new != text:
        tmp = README.with_suffix(".md.tmp")
        tmp.write_text(new)
        tmp.replace(README)
    print(f"README.md: {len(changed)} block(s) rewritten" + (f" ({', '.join(changed)})" if changed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
