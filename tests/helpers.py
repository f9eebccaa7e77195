"""Helpers the tests import (conftest.py holds only fixtures): error measures and synthetic batches.

Every numerical bound in the tests is stated against the scale of what is compared (docs/testing.md):
`rel` for arrays whose norm does not cancel, `ulps` for elementwise comparisons in units of float32 eps times
the operands' magnitude, `loss_scale` helpers for losses that are a small difference of large terms.
"""
from __future__ import annotations

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 2^-23: one ulp of 1.0 in float32
ADAM_EPS = 1e-8  # torch's and DLE's Adam eps


def as_numpy(x, dtype=np.float64) -> np.ndarray:
    """numpy copy of a numpy, JAX or torch array (torch tensors are detached first; torch is not imported here,
    so that subprocess scripts can use these helpers without it)."""
    if type(x).__module__.startswith("torch"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype)


def rel(a, b) -> float:
    """Relative L2 error of a against the reference b: ||a - b|| / ||b||. Use only where b does not cancel
    (its norm is of the order of the norm of the terms that make it)."""
    a, b = as_numpy(a), as_numpy(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def ulps(a, b, scale) -> float:
    """Largest elementwise |a - b| in float32 ulps of `scale` (EPS32 * scale; scale broadcasts against a, b).

    `scale` is the magnitude of the operands the compared values were computed from, e.g. |b| for values
    that are themselves the result of a well-conditioned computation, or max |x| of an input signal."""
    a, b = as_numpy(a), as_numpy(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    unit = EPS32 * np.maximum(as_numpy(scale), 1e-30)
    return float(np.max(np.abs(a - b) / unit, initial=0.0))


def global_norm(arrays: dict) -> float:
    return float(np.sqrt(sum(np.sum(np.square(as_numpy(a))) for a in arrays.values())))


def tensor_errors(ours: dict, ref: dict, scale: dict | None = None, null_fraction: float = 1e-6) -> dict[str, float]:
    """Relative L2 error per tensor (gradients, Adam inputs): ||ours - ref|| / ||scale|| (scale: ref, or the
    magnitude of the terms that make ref). A tensor whose scale is below null_fraction of the global one is 0
    in exact arithmetic (a conv bias feeding training-mode BatchNorm: the batch mean absorbs it) and holds
    rounding noise only; it is held to the global scale instead of its own."""
    scale = ref if scale is None else scale
    total = global_norm(scale)
    out = {}
    for k, b in ref.items():
        diff = np.linalg.norm(as_numpy(ours[k]) - as_numpy(b))
        own = np.linalg.norm(as_numpy(scale[k]))
        out[k] = float(diff / total) if own <= null_fraction * total else float(diff / own)
    return out


def adam_first_step(h, lr: float):
    """Adam's first update for input h (bias-corrected moments h and h^2): lr * h / (|h| + eps), in float64."""
    h = as_numpy(h)
    return lr * h / (np.abs(h) + ADAM_EPS)


def step_error(after, ref_after, h, ref_h, before, lr: float, update_bound: float, param_ulps: float) -> float:
    """Largest difference of two parameters after one Adam step from the same `before`, beyond what Adam makes of
    the difference of its inputs h and ref_h, as a fraction of the allowance update_bound * lr + param_ulps
    float32 ulps of |before| + lr (the operands of p - update).

    Adam's first step moves an element by lr * h / (|h| + eps): where |h| is within a few hundred eps (1-10% of
    a model's elements), input rounding alone moves the step by a good fraction of lr, up to 2 lr where it flips
    the sign. That part is predicted from the inputs (checked separately, against the scale of their terms);
    what is left is Adam's own rounding and the update's."""
    predicted = np.abs(adam_first_step(h, lr) - adam_first_step(ref_h, lr))
    excess = np.maximum(np.abs(as_numpy(after) - as_numpy(ref_after)) - predicted, 0.0)
    allowance = update_bound * lr + param_ulps * EPS32 * (np.abs(as_numpy(before)) + lr)
    return float(np.max(excess / allowance, initial=0.0))


def waveglow_nll_terms(z, log_s_list, log_det_w_list) -> float:
    """Magnitude of the terms of WaveGlow's loss (sum z^2/2 - sum log_s - sum log det W) / z.size, sigma 1:
    (sum z^2/2 + sum |log_s| + sum |log det W|) / z.size. The loss itself is a small difference of these
    (about 0.05 against terms near 1 on the tests' weights), so its rounding error scales with them."""
    z = as_numpy(z)
    prior = 0.5 * np.sum(z * z)
    log_s = sum(np.sum(np.abs(as_numpy(s))) for s in log_s_list)
    log_det = sum(abs(float(as_numpy(d))) for d in log_det_w_list)
    return float((prior + log_s + log_det) / z.size)


def text_batch(lengths, seed=0, n_symbols=148):
    """Random symbol ids (never the pad id 0), zero-padded like DLE's collate (torch tensors)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for b, n in enumerate(lengths):
        tokens[b, :n] = torch.randint(1, n_symbols, (n,), generator=g)
    return tokens, torch.tensor(lengths, dtype=torch.long)
