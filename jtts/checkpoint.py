"""On-disk layout of a converted jtts model, shared by the models (loading) and `jtts.convert` (writing).

A model directory holds
  model.json  -- {"format": 1, "kind": "tacotron2"|"waveglow", "config": {...}, "source": {...}, "extras": {...}}
  params/     -- an Orbax checkpoint of a flat {"a/b/c": array} dict in jtts' own parameter names, float32
                 (or float16/bfloat16 when converted with --dtype; loading upcasts to float32)

model.json is written last, inside a temporary sibling directory that is renamed into place, so a directory
that has a model.json is complete: a killed conversion leaves no directory that looks like a model.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

FORMAT_VERSION = 1
MODEL_FILE = "model.json"
PARAMS_DIR = "params"


class ModelDirError(ValueError):
    """A model directory is missing, incomplete, or holds another kind of model."""


def _checkpointer():
    import orbax.checkpoint as ocp  # deferred: orbax import costs ~1 s

    return ocp.PyTreeCheckpointer()


def save_model(path: str | os.PathLike, kind: str, config: Mapping[str, Any],
               params: Mapping[str, np.ndarray], *, source: Mapping[str, Any] | None = None,
               extras: Mapping[str, Any] | None = None) -> Path:
    """Atomically write a model directory (replacing an existing one only once the new one is complete)."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        # Orbax keys must be plain strings; "/" in a key would be taken as nesting, so use "." on disk.
        tree = {k.replace("/", "."): np.asarray(v) for k, v in params.items()}
        _checkpointer().save(tmp / PARAMS_DIR, tree)
        meta = {"format": FORMAT_VERSION, "kind": kind, "config": dict(config),
                "source": dict(source or {}), "extras": dict(extras or {})}
        (tmp / MODEL_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_meta(path: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
    path = Path(path)
    meta_file = path / MODEL_FILE
    if not path.is_dir():
        raise ModelDirError(f"{path}: not a jtts model directory (run `jtts convert` first)")
    if not meta_file.is_file():
        raise ModelDirError(f"{path}: no {MODEL_FILE}; the directory is incomplete or not a jtts model")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise ModelDirError(f"{meta_file}: corrupt ({e.msg} at line {e.lineno})") from None
    if meta.get("format") != FORMAT_VERSION:
        raise ModelDirError(f"{meta_file}: unsupported format {meta.get('format')!r}")
    if kind is not None and meta.get("kind") != kind:
        raise ModelDirError(f"{path}: holds a {meta.get('kind')} model, not {kind}")
    return meta


def load_model(path: str | os.PathLike, kind: str | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Returns (meta, flat params) of a model directory written by `save_model`."""
    meta = read_meta(path, kind)
    try:
        tree = _checkpointer().restore(Path(path).absolute() / PARAMS_DIR)
    except Exception as e:  # orbax raises a variety of types for missing/corrupt files
        raise ModelDirError(f"{Path(path) / PARAMS_DIR}: cannot read parameters ({type(e).__name__}: {e})") from None
    # Weights may be stored in float16/bfloat16 (`jtts convert --dtype`); models always get float32 parameters.
    return meta, {k.replace(".", "/"): _as_float32(v) for k, v in tree.items()}


def _as_float32(value) -> np.ndarray:
    value = np.asarray(value)
    return value.astype(np.float32) if value.dtype.kind == "f" or value.dtype.name == "bfloat16" else value


def flat_state(module, variable_type=None) -> dict[str, Any]:
    """{"a/b/0/c": Variable} for an NNX module: the names `jtts.convert` tables and model.json use."""
    from flax import nnx

    state = nnx.state(module, variable_type) if variable_type is not None else nnx.state(module)
    return {"/".join(str(p) for p in path): var for path, var in nnx.to_flat_state(state)}


def assign(module, params: Mapping[str, np.ndarray]) -> None:
    """Copies flat float32 params into `module`, checking that names and shapes agree exactly."""
    import jax.numpy as jnp

    variables = flat_state(module)
    missing = sorted(set(variables) - set(params))
    unexpected = sorted(set(params) - set(variables))
    if missing or unexpected:
        raise ModelDirError(f"parameter names disagree: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, var in variables.items():
        value = params[name]
        if tuple(value.shape) != tuple(var.shape):
            raise ModelDirError(f"parameter {name}: shape {tuple(value.shape)}, model expects {tuple(var.shape)}")
        var.set_value(jnp.asarray(value, dtype=var.dtype))
