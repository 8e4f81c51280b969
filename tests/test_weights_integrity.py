"""Finished weights that were damaged or crafted are refused with one line, before anything large is allocated.

final/ and exported .npz carry a digest of model.json and every parameter; model.json's config is
checked field by field (type and range); an archive member's declared size is checked before it is read.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from planck.model.weights import CheckpointError, load_model

REPO = Path(__file__).resolve().parents[1]


def planck(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "planck.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture()
def run(chat_checkpoint, tmp_path) -> Path:
    """A private copy of the tiny chat run folder."""
    return Path(shutil.copytree(chat_checkpoint, tmp_path / "run"))


@pytest.fixture(scope="module")
def exported(chat_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "model.npz"
    proc = planck("export", chat_checkpoint, "--out", out)
    assert proc.returncode == 0, proc.stderr
    return out


def edit_meta(run: Path, change) -> None:
    path = run / "final" / "model.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def test_final_records_a_digest_and_the_export_carries_it(chat_checkpoint, exported):
    meta = json.loads((chat_checkpoint / "final" / "model.json").read_text())
    assert len(meta["digest"]) == 32
    assert load_model(exported).meta["digest"] == meta["digest"]


def test_bit_flips_in_final_weights_are_refused(run):
    data = max((p for p in (run / "final" / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    raw = bytearray(data.read_bytes())
    for i in range(20):
        raw[len(raw) // 2 + 7 * i] ^= 0x10
    data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"final"):
        load_model(run)


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.update(step=m["step"] + 5),
        lambda m: m.update(phase="pretrain"),
        lambda m: m["model"].update(rope_base=20000.0),
    ],
    ids=["false-step", "false-phase", "changed-config"],
)
def test_a_model_json_that_lies_is_refused(run, change):
    edit_meta(run, change)
    with pytest.raises(CheckpointError, match="do not match the checksum"):
        load_model(run)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m["model"].update(n_layer="2"), "model.n_layer: expected int, got str"),
        (lambda m: m["model"].update(seq_len=2**40), "model.seq_len = 1099511627776 is outside"),
        (lambda m: m["model"].update(d_model=-4), "model.d_model = -4 is outside"),
        (lambda m: m["model"].update(remat="yes"), "model.remat: expected bool"),
        (lambda m: m["model"].update(n_layer=1000, d_model=60000), "parameters, more than this kit builds"),
        (lambda m: m["model"].update(colour="red"), "unknown keys"),
        (lambda m: m.update(model=[1, 2]), "no 'model' section"),
        (lambda m: m.update(tokenizer="gpt2"), "trained with tokenizer"),
    ],
    ids=["type", "huge-context", "negative", "bool", "too-many-parameters", "unknown-key", "model-not-object", "tokenizer-not-object"],
)
def test_crafted_configs_are_refused_before_anything_is_built(run, change, message):
    edit_meta(run, change)
    with pytest.raises(CheckpointError, match=message):
        load_model(run)


def test_unreadable_model_json_is_one_line_from_every_command(run):
    (run / "final" / "model.json").write_bytes(b"\xff\xfe{not utf-8")
    for args in (("export", run, "--out", run / "x.npz"), ("eval", "--checkpoint", run, "--tasks", "sample")):
        proc = planck(*args)
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
        assert proc.stderr.startswith("planck: error: ") and "model.json: not JSON" in proc.stderr
    assert not (run / "x.npz").exists()


def _rewrite_npz(src: Path, dest: Path, replace: dict[str, bytes] | None = None, drop: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        for name in zin.namelist():
            if name in drop:
                continue
            zout.writestr(name, (replace or {}).get(name, zin.read(name)))
        for name, data in (replace or {}).items():
            if name not in zin.namelist():
                zout.writestr(name, data)
    return dest


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def test_crafted_archives_are_refused_without_reading_what_they_declare(exported, tmp_path):
    name = "head.kernel.npy"
    with zipfile.ZipFile(exported) as z:
        head = np.load(io.BytesIO(z.read(name)))
    # A header that declares a 2.5 GB array: refused from the header, before any data is read.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (25_000, 25_000)})
    bomb = _rewrite_npz(exported, tmp_path / "bomb.npz", {name: header.getvalue() + b"\0" * 64})
    with pytest.raises(CheckpointError, match=r"head.kernel is float32\[25000, 25000\], the config says"):
        load_model(bomb)
    # Right shape, cut short.
    short = _rewrite_npz(exported, tmp_path / "short.npz", {name: _npy(head)[:-100]})
    with pytest.raises(CheckpointError, match="head.kernel is .* bytes, its header says"):
        load_model(short)
    # Pickled objects are never loaded.
    pickled = _rewrite_npz(exported, tmp_path / "pickle.npz", {name: _npy(np.array([{"a": 1}], dtype=object))})
    with pytest.raises(CheckpointError, match="holds Python objects"):
        load_model(pickled)
    # Changed values with the right shape: the digest says so.
    changed = _rewrite_npz(exported, tmp_path / "changed.npz", {name: _npy(head + 1e-3)})
    with pytest.raises(CheckpointError, match="do not match the checksum"):
        load_model(changed)
    # A missing parameter, an extra one, no model.json, an empty archive.
    with pytest.raises(CheckpointError, match="missing"):
        load_model(_rewrite_npz(exported, tmp_path / "missing.npz", drop=(name,)))
    with pytest.raises(CheckpointError, match="unexpected"):
        load_model(_rewrite_npz(exported, tmp_path / "extra.npz", {"evil.npy": _npy(np.zeros(3, np.float32))}))
    with pytest.raises(CheckpointError, match="no __model_json__"):
        load_model(_rewrite_npz(exported, tmp_path / "nometa.npz", drop=("__model_json__.npy",)))
    empty = tmp_path / "empty.npz"
    zipfile.ZipFile(empty, "w").close()
    with pytest.raises(CheckpointError, match="no __model_json__"):
        load_model(empty)


def test_safetensors_export_round_trips_the_npz_logits_and_is_checked(chat_checkpoint, exported, tmp_path):
    import jax.numpy as jnp
    from flax import nnx
    from safetensors.numpy import load_file, save_file

    out = tmp_path / "model.safetensors"
    proc = planck("export", chat_checkpoint, "--out", out)
    assert proc.returncode == 0, proc.stderr
    ids = jnp.asarray([list(range(100, 132))], jnp.int32)
    logits = lambda m: np.asarray(nnx.jit(lambda model, x: model(x))(m.model, ids))
    st, npz = load_model(out), load_model(exported)
    np.testing.assert_array_equal(logits(st), logits(npz))
    assert st.meta == npz.meta and st.name == "model"
    # Changed values: refused by the digest; a wrong shape: refused from the header.
    arrays = load_file(out)
    from safetensors import safe_open

    with safe_open(str(out), framework="numpy") as f:
        metadata = f.metadata()
    arrays["head.kernel"] = arrays["head.kernel"] + 1e-3
    save_file(arrays, tmp_path / "changed.safetensors", metadata=metadata)
    with pytest.raises(CheckpointError, match="do not match the checksum"):
        load_model(tmp_path / "changed.safetensors")
    arrays["head.kernel"] = arrays["head.kernel"][:, :10].copy()
    save_file(arrays, tmp_path / "shape.safetensors", metadata=metadata)
    with pytest.raises(CheckpointError, match=r"head.kernel is F32\[64, 10\], the config says"):
        load_model(tmp_path / "shape.safetensors")
    save_file(arrays, tmp_path / "nometa.safetensors")
    with pytest.raises(CheckpointError, match="no planck_model_json"):
        load_model(tmp_path / "nometa.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 100)
    with pytest.raises(CheckpointError, match="not a readable .safetensors"):
        load_model(tmp_path / "junk.safetensors")


def test_export_names_an_unwritable_destination_in_one_line_and_makes_missing_folders(chat_checkpoint, tmp_path):
    for out, says in ((tmp_path, f"planck: error: {tmp_path} is a folder: give the file to write, such as "),
                      (Path("/proc/planck-model.npz"), "planck: error: /proc/planck-model.npz: No such file or directory")):
        proc = planck("export", chat_checkpoint, "--out", out, "--format", "npz")
        assert proc.returncode == 1 and proc.stderr.startswith(says) and len(proc.stderr.splitlines()) == 1, proc.stderr
    nested = tmp_path / "new" / "folder" / "model.safetensors"
    assert planck("export", chat_checkpoint, "--out", nested).returncode == 0
    assert load_model(nested).meta == load_model(chat_checkpoint).meta


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    import os

    from planck.schemas import atomic

    path = tmp_path / "model.json"
    path.write_text("old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device", str(src))

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic.atomic_write_text(path, "new")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["model.json"]
