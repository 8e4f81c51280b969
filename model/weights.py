"""The finished model's weights: one writer and one validated reader of `final/` and of exported `.npz` files.

    final/model.json   {"phase", "step", "model": ModelConfig fields, "parameters", "tokenizer", "chat", "init_from"}
    final/params/      the parameters (orbax, float32), named as param_name() spells them
    NAME.npz           the same arrays by name plus `__model_json__` (model.json's bytes): `planck export`

Everything that loads a model (serving, evaluation, `--init-from`, export) goes through load_model or
load_into, which check the tokenizer fingerprint, every config field and every parameter's name and shape.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import zipfile
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


class CheckpointError(PlanckError):
    """A model file or folder that cannot be loaded; the message names the path and what is wrong."""


def param_name(path: tuple) -> str:
    """A parameter's dotted name from its nnx state path: ('blocks', 0, 'attn', 'q', 'kernel') -> 'blocks.0.attn.q.kernel'."""
    return ".".join(str(p) for p in path)


def flat_params(model: GPT) -> dict[str, np.ndarray]:
    """Parameters as {dotted name: numpy array}."""
    return {param_name(path): np.asarray(v.get_value() if isinstance(v, nnx.Variable) else v)
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
    if path.is_file() and path.suffix == ".npz":
        return path
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    raise CheckpointError(
        f"{path}: not a finished model (expected a run folder with final/model.json, a final/ folder, or an exported .npz)"
    )


def check_meta(meta: Any, where: Path) -> ModelConfig:
    """The validated model config of a model.json; CheckpointError for another tokenizer, unknown keys or bad values."""
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise CheckpointError(f"{where}: model.json has no 'model' section")
    tok = meta.get("tokenizer") or {}
    expected = tokenizer_fingerprint().hex()
    if tok.get("name") != TOKENIZER_NAME or tok.get("fingerprint") != expected:
        raise CheckpointError(
            f"{where}: trained with tokenizer {tok.get('name')!r} (fingerprint {tok.get('fingerprint')}), "
            f"but this install has {TOKENIZER_NAME!r} ({expected}): its token ids would mean other text"
        )
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(meta["model"]) - known)
    if unknown:
        raise CheckpointError(f"{where}: model config has unknown keys {unknown} (written by a newer planck?)")
    cfg = ModelConfig(**meta["model"])
    try:
        cfg.validate()
    except ConfigError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    return cfg


def _read_meta(src: Path) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
    """model.json of a final/ folder (arrays None: they stay on disk), or an .npz's metadata and arrays."""
    if src.suffix == ".npz":
        try:
            with np.load(src, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise CheckpointError(f"{src}: not a readable .npz ({exc})") from None
        if NPZ_META_KEY not in arrays:
            raise CheckpointError(f"{src}: no {NPZ_META_KEY} entry (not written by `planck export`)")
        try:
            meta = json.loads(arrays.pop(NPZ_META_KEY).tobytes().decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{src}: {NPZ_META_KEY} is not JSON ({exc})") from None
        return meta, arrays
    try:
        return json.loads((src / MODEL_JSON).read_text()), None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{src / MODEL_JSON}: not JSON ({exc})") from None


def _read_orbax(params_dir: Path, model: GPT) -> dict[str, np.ndarray]:
    """final/params as {dotted name: array}, restored to the model's shapes in float32."""
    import orbax.checkpoint as ocp

    if not params_dir.is_dir():
        raise CheckpointError(f"{params_dir}: missing (the run did not finish writing its final weights)")
    target = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32), nnx.state(model, nnx.Param))
    try:
        restored = ocp.StandardCheckpointer().restore(params_dir.absolute(), target)
    except Exception as exc:  # orbax raises many types for a damaged or foreign folder
        raise CheckpointError(f"{params_dir}: cannot restore the weights ({type(exc).__name__}: {exc})") from None
    return {param_name(path): np.asarray(v.get_value() if isinstance(v, nnx.Variable) else v)
            for path, v in nnx.to_flat_state(restored)}


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
    meta, arrays = _read_meta(src)
    cfg = dataclasses.replace(check_meta(meta, src), remat=False)
    if dtype:
        cfg.compute_dtype = dtype
    # Shapes only: the weights come from the file, so nothing is initialised twice.
    model = nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0)))
    if arrays is None:
        arrays = _read_orbax(src / PARAMS, model)
    _fill(model, arrays, src, jnp.dtype(cfg.compute_dtype))
    return LoadedModel(model=model, config=cfg, meta=meta, source=src)


def load_into(model: GPT, path: Path) -> dict[str, Any]:
    """Overwrite a built model's float32 parameters with a finished model's (`--init-from`); returns its model.json."""
    src = resolve(path)
    meta, arrays = _read_meta(src)
    check_meta(meta, src)
    if arrays is None:
        arrays = _read_orbax(src / PARAMS, model)
    _fill(model, arrays, src, jnp.dtype(jnp.float32))
    return meta


def export_npz(path: Path, out: Path) -> tuple[int, int]:
    """Write a finished model as one .npz of named float32 arrays plus model.json; returns (arrays, parameters)."""
    loaded = load_model(path, dtype="float32")
    arrays = flat_params(loaded.model)
    buf = io.BytesIO()
    np.savez(buf, **{NPZ_META_KEY: np.frombuffer(json.dumps(loaded.meta).encode(), dtype=np.uint8)}, **arrays)
    atomic_write_bytes(Path(out), buf.getvalue())
    return len(arrays), sum(a.size for a in arrays.values())
