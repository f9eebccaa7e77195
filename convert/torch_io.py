"""Reading and writing DLE's PyTorch checkpoint files, safely.

Files are only ever read with `torch.load(weights_only=True)`: a pickle that names any Python callable
outside torch's tensor allow-list is refused before anything in it runs.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .tables import CheckpointError

_WN_SPELLINGS = ((".parametrizations.weight.original0", ".weight_g"),
                 (".parametrizations.weight.original1", ".weight_v"))


def _torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - depends on the environment
        raise CheckpointError("reading PyTorch checkpoints needs torch: pip install 'jtts[torch]'") from None
    return torch


def normalize_key(key: str) -> str:
    """A state_dict key in the one spelling the tables use: no DDP `module.` prefix, weight norm as
    weight_g/weight_v (newer torch writes parametrizations.weight.original0/1)."""
    key = key[len("module."):] if key.startswith("module.") else key
    for new, old in _WN_SPELLINGS:
        if key.endswith(new):
            return key[: -len(new)] + old
    return key


def read_pt(path: str | os.PathLike):
    """The object in a .pt file, loaded with weights_only=True; damaged or unsafe files raise CheckpointError."""
    torch = _torch()
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch's loader raises many types for damaged files; all mean "unreadable"
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        culprit = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported global" in ln), None)
        if isinstance(e, pickle.UnpicklingError) and culprit:
            raise CheckpointError(f"{path}: refused: the file holds Python objects that could run code when "
                                  f"loaded ({culprit[:160]}); nothing in it was executed") from None
        detail = lines[0][:160] if lines else type(e).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt: {detail})") from None
    return obj


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any] | None, dict[str, Any]]:
    """-> (state_dict with keys in `normalize_key`'s spelling, as numpy; the checkpoint's `config` dict or None;
    info about the file)."""
    torch = _torch()
    path = Path(path)
    obj = read_pt(path)
    info: dict[str, Any] = {"file": path.name, "bytes": path.stat().st_size}
    config = None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        config = obj.get("config") if isinstance(obj.get("config"), dict) else None
        if "epoch" in obj:
            info["epoch"] = int(obj["epoch"])
        info["layout"] = "training checkpoint" if "optimizer" in obj else "state_dict + config"
        raw = obj["state_dict"]
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        info["layout"] = "bare state_dict"
        raw = obj
    else:
        raise CheckpointError(f"{path}: not a model checkpoint (no state_dict of tensors inside)")
    state = {}
    for key, value in raw.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: state_dict entry {key} is a {type(value).__name__}, not a tensor")
        t = value.detach().cpu()
        state[normalize_key(key)] = (t.float() if t.is_floating_point() else t).numpy()
    return state, config, info


def save_checkpoint(path: str | os.PathLike, state_dict: dict[str, np.ndarray], config: dict[str, Any]) -> Path:
    """Writes {'state_dict', 'config'} (torch hub layout) atomically: a temp file renamed into place."""
    torch = _torch()
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"state_dict": {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, "config": config}
    from jtts.files import atomic_write

    with atomic_write(path) as f:
        torch.save(payload, f)
    return path
