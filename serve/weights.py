"""Loading a finished model for inference: a run folder, its `final/`, or an exported `.npz`."""

from __future__ import annotations

import dataclasses
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from planck.schemas.tokenizer import TOKENIZER_NAME, tokenizer_fingerprint
from planck.train.config import ConfigError, ModelConfig
from planck.train.model import GPT

from .errors import CheckpointError


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
        return self.source.parent.name if self.source.name == "final" else self.source.stem


def resolve(path: Path) -> Path:
    """The file or folder to load for `path`: a run folder means its final/."""
    path = Path(path)
    if path.is_dir() and (path / "final" / "model.json").is_file():
        return path / "final"
    if path.is_dir() and (path / "model.json").is_file():
        return path
    if path.is_file() and path.suffix == ".npz":
        return path
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    raise CheckpointError(
        f"{path}: not a finished model (expected a run folder with final/model.json, a final/ folder, or an exported .npz)"
    )


def _check_meta(meta: Any, where: Path) -> ModelConfig:
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


def _abstract_model(cfg: ModelConfig) -> GPT:
    # Shapes only: the weights come from the file, so nothing is initialised twice.
    return nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0)))


def _fill(model: GPT, arrays: dict[str, np.ndarray], where: Path, dtype: jnp.dtype) -> None:
    """Put named arrays into the model's parameters, checking names and shapes."""
    state = nnx.state(model, nnx.Param)
    flat = dict(nnx.to_flat_state(state))
    names = {".".join(str(p) for p in path): path for path in flat}
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


def serving_dtype(compute_dtype: str, requested: str | None = None) -> str:
    """The dtype to serve in: `requested`, else float32 on a CPU, else the model's compute dtype.

    XLA's CPU backend runs one-token bf16 steps ~8x slower than float32 (150M model: 253 vs 30 ms
    per decode step here), while GPUs read half the bytes per token in bf16.
    """
    if requested:
        return requested
    return "float32" if jax.default_backend() == "cpu" else compute_dtype


def load_model(path: Path, dtype: str | None = None) -> LoadedModel:
    """Load a run folder, a final/ folder or an exported .npz for inference in `dtype`
    (parameters and compute; default from serving_dtype)."""
    src = resolve(path)
    if src.suffix == ".npz":
        try:
            with np.load(src, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise CheckpointError(f"{src}: not a readable .npz ({exc})") from None
        if "__model_json__" not in arrays:
            raise CheckpointError(f"{src}: no __model_json__ entry (not written by `planck export`)")
        try:
            meta = json.loads(arrays.pop("__model_json__").tobytes().decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{src}: __model_json__ is not JSON ({exc})") from None
    else:
        try:
            meta = json.loads((src / "model.json").read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{src / 'model.json'}: not JSON ({exc})") from None
        arrays = None
    cfg = dataclasses.replace(_check_meta(meta, src), remat=False)
    cfg.compute_dtype = serving_dtype(cfg.compute_dtype, dtype)
    param_dtype = jnp.dtype(cfg.compute_dtype)
    model = _abstract_model(cfg)
    if arrays is None:
        arrays = _read_orbax(src / "params", model, src)
    _fill(model, arrays, src, param_dtype)
    return LoadedModel(model=model, config=cfg, meta=meta, source=src)


def _read_orbax(params_dir: Path, model: GPT, where: Path) -> dict[str, np.ndarray]:
    """The final/params checkpoint as {dotted.name: array}, restored to the model's shapes."""
    import orbax.checkpoint as ocp

    if not params_dir.is_dir():
        raise CheckpointError(f"{params_dir}: missing (the run did not finish writing its final weights)")
    target = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32), nnx.state(model, nnx.Param)
    )
    try:
        restored = ocp.StandardCheckpointer().restore(params_dir.absolute(), target)
    except Exception as exc:  # orbax raises many types for a damaged or foreign folder
        raise CheckpointError(f"{params_dir}: cannot restore the weights ({type(exc).__name__}: {exc})") from None
    return {".".join(str(p) for p in path): np.asarray(v.get_value() if isinstance(v, nnx.Variable) else v)
            for path, v in nnx.to_flat_state(restored)}
