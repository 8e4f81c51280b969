"""The finished model's weights: one writer and one validated reader of `final/` and of exported `.npz` files.

    final/model.json   {"phase", "step", "model": ModelConfig fields, "parameters", "tokenizer", "chat", "init_from",
                        "digest": blake2b-128 of the rest of model.json and every parameter (weights_digest)}
    final/params/      the parameters (orbax, float32), named as param_name() spells them
    NAME.npz           the same arrays by name plus `__model_json__` (model.json's bytes): `planck export`

Everything that loads a model (serving, evaluation, `--init-from`, export) goes through load_model or
load_into, which check the tokenizer fingerprint, every config field's type and range (before allocating
anything), every parameter's name and shape (an archive member's declared size before reading it) and the digest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from planck.schemas.atomic import atomic_write_bytes, atomic_write_text
from planck.schemas.errors import PlanckError
from planck.schemas.run_folder import FINAL, MODEL_JSON, PARAMS
from planck.schemas.tokenizer import TOKENIZER_NAME, tokenizer_fingerprint

from .config import ConfigError, ModelConfig
from .gpt import GPT

NPZ_META_KEY = "__model_json__"
SAFETENSORS_META_KEY = "planck_model_json"  # the safetensors header's metadata holds model.json under this key
EXPORT_FORMATS = {"npz": ".npz", "safetensors": ".safetensors"}


class CheckpointError(PlanckError):
    """A model file or folder that cannot be loaded; the message names the path and what is wrong."""


def param_name(path: tuple) -> str:
    """A parameter's dotted name from its nnx state path: ('blocks', 0, 'attn', 'q', 'kernel') -> 'blocks.0.attn.q.kernel'."""
    return ".".join(str(p) for p in path)


def host_value(x) -> np.ndarray:
    """A (possibly multi-process, sharded) array's whole value on this host."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    if x.sharding.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def host_params(model: GPT) -> dict[str, np.ndarray]:
    """Parameters as {dotted name: numpy array} (a collective under multi-process FSDP: every process calls it)."""
    return {param_name(path): host_value(v.get_value() if isinstance(v, nnx.Variable) else v)
            for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def final_meta(*, phase: str, step: int, config: ModelConfig, parameters: int, chat: bool,
               init_from: Path | None) -> dict[str, Any]:
    """model.json's content for a finished run."""
    return {
        "phase": phase, "step": step, "model": dataclasses.asdict(config), "parameters": parameters,
        "tokenizer": {"name": TOKENIZER_NAME, "fingerprint": tokenizer_fingerprint().hex()},
        "chat": chat,
        "init_from": None if init_from is None else str(init_from),  # the report's "started from"
    }


def save_final(folder: Path, model: GPT, meta: dict[str, Any], is_main: bool = True) -> None:
    """Write final/: the parameters (every process takes part in the orbax save), then model.json (process 0)."""
    import orbax.checkpoint as ocp


    folder = Path(folder).absolute()
    params = folder / PARAMS
    if params.exists() and is_main:
        shutil.rmtree(params)
    meta = {**meta, "digest": weights_digest(host_params(model), meta)}  # every process takes part (a collective)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(params, nnx.state(model, nnx.Param))
    ckptr.wait_until_finished()
    if is_main:
        atomic_write_text(folder / MODEL_JSON, json.dumps(meta, indent=2))


@dataclass
class LoadedModel:
    """A model ready for inference, with the metadata its run wrote in model.json."""

    model: GPT
    config: ModelConfig
    meta: dict[str, Any]
    source: Path

    @property
    def is_chat(self) -> bool:
        """True for midtrained/SFT models (chat template), False for base (pretrain-only) models."""
        return bool(self.meta.get("chat", False))

    @property
    def name(self) -> str:
        """A short model name for APIs: the run folder's name, or the exported file's stem."""
        return self.source.parent.name if self.source.name == FINAL else self.source.stem


