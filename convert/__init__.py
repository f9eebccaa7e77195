"""Conversion between NVIDIA DeepLearningExamples (DLE) PyTorch checkpoints and jtts model directories.

    from jtts.convert import convert, export
    convert("nvidia_tacotron2pyt_fp16.pt", "models/tacotron2")     # kind detected from the keys
    export("models/tacotron2", "tacotron2_state.pt")                 # loads into DLE's model with strict=True

Each model's PyTorch name mapping is one table (`tacotron2.table`, `waveglow.table`) used both ways; which
module serves which kind is `jtts.models.REGISTRY`'s `names`.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from jtts.models import KINDS, REGISTRY

from .tables import CheckpointError, to_jtts, to_torch

__all__ = ["convert", "export", "detect_kind", "CheckpointError", "KINDS"]


def detect_kind(state: dict[str, Any], source: str) -> str:
    """The kind whose name table claims the state_dict: a key equal to, or starting with, one of its
    SIGNATURES (a prefix only that model's keys have)."""
    for kind, entry in REGISTRY.items():
        sig = entry.names_module.SIGNATURES
        if any(k == s or k.startswith(s) for k in state for s in sig):
            return kind
    sample = ", ".join(sorted(state)[:4])
    raise CheckpointError(f"{source}: not a state_dict of any known model ({', '.join(KINDS)}; keys: {sample}, ...)")


def _shapes(kind: str, cfg) -> tuple[dict[str, tuple[int, ...]], int]:
    """-> (shape of every variable of the model built from cfg, number of trainable parameters)."""
    from flax import nnx

    from jtts import models
    from jtts.checkpoint import flat_state

    abstract = models.build(kind, cfg, abstract=True)
    shapes = {k: tuple(v.shape) for k, v in flat_state(abstract).items()}
    return shapes, int(sum(np.prod(v.shape) for v in flat_state(abstract, nnx.Param).values()))


def is_buffer(key: str) -> bool:
    """DLE state_dict keys that are not jtts parameters: BatchNorm's integer step counters."""
    return key.endswith(".num_batches_tracked")


def import_state_dict(state: dict[str, np.ndarray], dle_config: dict | None, *, kind: str | None = None,
                      source: str = "state_dict"):
    """DLE state_dict (numpy, prefix-stripped) -> (kind, config, jtts params, extras).

    extras holds the integer buffers (BatchNorm step counters) export needs and the trainable parameter count.
    """
    found = detect_kind(state, source)
    if kind is not None and kind != found:
        raise CheckpointError(f"{source}: is a {found} checkpoint, not {kind}")
    mod = REGISTRY[found].names_module
    if hasattr(mod, "prepare_state_dict"):
        state = mod.prepare_state_dict(state)
    cfg = mod.infer_config(state, dle_config, source)
    shapes, n_params = _shapes(found, cfg)
    params = to_jtts(state, mod.table(cfg), shapes, source=source, ignore=is_buffer)
    extras = {"buffers": {k: int(np.asarray(v)) for k, v in state.items() if is_buffer(k)}, "parameters": n_params}
    return found, cfg, params, extras


STORAGE_DTYPES = ("float32", "float16", "bfloat16")


def convert(src: str | os.PathLike, out: str | os.PathLike, *, kind: str | None = None, dtype: str = "float32",
            source: dict[str, Any] | None = None) -> Path:
    """NVIDIA/DLE .pt checkpoint (training, torch-hub or bare state_dict) -> jtts model directory (atomic).

    dtype: how the weights are stored (float16/bfloat16 halve the directory; loading always gives float32
    parameters). source: extra facts recorded in model.json's "source" (e.g. the download's URL and sha256).
    """
    from jtts.checkpoint import save_model

    from .torch_io import load_checkpoint

    if dtype not in STORAGE_DTYPES:
        raise CheckpointError(f"unknown storage dtype {dtype!r} (expected one of {', '.join(STORAGE_DTYPES)})")
    state, dle_config, info = load_checkpoint(src)
    found, cfg, params, extras = import_state_dict(state, dle_config, kind=kind, source=str(src))
    if dtype != "float32":
        import ml_dtypes  # numpy has no bfloat16 of its own; jax depends on ml_dtypes

        np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16
        params = {k: np.asarray(v).astype(np_dtype) for k, v in params.items()}
    meta_source = {**info, "parameters": extras.pop("parameters"), "stored_dtype": dtype, **(source or {})}
    return save_model(out, found, dataclasses.asdict(cfg), params, source=meta_source, extras=extras)


def export_state_dict(model_dir: str | os.PathLike) -> tuple[str, dict[str, np.ndarray], dict[str, Any]]:
    """jtts model directory -> (kind, DLE state_dict as numpy, DLE constructor config)."""
    from jtts.checkpoint import load_model

    meta, params = load_model(model_dir)
    entry = REGISTRY[meta["kind"]]
    cfg = entry.make_config(meta["config"])
    state = to_torch(params, entry.names_module.table(cfg))
    for key, value in meta.get("extras", {}).get("buffers", {}).items():
        state[key] = np.asarray(value, np.int64)
    return meta["kind"], state, cfg.to_dle()


def export(model_dir: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """jtts model directory -> {'state_dict', 'config'} .pt file that DLE's model loads with strict=True."""
    from .torch_io import save_checkpoint

    _, state, config = export_state_dict(model_dir)
    return save_checkpoint(dst, state, config)
