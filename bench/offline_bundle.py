"""Everything an offline GPU machine lacks for `make gpu-check`, in one folder that travels with the checkout.

    python bench/offline_bundle.py build   [--out .bundle] [--python 3.12]     # here, with a package index
    python bench/offline_bundle.py install [--bundle .bundle] --target DIR     # there, with no network

Some GPU machines (a cluster's nodes, a container image) can reach no package index but already hold
a CUDA build of jax that matches their driver. `make install ACCEL=cuda12` cannot run there, and a
CUDA jaxlib with its libraries is gigabytes, so the bundle does not carry it: it carries this
project as a wheel (built from a copy of the checkout and compared with it file by file), the
pinned releases of everything else it imports (flax, optax, orbax, grain, tiktoken, the server's
libraries, ...) built for the machine's Python on x86-64 manylinux, and GPT-2's rank file.
`install` puts into DIR (new or empty, for PYTHONPATH) the project's wheel and each bundled wheel
whose release the machine lacks, after checking every wheel's sha256. It refuses, with one line, a
machine that is not x86-64, a Python other than the bundle's, a machine lacking one of the large
packages left to it (MACHINE_PROVIDES), and a project wheel whose sources differ from the
checkout's (the code was edited after the bundle was built).
`bench/gpu_check_offline.sh` does install (into a fresh temporary folder) + gpu-check in one command.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Left to the machine: large compiled packages, and those tied to its own jax build (jaxlib's
# CUDA plugin must match jaxlib exactly, so jax's own dependencies come from the same image).
MACHINE_PROVIDES = ("jax", "jaxlib", "numpy", "scipy", "ml-dtypes", "opt-einsum", "pyarrow", "pandas", "tensorstore")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
MANIFEST = "bundle.json"
BPE_NAME = "r50k_base.tiktoken"


class BundleError(Exception):
    """A bundle that cannot be built or installed; the message is the one line the user sees."""


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_name_version(path: Path) -> tuple[str, str]:
    """(canonical name, version) from a wheel's file name."""
    parts = path.name[: -len(".whl")].split("-")
    if len(parts) < 5 or not path.name.endswith(".whl"):
        raise BundleError(f"{path}: not a wheel file name")
    return canonical(parts[0]), parts[1]


def sha256(path: Path) -> str:
    """The file's sha256, hex."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def pinned_requirements() -> list[str]:
    """The project's runtime dependencies, exactly as pyproject.toml pins them."""
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def find_bpe_file() -> Path:
    """GPT-2's rank file, where the project's tokenizer looks for it (PLANCK_BPE_FILE, the tiktoken cache, ../shared)."""
    from planck.schemas.tokenizer import BPE_SHA256, bpe_file_candidates

    for candidate in bpe_file_candidates():
        if candidate.is_file() and sha256(candidate) == BPE_SHA256:
            return candidate
    raise BundleError("GPT-2's rank file (r50k_base.tiktoken) was not found: run `make tokenizer-cache` or any "
                      "planck command once with internet, or set PLANCK_BPE_FILE")


def _pip(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], capture_output=True,
                          text=True)
    if proc.returncode:
        lines = proc.stderr.strip().splitlines() or ["?"]
        why = next((x for x in reversed(lines) if x.startswith("ERROR:")), lines[-1])  # not pip's closing notices
        raise BundleError(f"pip {args[0]} failed: {why}")


