"""The package layout promise: the repository's folders live only under `planck.*`.

Run from the repository root the way the README runs things, `import tokenize` must still
give the standard library's module (our `tokenize/` folder is `planck.tokenize`), nothing
may install a top-level `tokenize`, `shards`, `schemas`, `train` or `serve`, and the
tokenizer job and the shards CLI must never import the JAX stack.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PLANCK_SCRIPT = VENV_BIN / "planck"
STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()
FORBIDDEN_TOP_LEVEL = ("tokenize", "shards", "schemas", "train", "serve")
HEAVY = ("jax", "jaxlib", "flax", "optax", "grain", "orbax")

# Loaded through PYTHONPATH into every launcher below: at exit it records which `tokenize`
# and which `planck.tokenize` that process resolves, without changing what the launcher does.
SITECUSTOMIZE = '''
import atexit, json, os, sys

def _planck_layout_report():
    import importlib
    import tokenize
    pretrain = importlib.import_module("planck.tokenize.pretrain")
    with open(os.environ["PLANCK_LAYOUT_REPORT"], "w") as f:
        json.dump({
            "tokenize_file": getattr(tokenize, "__file__", None),
            "generate_tokens": callable(getattr(tokenize, "generate_tokens", None)),
            "planck_tokenize_pretrain": pretrain.__file__,
            "sys_path0": sys.path[0],
        }, f)

atexit.register(_planck_layout_report)
'''


def _in_stdlib(path: str | None) -> bool:
    return path is not None and Path(path).resolve().parent == STDLIB


def _tokenize_pretrain_args(out: Path) -> list[str]:
    return [
        "tokenize", "pretrain", "--source", "embedded", "--out", str(out),
        "--max-tokens", "3k", "--val-tokens", "1k", "--shard-tokens", "2k", "--workers", "1", "--quiet",
    ]


def _launch(kind: str, tmp_path: Path) -> list[str]:
    """The command line of one way the README starts Python from the repository root."""
    if kind == "python -c":
        return [sys.executable, "-c", "import tokenize, planck.tokenize.pretrain; tokenize.generate_tokens"]
    if kind == "python -m planck.cli":
        return [sys.executable, "-m", "planck.cli", *_tokenize_pretrain_args(tmp_path / "out_m")]
    if kind == "planck script":
        return [str(PLANCK_SCRIPT), *_tokenize_pretrain_args(tmp_path / "out_script")]
    if kind == "python -m pytest":
        probe = tmp_path / "test_probe_layout.py"
        probe.write_text(
            textwrap.dedent(
                f"""
                import sysconfig
                from pathlib import Path

                def test_probe():
                    import tokenize
                    import planck.tokenize.pretrain as pretrain
                    assert Path(tokenize.__file__).resolve().parent == Path(sysconfig.get_paths()["stdlib"]).resolve()
                    assert callable(tokenize.generate_tokens)
                    assert Path(pretrain.__file__).resolve() == Path({str(REPO / "tokenize" / "pretrain.py")!r})
                """
            )
        )
        # The repository's own pytest configuration (importlib import mode), started from the root.
        return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", "pyproject.toml", str(probe)]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["python -c", "python -m planck.cli", "planck script", "python -m pytest"])
def test_import_tokenize_from_repo_root_is_the_standard_library(kind, tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    report = tmp_path / "report.json"
    env = dict(os.environ, PYTHONPATH=str(hook), PLANCK_LAYOUT_REPORT=str(report))
    proc = subprocess.run(_launch(kind, tmp_path), cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{kind} failed:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    got = json.loads(report.read_text())
    assert _in_stdlib(got["tokenize_file"]), f"{kind}: `import tokenize` gave {got['tokenize_file']}"
    assert got["generate_tokens"]
    assert Path(got["planck_tokenize_pretrain"]).resolve() == REPO / "tokenize" / "pretrain.py"
    if kind == "python -m pytest":
        assert "1 passed" in proc.stdout


def test_import_tokenize_inside_this_pytest_process():
    import tokenize

    import planck.tokenize
    import planck.tokenize.sources

    assert _in_stdlib(tokenize.__file__)
    assert callable(tokenize.generate_tokens)
    assert sys.modules["tokenize"] is tokenize
    assert Path(planck.tokenize.sources.__file__).resolve() == REPO / "tokenize" / "sources.py"
    assert REPO / "tokenize" in [Path(p).resolve() for p in planck.tokenize.__path__]
    # The standard library's own users of tokenize still work (linecache reads source through it).
    import linecache

    assert "def generate_tokens" in "".join(linecache.getlines(tokenize.__file__))


def _site_packages() -> list[Path]:
    paths = sysconfig.get_paths()
    return sorted({Path(paths["purelib"]), Path(paths["platlib"])})


def test_site_packages_holds_no_top_level_repo_folders():
    site_dirs = _site_packages()
    assert any((d / "__editable__.planckgpt-0.1.0.pth").exists() or list(d.glob("planckgpt-*.dist-info")) for d in site_dirs), (
        "planckgpt is not installed in this interpreter's site-packages"
    )
    for d in site_dirs:
        for name in FORBIDDEN_TOP_LEVEL:
            hits = [p.name for p in d.iterdir() if p.name == name or p.name.startswith(name + ".")]
            assert not hits, f"{d} holds a top-level {name!r}: {hits}"
        # A .pth line that is a path puts that folder on everyone's sys.path: it must not hold our folders.
        for pth in d.glob("*.pth"):
            for line in pth.read_text().splitlines():
                line = line.strip()
                if not line or line.startswith(("#", "import ", "import\t")):
                    continue
                folder = (d / line).resolve()
                for name in FORBIDDEN_TOP_LEVEL:
                    assert not (folder / name).exists() and not (folder / f"{name}.py").exists(), (
                        f"{pth} adds {folder} to sys.path, which holds a top-level {name!r}"
                    )
    dist_infos = [p for d in site_dirs for p in d.glob("planckgpt-*.dist-info")]
    assert dist_infos
    for info in dist_infos:
        top_level = info / "top_level.txt"
        if top_level.exists():
            assert set(top_level.read_text().split()) == {"planck"}
        for row in (info / "RECORD").read_text().splitlines():
            first = row.split(",")[0].split("/")[0]
            assert first.removesuffix(".py") not in FORBIDDEN_TOP_LEVEL, f"{info}/RECORD installs {row}"
    # The editable finder maps only names under `planck`.
    for d in site_dirs:
        for finder in d.glob("__editable___planckgpt*_finder.py"):
            ns: dict = {}
            text = finder.read_text()
            mapping_line = next(line for line in text.splitlines() if line.startswith("MAPPING"))
            exec(mapping_line, ns)  # noqa: S102 - a literal dict written by setuptools
            assert ns["MAPPING"], finder
            for key in ns["MAPPING"]:
                assert key == "planck" or key.startswith("planck."), f"{finder} maps top-level {key!r}"


def test_find_spec_outside_the_repository(tmp_path):
    code = textwrap.dedent(
        """
        import importlib.util, json
        out = {}
        for name in ("tokenize", "shards", "schemas", "train", "serve", "planck.tokenize", "planck.shards", "planck.schemas"):
            spec = importlib.util.find_spec(name)
            out[name] = None if spec is None else {
                "origin": spec.origin,
                "locations": list(spec.submodule_search_locations or []),
            }
        print(json.dumps(out))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    specs = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("shards", "schemas", "train", "serve"):
        assert specs[name] is None, f"`import {name}` works outside the repository: {specs[name]}"
    assert _in_stdlib(specs["tokenize"]["origin"]), specs["tokenize"]
    assert not specs["tokenize"]["locations"], "tokenize resolved to a package, not the standard library's module"
    for sub in ("tokenize", "shards", "schemas"):
        locations = [Path(p).resolve() for p in specs[f"planck.{sub}"]["locations"] if os.path.isabs(p)]
        assert REPO / sub in locations, specs[f"planck.{sub}"]


