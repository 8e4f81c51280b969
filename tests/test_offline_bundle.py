"""bench/offline_bundle.py: what an offline GPU machine gets installed, and every way a bundle is refused.

The real build downloads ~250 MB of wheels; it was run by hand (the README says how). Here the
wheels are small ones the test writes, so nothing reaches a package index.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "offline_bundle.py"
HERE = f"{sys.version_info.major}.{sys.version_info.minor}"


def load_module():
    spec = importlib.util.spec_from_file_location("offline_bundle", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_wheel(folder: Path, name: str, ver: str, module: str | None = None) -> Path:
    """A minimal pure-Python wheel pip will install: one module, METADATA, WHEEL, RECORD."""
    module = module or name.replace("-", "_")
    dist = f"{name.replace('-', '_')}-{ver}.dist-info"
    files = {
        f"{module}.py": f"VALUE = {ver!r}\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {ver}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join(record + [f"{dist}/RECORD,,"]) + "\n"
    out = folder / f"{name.replace('-', '_')}-{ver}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return out


def write_bundle(root: Path, wheels: list[Path], provides: list[dict], python: str = HERE) -> Path:
    """A bundle folder as `build` leaves it, around the given wheels."""
    bundle = root / "bundle"
    (bundle / "wheels").mkdir(parents=True)
    (bundle / "tokenizer").mkdir()
    tok = bundle / "tokenizer" / "r50k_base.tiktoken"
    tok.write_bytes(b"ranks")
    mod = load_module()
    entries = []
    for w in wheels:
        dest = bundle / "wheels" / w.name
        dest.write_bytes(w.read_bytes())
        name, ver = mod.wheel_name_version(dest)
        entries.append({"file": w.name, "name": name, "version": ver, "sha256": mod.sha256(dest), "bytes": dest.stat().st_size})
    manifest = {"python": python, "wheels": entries, "machine_provides": provides,
                "tokenizer": {"file": "tokenizer/r50k_base.tiktoken", "sha256": mod.sha256(tok)}}
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    return bundle


def install(bundle: Path, target: Path, script: Path = SCRIPT) -> subprocess.CompletedProcess:
    """The install command, run from `script`'s checkout (the one the project wheel is compared with)."""
    return subprocess.run([sys.executable, str(script), "install", "--bundle", str(bundle), "--target", str(target)],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def wheels(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    missing = make_wheel(src, "planck-bundle-probe", "1.0")
    # Same name and release as this environment's pytest: the machine has it, so it must not be installed.
    present = make_wheel(src, "pytest", version("pytest"), module="not_pytest_at_all")
    return missing, present


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A small checkout: pyproject's package mapping, one module, and a copy of the bundle script."""
    repo = tmp_path / "checkout"
    (repo / "model").mkdir(parents=True)
    (repo / "bench").mkdir()
    (repo / "pyproject.toml").write_text('[tool.setuptools]\npackages = ["planck.model"]\n'
                                         '[tool.setuptools.package-dir]\n"planck.model" = "model"\n')
    (repo / "model" / "probe.py").write_text("VALUE = 'the checkout'\n")
    (repo / "bench" / "offline_bundle.py").write_bytes(SCRIPT.read_bytes())
    return repo


@pytest.fixture
def project_wheel(checkout) -> Path:
    """A planckgpt wheel built from `checkout`, at the release installed here (so the machine 'has' it)."""
    out = checkout.parent / f"planckgpt-{version('planckgpt')}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("planck/model/probe.py", (checkout / "model" / "probe.py").read_text())
        z.writestr(f"planckgpt-{version('planckgpt')}.dist-info/METADATA", f"Name: planckgpt\nVersion: {version('planckgpt')}\n")
        z.writestr(f"planckgpt-{version('planckgpt')}.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"planckgpt-{version('planckgpt')}.dist-info/RECORD", "")
    return out


def test_install_puts_in_what_the_machine_lacks_and_nothing_it_has(tmp_path, wheels, checkout, project_wheel):
    bundle = write_bundle(tmp_path, [*wheels, project_wheel], [{"name": "numpy", "version": "0"}])
    target = tmp_path / "site"
    proc = install(bundle, target, checkout / "bench" / "offline_bundle.py")
    assert proc.returncode == 0, proc.stderr
    assert "2 wheels installed" in proc.stdout and "1 already here" in proc.stdout
    assert f"numpy {version('numpy')} (pinned 0)" in proc.stdout  # the machine's release, beside the pin
    assert (target / "planck_bundle_probe.py").is_file() and not (target / "not_pytest_at_all.py").exists()
    # planckgpt's release is installed here too, yet its wheel goes in: the version says nothing of edits.
    assert (target / "planck" / "model" / "probe.py").read_text() == "VALUE = 'the checkout'\n"
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = subprocess.run([sys.executable, "-c", "import planck_bundle_probe as p; print(p.VALUE)"],
                           capture_output=True, text=True, env=env)
    assert probe.stdout.strip() == "1.0"


@pytest.mark.parametrize("damage, says", [
    ("tamper", "sha256 differs from bundle.json's"),
    ("drop", "missing from the bundle"),
    ("python", "built for Python 2.7, this is Python"),
    ("provides", "this machine lacks what the bundle leaves to it: not-a-package-anywhere (pinned 1.2)"),
    ("tokenizer", "r50k_base.tiktoken: missing or its sha256 differs"),
    ("manifest", "not a bundle manifest"),
    ("fields", "not a bundle manifest (fields missing or of the wrong type: wheels)"),
    ("no-manifest", "no bundle.json here: build one with `make gpu-bundle`"),
    ("stale", "its planckgpt wheel is older than this checkout (model/probe.py differs): run `make gpu-bundle` again"),
    ("target", "exists and is not an empty folder: give a new one (mktemp -d)"),
])
def test_a_damaged_or_mismatched_bundle_is_refused_with_one_line_and_nothing_installed(tmp_path, wheels, checkout,
                                                                                       project_wheel, damage, says):
    provides = [{"name": "not-a-package-anywhere", "version": "1.2"}] if damage == "provides" else []
    extra = [project_wheel] if damage == "stale" else []
    bundle = write_bundle(tmp_path, [*wheels, *extra], provides, python="2.7" if damage == "python" else HERE)
    wheel = bundle / "wheels" / wheels[0].name
    if damage == "tamper":
        wheel.write_bytes(wheel.read_bytes() + b"\0")
    elif damage == "drop":
        wheel.unlink()
    elif damage == "tokenizer":
        (bundle / "tokenizer" / "r50k_base.tiktoken").write_bytes(b"other ranks")
    elif damage == "manifest":
        (bundle / "bundle.json").write_text("{not json")
    elif damage == "fields":
        manifest = json.loads((bundle / "bundle.json").read_text())
        manifest["wheels"] = "all of them"
        (bundle / "bundle.json").write_text(json.dumps(manifest))
    elif damage == "no-manifest":
        (bundle / "bundle.json").unlink()
    elif damage == "stale":  # the code edited after the bundle was built
        (checkout / "model" / "probe.py").write_text("VALUE = 'edited'\n")
    target = tmp_path / "site"
    if damage == "target":  # left by an earlier install: its packages would shadow the machine's
        (target / "numpy").mkdir(parents=True)
    proc = install(bundle, target, checkout / "bench" / "offline_bundle.py")
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("offline bundle: error: ") and says in lines[0], proc.stderr
    assert sorted(p.name for p in target.iterdir()) == ["numpy"] if damage == "target" else not target.exists()


def test_build_leaves_the_machines_packages_out_and_replaces_a_bundle_only_when_whole(tmp_path, monkeypatch):
    mod = load_module()
    src = tmp_path / "src"
    src.mkdir()
    made = [make_wheel(src, "flax", "0.12.8"), make_wheel(src, "jax", "0.10.2"), make_wheel(src, "numpy", "2.4.6"),
            make_wheel(src, "planckgpt", "0.1.0")]
    bpe = tmp_path / "r50k_base.tiktoken"
    bpe.write_bytes(b"ranks")
    monkeypatch.setattr(mod, "find_bpe_file", lambda: bpe)

    def fake_pip(*args):  # stands in for `pip download` / `pip wheel`: the wheels land in the -d / -w folder
        flag = "-d" if args[0] == "download" else "-w"
        dest = Path(args[args.index(flag) + 1])
        dest.mkdir(exist_ok=True)
        for w in made if args[0] == "download" else []:
            (dest / w.name).write_bytes(w.read_bytes())

    monkeypatch.setattr(mod, "_pip", fake_pip)
    monkeypatch.setattr(mod, "checkout_difference", lambda wheel: None)
    out = tmp_path / "bundle"
    manifest = mod.build(out, "3.12")
    assert sorted(p.name for p in (out / "wheels").iterdir()) == sorted([made[0].name, made[3].name])
    assert manifest["machine_provides"] == [{"name": "jax", "version": "0.10.2"}, {"name": "numpy", "version": "2.4.6"}]
    assert json.loads((out / "bundle.json").read_text()) == manifest and manifest["python"] == "3.12"
    assert (out / "tokenizer" / "r50k_base.tiktoken").read_bytes() == b"ranks"
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def failing_pip(*args):
        raise mod.BundleError("pip download failed: no network")

    monkeypatch.setattr(mod, "_pip", failing_pip)
    with pytest.raises(mod.BundleError):
        mod.build(out, "3.12")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # the old bundle, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "r50k_base.tiktoken", "src"]  # no staging left

    monkeypatch.setattr(mod, "_pip", fake_pip)
    with pytest.raises(mod.BundleError, match="MiB, over --max-mib 1e-05"):
        mod.build(out, "3.12", max_mib=1e-5)
    monkeypatch.setattr(mod, "checkout_difference", lambda wheel: "model/gpt.py differs")
    with pytest.raises(mod.BundleError, match=r"does not match the checkout \(model/gpt.py differs\)"):
        mod.build(out, "3.12")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "r50k_base.tiktoken", "src"]


def test_build_refuses_a_python_that_is_not_major_minor():
    proc = subprocess.run([sys.executable, str(SCRIPT), "build", "--python", "3.12.1", "--out", "/nonexistent/x"],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip() == "offline bundle: error: --python 3.12.1: give major.minor, such as 3.12"


def test_a_project_wheel_older_than_the_checkout_is_refused(tmp_path):
    mod = load_module()
    repo = tmp_path / "repo"
    for path, text in {"model/gpt.py": "A = 1\n", "serve/api.py": "B = 2\n", "serve/web/index.html": "<p>\n",
                       "pyproject.toml": '[tool.setuptools.package-dir]\n"planck.model" = "model"\n"planck.serve" = "serve"\n'}.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)

    def wheel(files: dict[str, str]) -> Path:
        out = tmp_path / "planckgpt-0.1.0-py3-none-any.whl"
        with zipfile.ZipFile(out, "w") as z:
            for path, text in {**files, "planckgpt-0.1.0.dist-info/METADATA": "Name: planckgpt\n"}.items():
                z.writestr(path, text)
        return out

    same = {"planck/model/gpt.py": "A = 1\n", "planck/serve/api.py": "B = 2\n", "planck/serve/web/index.html": "<p>\n"}
    assert mod.checkout_difference(wheel(same), repo) is None
    assert mod.checkout_difference(wheel({**same, "planck/model/gpt.py": "A = 0\n"}), repo) == "model/gpt.py differs"
    assert mod.checkout_difference(wheel({k: v for k, v in same.items() if "api" not in k}), repo) == "serve/api.py is not in the bundle"
    assert mod.checkout_difference(wheel({**same, "planck/train/loop.py": ""}), repo) == "planck/train/loop.py is in no package this checkout maps"