def source_copy(dest: Path, repo: Path = REPO) -> Path:
    """The files the project's wheel is built from, copied to `dest`: a build in the checkout would reuse its build/."""
    setuptools = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(repo / name, dest / name)
    copied: list[Path] = []
    for folder in sorted(map(Path, set(setuptools["package-dir"].values())), key=lambda f: len(f.parts)):
        if not any(folder.is_relative_to(c) for c in copied):  # configs/ brings configs/presets/ with it
            shutil.copytree(repo / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            copied.append(folder)
    return dest


def build(out: Path, python: str, max_mib: float | None = None) -> dict:
    """Download the pinned wheels for `python` on manylinux x86-64, build the project's wheel, copy the rank file."""
    bpe = find_bpe_file()
    out = out.absolute()
    staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=out.parent))
    try:
        wheels, download = staging / "wheels", staging / "download"
        wheels.mkdir()
        print(f"offline bundle: downloading the pinned wheels for Python {python} (manylinux x86-64)")
        _pip("download", "--quiet", "--only-binary=:all:", "--python-version", python, "--implementation", "cp",
             *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(download), *pinned_requirements())
        (staging / "source").mkdir()
        _pip("wheel", "--quiet", "--no-deps", "-w", str(download), str(source_copy(staging / "source")))
        shutil.rmtree(staging / "source")
        left = []
        for w in sorted(download.glob("*.whl")):
            name, ver = wheel_name_version(w)
            if name in MACHINE_PROVIDES:
                left.append({"name": name, "version": ver})
            else:
                shutil.move(str(w), wheels / w.name)
        shutil.rmtree(download)
        (staging / "tokenizer").mkdir()
        shutil.copyfile(bpe, staging / "tokenizer" / BPE_NAME)
        entries = [{"file": w.name, "name": wheel_name_version(w)[0], "version": wheel_name_version(w)[1],
                    "sha256": sha256(w), "bytes": w.stat().st_size} for w in sorted(wheels.glob("*.whl"))]
        total = sum(e["bytes"] for e in entries) + (staging / "tokenizer" / BPE_NAME).stat().st_size
        if max_mib is not None and total > max_mib * 2**20:
            raise BundleError(f"the bundle would be {total / 2**20:.1f} MiB, over --max-mib {max_mib:g}")
        project = next((wheels / e["file"] for e in entries if e["name"] == "planckgpt"), None)
        if project is None or (diff := checkout_difference(project)):
            raise BundleError(f"the project's wheel does not match the checkout ({diff if project else 'not built'})")
        manifest = {"python": python, "platforms": list(PLATFORMS), "wheels": entries, "machine_provides": left,
                    "tokenizer": {"file": f"tokenizer/{BPE_NAME}", "sha256": sha256(staging / "tokenizer" / BPE_NAME)},
                    "bytes": total}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)  # a bundle is whole or absent: an interrupted build leaves the old one
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"offline bundle: {len(entries)} wheels + the rank file, {total / 2**20:.1f} MiB -> {out}")
    print("  left to the machine: " + ", ".join(f"{e['name']} (pinned {e['version']})" for e in left))
    return manifest


def _package_folder(package: list[str], mapping: dict[str, str], repo: Path) -> Path | None:
    """The checkout folder of a dotted package (as parts), by pyproject's package-dir; subpackages sit below their
    parent's folder (planck.serve.web -> serve/web). None when no mapped package holds it."""
    cut = next((n for n in range(len(package), 0, -1) if ".".join(package[:n]) in mapping), None)
    return None if cut is None else repo.joinpath(mapping[".".join(package[:cut])], *package[cut:])


def checkout_difference(wheel: Path, repo: Path = REPO) -> str | None:
    """The first file where the project's wheel and the checkout's sources differ, or None when they match.

    The wheel is a snapshot of the sources when the bundle was built; run from a checkout edited since,
    it would import the old code without a word."""
    setuptools = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = setuptools["package-dir"]
    with zipfile.ZipFile(wheel) as z:
        members = {m: z.read(m) for m in z.namelist() if ".dist-info/" not in m and not m.endswith("/")}
    seen = set()
    for member, data in sorted(members.items()):
        *package, name = member.split("/")
        folder = _package_folder(package, mapping, repo)
        if folder is None:
            return f"{member} is in no package this checkout maps"
        source = folder / name
        seen.add(source)
        if not source.is_file() or source.read_bytes() != data:
            return f"{source.relative_to(repo)} differs"
    data = setuptools.get("package-data", {})
    patterns = {package: ["*.py", *data.get(package, [])] for package in setuptools.get("packages", mapping)}
    for package, globs in patterns.items():
        if (folder := _package_folder(package.split("."), mapping, repo)) is None:
            continue
        for source in sorted(f for g in globs for f in folder.glob(g)):
            if source not in seen:
                return f"{source.relative_to(repo)} is not in the bundle"
    return None


def read_manifest(bundle: Path) -> dict:
    """The bundle's manifest, or one line saying why there is none."""
    try:
        manifest = json.loads((bundle / MANIFEST).read_text())
    except FileNotFoundError:
        raise BundleError(f"{bundle}: no {MANIFEST} here: build one with `make gpu-bundle`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{bundle / MANIFEST}: not a bundle manifest ({exc})") from None
    fields = {"python": str, "wheels": list, "machine_provides": list, "tokenizer": dict}
    bad = [k for k, kind in fields.items() if not isinstance(manifest, dict) or not isinstance(manifest.get(k), kind)]
    entries = (manifest.get("wheels", []) + manifest.get("machine_provides", [])) if not bad else []
    if bad or not all(isinstance(e, dict) and {"name", "version"} <= e.keys() for e in entries):
        raise BundleError(f"{bundle / MANIFEST}: not a bundle manifest (fields missing or of the wrong type: "
                          f"{', '.join(bad) or 'a wheel entry'}): build one with `make gpu-bundle`")
    return manifest