def resolve(path: Path) -> Path:
    """The file or folder to load for `path`: a run folder means its final/."""
    path = Path(path)
    if path.is_dir() and (path / FINAL / MODEL_JSON).is_file():
        return path / FINAL
    if path.is_dir() and (path / MODEL_JSON).is_file():
        return path
    if path.is_file() and path.suffix in EXPORT_FORMATS.values():
        return path
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder; train one first (make pretrain midtrain sft, or make demo), "
                              "or point at a finished run: make chat CHECKPOINT=runs/demo/sft")
    raise CheckpointError(
        f"{path}: not a finished model (expected a run folder with final/model.json, a final/ folder, "
        "or a .npz / .safetensors from `planck export`)"
    )


def check_meta(meta: Any, where: Path) -> ModelConfig:
    """The validated model config of a model.json; CheckpointError for another tokenizer, unknown keys or bad values."""
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise CheckpointError(f"{where}: model.json has no 'model' section")
    tok = meta.get("tokenizer") if isinstance(meta.get("tokenizer"), dict) else {}
    expected = tokenizer_fingerprint().hex()
    if tok.get("name") != TOKENIZER_NAME or tok.get("fingerprint") != expected:
        raise CheckpointError(
            f"{where}: trained with tokenizer {tok.get('name')!r} (fingerprint {tok.get('fingerprint')}), "
            f"but this install has {TOKENIZER_NAME!r} ({expected}): its token ids would mean other text"
        )
    try:
        cfg = ModelConfig.from_dict(meta["model"], str(where))
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    return cfg


MAX_META_BYTES = 1 << 20  # model.json is a few hundred bytes; a larger one is not ours


def _decode_meta(raw: bytes, where: Path) -> dict[str, Any]:
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{where}: not JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where}: not a JSON object")
    return meta


def _read_final_meta(src: Path) -> dict[str, Any]:
    """final/model.json, size-capped and decoded; CheckpointError naming the file otherwise."""
    path = src / MODEL_JSON
    try:
        if path.stat().st_size > MAX_META_BYTES:
            raise CheckpointError(f"{path}: {path.stat().st_size:,} bytes, not a model.json written by planck")
        return _decode_meta(path.read_bytes(), path)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _npz_member(zf: zipfile.ZipFile, name: str, where: Path, shape: tuple[int, ...] | None, dtype: np.dtype | None,
                max_bytes: int | None = None) -> np.ndarray:
    """One .npy member of an archive, its declared header checked against what the model needs before any data is read."""
    info = zf.getinfo(name + ".npy")
    with zf.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            header = np.lib.format.read_array_header_1_0(f) if version == (1, 0) else np.lib.format.read_array_header_2_0(f)
        except ValueError as exc:
            raise CheckpointError(f"{where}: entry {name} is not a numpy array ({exc})") from None
        got_shape, fortran, got_dtype = header
        if got_dtype.hasobject:
            raise CheckpointError(f"{where}: entry {name} holds Python objects (refused: loading them would run code)")
        nbytes = int(np.prod(got_shape, dtype=np.int64)) * got_dtype.itemsize
        if shape is not None and (tuple(got_shape) != tuple(shape) or got_dtype != dtype):
            raise CheckpointError(f"{where}: parameter {name} is {got_dtype}{list(got_shape)}, the config says {dtype}{list(shape)}")
        if max_bytes is not None and nbytes > max_bytes:
            raise CheckpointError(f"{where}: entry {name} declares {nbytes:,} bytes, more than it may hold ({max_bytes:,})")
        if info.file_size != f.tell() + nbytes:
            raise CheckpointError(f"{where}: entry {name} is {info.file_size:,} bytes, its header says {f.tell() + nbytes:,}")
        data = f.read(nbytes)
    if len(data) != nbytes:
        raise CheckpointError(f"{where}: entry {name} is cut short")
    array = np.frombuffer(data, dtype=got_dtype)
    return array.reshape(got_shape, order="F" if fortran else "C")


