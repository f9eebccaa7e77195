"""One name table per model maps DLE's PyTorch state_dict keys to jtts parameter paths, both ways.

A `Rule` pairs a torch key with a jtts path and a `Layout`, a pair of inverse array transforms. Import
(`to_jtts`) and export (`to_torch`) walk the same table, so a round trip is exact by construction:
every layout is a transpose or reshape, never arithmetic.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import numpy as np

from jtts.errors import CheckpointError


@dataclass(frozen=True)
class Layout:
    name: str
    to_jtts: Callable[[np.ndarray], np.ndarray]
    to_torch: Callable[[np.ndarray], np.ndarray]


SAME = Layout("same", lambda a: a, lambda a: a)
# torch Linear (out, in) <-> jtts (in, out)
LINEAR = Layout("linear", lambda a: a.T, lambda a: a.T)
# torch Conv1d (out, in, k) <-> jtts (k, in, out), the layout of flax's Conv and of x @ W per tap
CONV = Layout("conv", lambda a: a.transpose(2, 1, 0), lambda a: a.transpose(2, 1, 0))
# torch ConvTranspose1d (in, out, k) <-> jtts (k, in, out)
CONV_TRANSPOSE = Layout("conv_transpose", lambda a: a.transpose(2, 0, 1), lambda a: a.transpose(1, 2, 0))
# torch 1x1 Conv1d (out, in, 1) <-> jtts (in, out)
CONV1X1 = Layout("conv1x1", lambda a: a[:, :, 0].T, lambda a: a.T[:, :, None])
# torch weight-norm magnitude (out, 1, 1) <-> jtts (out,)
WN_G = Layout("wn_g", lambda a: a.reshape(a.shape[0]), lambda a: a.reshape(a.shape[0], 1, 1))


@dataclass(frozen=True)
class Rule:
    torch: str
    jtts: str
    layout: Layout = SAME


def to_jtts(state_dict: Mapping[str, np.ndarray], table: Iterable[Rule],
            expected: Mapping[str, tuple[int, ...]], *, source: str,
            ignore: Callable[[str], bool] = lambda k: False) -> dict[str, np.ndarray]:
    """Maps a (prefix-stripped, float32) state_dict through `table`, checking every key and shape.

    `expected` gives the jtts shape of every parameter of the model built from the inferred config.
    """
    table = list(table)
    wanted = {r.torch for r in table}
    missing = sorted(wanted - set(state_dict))
    unexpected = sorted(k for k in state_dict if k not in wanted and not ignore(k))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short(unexpected)}")
        raise CheckpointError(f"{source}: " + "; ".join(parts))
    out = {}
    for r in table:
        value = r.layout.to_jtts(np.asarray(state_dict[r.torch], dtype=np.float32))
        want = tuple(expected[r.jtts])
        if tuple(value.shape) != want:
            torch_shape = tuple(r.layout.to_torch(np.zeros(want, np.float32)).shape)
            raise CheckpointError(f"{source}: key {r.torch} has shape {tuple(np.shape(state_dict[r.torch]))}, "
                                  f"expected {torch_shape}")
        out[r.jtts] = np.ascontiguousarray(value)
    if set(out) != set(expected):
        raise CheckpointError(f"{source}: table leaves parameters unset: {_short(sorted(set(expected) - set(out)))}")
    return out


def to_torch(params: Mapping[str, np.ndarray], table: Iterable[Rule]) -> dict[str, np.ndarray]:
    return {r.torch: np.ascontiguousarray(r.layout.to_torch(np.asarray(params[r.jtts]))) for r in table}


def _short(keys: list[str], n: int = 6) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" (+{len(keys) - n} more)" if len(keys) > n else "")