def test_tokenizer_job_and_shards_cli_never_import_jax(tmp_path, text_corpus):
    code = textwrap.dedent(
        f"""
        import json, sys
        from planck.cli import main

        out = {str(tmp_path)!r}
        rcs = [
            main(["tokenize", "pretrain", "--source", "embedded", "--out", out + "/emb", "--max-tokens", "5k",
                  "--val-tokens", "1k", "--shard-tokens", "2k", "--workers", "1", "--quiet"]),
            main(["tokenize", "pretrain", "--source", {str(text_corpus)!r}, "--out", out + "/local",
                  "--max-tokens", "5k", "--val-tokens", "1k", "--workers", "1", "--quiet"]),
            main(["tokenize", "chat", "--mixture", "demo", "--out", out + "/chat", "--val-rows", "2",
                  "--workers", "1", "--quiet"]),
            main(["shards", "stats", out + "/emb"]),
            main(["shards", "stats", "--json", out + "/chat"]),
            main(["shards", "verify", out + "/emb", out + "/local", out + "/chat"]),
            main(["shards", "show", out + "/chat", "--doc", "0", "--color", "never"]),
        ]
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
        print("\\nREPORT " + json.dumps({{"rcs": rcs, "heavy": heavy}}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout.split("\nREPORT ")[-1])
    assert report["rcs"] == [0] * 7, proc.stdout + proc.stderr
    assert report["heavy"] == [], f"the tokenizer job / shards CLI imported {report['heavy']}"
    # The jobs really ran: the embedded folder holds shards and the stats report names it.
    assert list((tmp_path / "emb").glob("train_*.bin")) and (tmp_path / "chat" / "manifest.json").exists()
    assert f"{tmp_path}/emb" in proc.stdout


def test_building_the_parser_imports_nothing_heavy():
    """`planck --help` is instant: no numpy, datasets, tiktoken or pyarrow just to parse arguments."""
    code = (
        "import sys; from planck.cli import build_parser; build_parser(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('numpy', 'datasets', 'tiktoken', 'pyarrow', 'jax', 'tqdm')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], ["tokenize", "shards", "--version"]),
        (["tokenize", "pretrain"], ["--source", "--out", "--max-tokens", "--val-tokens", "--shard-tokens",
                                    "--workers", "--worker-index", "--num-workers", "--quiet", "embedded"]),
        (["tokenize", "chat"], ["--mixture", "--out", "--source-path", "NAME=PATH", "--val-rows", "--shard-tokens",
                                "--workers", "midtrain", "sft"]),
        (["shards", "stats"], ["folder", "--json", "--plot"]),
    ],
    ids=["planck", "tokenize-pretrain", "tokenize-chat", "shards-stats"],
)
def test_help(argv, expected):
    proc = subprocess.run([str(PLANCK_SCRIPT), *argv, "--help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: planck" + "".join(" " + a for a in argv))
    for word in expected:
        assert word in proc.stdout, f"`planck {' '.join(argv)} --help` does not mention {word}"
    assert proc.stderr == ""