def _open_npz(src: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(src)
    except (OSError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{src}: not a readable .npz ({exc})") from None


def _npz_meta(zf: zipfile.ZipFile, src: Path) -> dict[str, Any]:
    if NPZ_META_KEY + ".npy" not in zf.namelist():
        raise CheckpointError(f"{src}: no {NPZ_META_KEY} entry (not written by `planck export`)")
    raw = _npz_member(zf, NPZ_META_KEY, src, None, None, max_bytes=MAX_META_BYTES)
    return _decode_meta(raw.tobytes(), src)


def _npz_arrays(zf: zipfile.ZipFile, src: Path, expected: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """The parameters of an export, each member's declared shape and size checked before it is read."""
    names = {n.removesuffix(".npy") for n in zf.namelist()} - {NPZ_META_KEY}
    missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
    if missing or extra:
        raise CheckpointError(f"{src}: parameters do not match the model config (missing {missing[:3]}, unexpected {extra[:3]})")
    try:
        return {name: _npz_member(zf, name, src, shape, np.dtype(np.float32)) for name, shape in expected.items()}
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise CheckpointError(f"{src}: not a readable .npz ({exc})") from None


def _read_orbax(params_dir: Path, model: GPT) -> dict[str, np.ndarray]:
    """final/params as {dotted name: array}, restored to the model's shapes in float32."""
    import orbax.checkpoint as ocp

    if not params_dir.is_dir():
        raise CheckpointError(f"{params_dir}: missing (the run did not finish writing its final weights)")
    target = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32), nnx.state(model, nnx.Param))
    try:
        restored = ocp.StandardCheckpointer().restore(params_dir.absolute(), target)
    except Exception as exc:  # orbax raises many types for a damaged or foreign folder
        raise CheckpointError(f"{params_dir}: cannot restore the weights ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})") from None
    return {param_name(path): np.asarray(v.get_value() if isinstance(v, nnx.Variable) else v)
            for path, v in nnx.to_flat_state(restored)}


def weights_digest(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> str:
    """blake2b-128 over model.json's content (less the digest itself) and every parameter's name, shape and float32 bytes."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps({k: v for k, v in meta.items() if k != "digest"}, sort_keys=True).encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name], dtype=np.float32)
        h.update(f"{name}{list(a.shape)}".encode())
        h.update(a.data)
    return h.hexdigest()


def _verify_digest(arrays: dict[str, np.ndarray], meta: dict[str, Any], where: Path) -> None:
    """Refuse weights that differ from what the run wrote (a model.json from before digests is taken as it is)."""
    want = meta.get("digest")
    if want is None:
        return
    if weights_digest(arrays, meta) != want:
        raise CheckpointError(
            f"{where}: the weights or model.json do not match the checksum the run wrote (damaged or changed since); "
            "re-export them, or re-run the training phase to rewrite final/"
        )


def _shapes_only(meta: dict[str, Any], src: Path, dtype: str | None) -> tuple[ModelConfig, GPT, dict[str, tuple[int, ...]]]:
    """The validated config (in `dtype`), a shapes-only model and {parameter name: shape} it needs."""
    cfg = dataclasses.replace(check_meta(meta, src), remat=False)
    if dtype:
        cfg.compute_dtype = dtype
    model = nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0)))
    expected = {param_name(path): tuple(v.get_value().shape) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    return cfg, model, expected


def _read_safetensors(src: Path, dtype: str | None) -> tuple[dict[str, Any], ModelConfig, GPT, dict[str, np.ndarray]]:
    """A safetensors export: model.json from the header's metadata; every tensor's declared shape and dtype checked first."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(src), framework="numpy") as f:
            raw = (f.metadata() or {}).get(SAFETENSORS_META_KEY)
            if raw is None:
                raise CheckpointError(f"{src}: no {SAFETENSORS_META_KEY} in its metadata (not written by `planck export`)")
            meta = _decode_meta(raw.encode(), src)
            cfg, model, expected = _shapes_only(meta, src, dtype)
            names = set(f.keys())
            missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
            if missing or extra:
                raise CheckpointError(f"{src}: parameters do not match the model config (missing {missing[:3]}, unexpected {extra[:3]})")
            arrays = {}
            for name, shape in expected.items():
                sl = f.get_slice(name)
                if tuple(sl.get_shape()) != shape or sl.get_dtype() != "F32":
                    raise CheckpointError(f"{src}: parameter {name} is {sl.get_dtype()}{sl.get_shape()}, the config says F32{list(shape)}")
                arrays[name] = f.get_tensor(name)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{src}: not a readable .safetensors ({exc})") from None
    _verify_digest(arrays, meta, src)
    return meta, cfg, model, arrays


def _read_checked(src: Path, dtype: str | None) -> tuple[dict[str, Any], ModelConfig, GPT, dict[str, np.ndarray]]:
    """model.json (validated), the config, a shapes-only model in `dtype`, and the verified float32 arrays."""
    if src.suffix == ".safetensors":
        return _read_safetensors(src, dtype)
    zf = _open_npz(src) if src.suffix == ".npz" else None
    try:
        meta = _npz_meta(zf, src) if zf else _read_final_meta(src)
        # Shapes only: the weights come from the file, so nothing is initialised twice.
        cfg, model, expected = _shapes_only(meta, src, dtype)
        if zf:
            arrays = _npz_arrays(zf, src, expected)
        else:
            arrays = _read_orbax(src / PARAMS, model)
    finally:
        if zf:
            zf.close()
    _verify_digest(arrays, meta, src)
    return meta, cfg, model, arrays


def _fill(model: GPT, arrays: dict[str, np.ndarray], where: Path, dtype: jnp.dtype) -> None:
    """Put named arrays into the model's parameters, checking names and shapes."""
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    names = {param_name(path): path for path in flat}
    missing = sorted(set(names) - set(arrays))
    extra = sorted(set(arrays) - set(names))
    if missing or extra:
        raise CheckpointError(f"{where}: parameters do not match the model config (missing {missing[:3]}, unexpected {extra[:3]})")
    for name, path in names.items():
        want = flat[path].get_value().shape
        if tuple(arrays[name].shape) != tuple(want):
            raise CheckpointError(f"{where}: parameter {name} has shape {arrays[name].shape}, the config says {want}")
        flat[path].set_value(jnp.asarray(arrays[name], dtype=dtype))
    nnx.update(model, nnx.from_flat_state(flat))


def load_model(path: Path, dtype: str | None = None) -> LoadedModel:
    """Load a run folder, a final/ folder or an exported .npz, parameters and compute in `dtype` (default: the model's own)."""
    src = resolve(path)
    meta, cfg, model, arrays = _read_checked(src, dtype)
    _fill(model, arrays, src, jnp.dtype(cfg.compute_dtype))
    return LoadedModel(model=model, config=cfg, meta=meta, source=src)


def load_into(model: GPT, path: Path) -> dict[str, Any]:
    """Overwrite a built model's float32 parameters with a finished model's (`--init-from`); returns its model.json."""
    src = resolve(path)
    meta, _, _, arrays = _read_checked(src, None)
    _fill(model, arrays, src, jnp.dtype(jnp.float32))
    return meta


def export(path: Path, out: Path, fmt: str | None = None) -> tuple[int, int]:
    """Write a finished model as one file of named float32 arrays plus model.json (.npz or .safetensors, by `fmt` or
    the suffix of `out`); returns (arrays, parameters). The file loads back through load_model, digest checked."""
    out = Path(out)
    if out.is_dir():
        raise CheckpointError(f"{out} is a folder: give the file to write, such as {out / 'model.safetensors'}")
    fmt = fmt or next((k for k, suffix in EXPORT_FORMATS.items() if out.suffix == suffix), None)
    if fmt not in EXPORT_FORMATS:
        raise CheckpointError(f"{out}: say --format npz or safetensors, or end the file name in .npz or .safetensors")
    loaded = load_model(path, dtype="float32")
    out.parent.mkdir(parents=True, exist_ok=True)
    arrays = host_params(loaded.model)
    if fmt == "npz":
        buf = io.BytesIO()
        np.savez(buf, **{NPZ_META_KEY: np.frombuffer(json.dumps(loaded.meta).encode(), dtype=np.uint8)}, **arrays)
        data = buf.getvalue()
    else:
        from safetensors.numpy import save

        data = save(arrays, metadata={SAFETENSORS_META_KEY: json.dumps(loaded.meta), "format": "np"})
    atomic_write_bytes(out, data)
    return len(arrays), sum(a.size for a in arrays.values())