def _installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def plan_install(bundle: Path, manifest: dict) -> tuple[list[Path], list[str]]:
    """(wheels to install, one line per bundled release the machine already has); every wheel's sha256 checked first."""
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if platform.machine() != "x86_64":
        raise BundleError(f"{bundle}: its wheels are for x86-64 Linux, this machine is {platform.machine()}: "
                          "build a bundle for it with `pip download --platform ...` where pip works")
    if manifest["python"] != here:
        raise BundleError(f"{bundle}: built for Python {manifest['python']}, this is Python {here}: "
                          f"rebuild with `make gpu-bundle BUNDLE_PYTHON={here}`")
    missing = [f"{e['name']} (pinned {e['version']})" for e in manifest["machine_provides"] if not _installed(e["name"])]
    if missing:
        raise BundleError("this machine lacks what the bundle leaves to it: " + ", ".join(missing))
    todo, kept = [], []
    for e in manifest["wheels"]:
        path = bundle / "wheels" / e["file"]
        if not path.is_file():
            raise BundleError(f"{path}: missing from the bundle")
        if sha256(path) != e["sha256"]:
            raise BundleError(f"{path}: sha256 differs from {MANIFEST}'s (damaged in transit?)")
        if e["name"] == "planckgpt" and (diff := checkout_difference(path)):
            raise BundleError(f"{bundle}: its planckgpt wheel is older than this checkout ({diff}): run `make gpu-bundle` again")
        # The project's version never changes between edits: its wheel always goes in (checked against the checkout).
        if e["name"] != "planckgpt" and _installed(e["name"]) == e["version"]:
            kept.append(f"{e['name']} {e['version']}")
        else:
            todo.append(path)
    tok = bundle / manifest["tokenizer"]["file"]
    if not tok.is_file() or sha256(tok) != manifest["tokenizer"]["sha256"]:
        raise BundleError(f"{tok}: missing or its sha256 differs from {MANIFEST}'s")
    return todo, kept


def install(bundle: Path, target: Path) -> list[Path]:
    """Install into `target` (a new or empty folder) each bundled wheel whose release this machine lacks; returns them."""
    manifest = read_manifest(bundle)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        # Old packages left there would shadow the machine's, or the bundle's, without a word.
        raise BundleError(f"--target {target} exists and is not an empty folder: give a new one (mktemp -d)")
    todo, kept = plan_install(bundle, manifest)
    if todo:
        # Listing every wheel at once, with no index and no dependency resolution: the bundle is the resolution.
        _pip("install", "--quiet", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade",
             "--target", str(target), *map(str, todo))
    machine = ", ".join(f"{e['name']} {_installed(e['name'])}" + ("" if _installed(e["name"]) == e["version"]
                                                                    else f" (pinned {e['version']})")
                        for e in manifest["machine_provides"])
    print(f"offline bundle: {len(todo)} wheels installed into {target}, {len(kept)} already here")
    print(f"  from the machine: {machine}")
    return todo


def main() -> int:
    """`build` or `install`, each failing with one line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="verb", required=True)
    b = sub.add_parser("build", help="download the wheels and the rank file into a bundle (needs a package index)")
    b.add_argument("--out", type=Path, default=REPO / ".bundle")
    b.add_argument("--python", default="3.12", help="the offline machine's Python, major.minor (default 3.12)")
    b.add_argument("--max-mib", type=float, default=None, help="refuse a bundle larger than this (a size cap on transfers)")
    i = sub.add_parser("install", help="install a bundle's wheels that this machine lacks into --target")
    i.add_argument("--bundle", type=Path, default=REPO / ".bundle")
    i.add_argument("--target", type=Path, required=True, help="a new or empty folder, to go first on PYTHONPATH")
    args = ap.parse_args()
    try:
        if args.verb == "build":
            if not re.fullmatch(r"3\.\d+", args.python):
                raise BundleError(f"--python {args.python}: give major.minor, such as 3.12")
            build(args.out, args.python, args.max_mib)
        else:
            install(args.bundle, args.target)
    except BundleError as exc:
        print(f"offline bundle: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
