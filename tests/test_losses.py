"""Guided attention loss and attention focus: hand-computed values, padding, per-row lengths, jit, dtypes."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jtts.train.losses import attention_focus, guided_attention_loss


def _w(n, big_n, t, big_t, g):
    return 1.0 - math.exp(-((n / big_n - t / big_t) ** 2) / (2 * g * g))


def test_guided_attention_hand_values():
    # 2 steps x 2 characters, g = 0.5: W is 0 on the diagonal and 1 - exp(-0.5) off it
    off = 1.0 - math.exp(-0.5)
    assert _w(1, 2, 0, 2, 0.5) == pytest.approx(off, rel=1e-15)
    diag = np.array([[[1.0, 0.0], [0.0, 1.0]]], np.float32)
    anti = np.array([[[0.0, 1.0], [1.0, 0.0]]], np.float32)
    lengths = np.array([2])
    assert float(guided_attention_loss(diag, lengths, lengths, g=0.5)) == 0.0
    # two off-diagonal cells of weight 1 over 4 cells: 2 * 0.39346934 / 4 = 0.19673467
    assert float(guided_attention_loss(anti, lengths, lengths, g=0.5)) == pytest.approx(off / 2, rel=1e-6)


def test_guided_attention_counts_valid_cells_only():
    """Row 0: 2 chars x 2 steps, anti-diagonal; row 1: 4 chars x 2 steps, weight 1 on char 3 at step 1 (n/N 0.75
    against t/T 0.5) and on char 0 at step 0 (on the diagonal). Padding holds junk that must not count."""
    g = 0.2
    a = np.full((2, 3, 5), 7.0, np.float32)  # junk everywhere, then the valid cells
    a[0, :2, :2] = [[0, 1], [1, 0]]
    a[1, :2, :4] = [[1, 0, 0, 0], [0, 0, 0, 1]]
    tokens, mels = np.array([2, 4]), np.array([2, 2])
    want = (_w(1, 2, 0, 2, g) + _w(0, 2, 1, 2, g) + _w(0, 4, 0, 2, g) + _w(3, 4, 1, 2, g)) / (2 * 2 + 4 * 2)
    assert _w(3, 4, 1, 2, g) == pytest.approx(1 - math.exp(-0.0625 / 0.08))
    got = float(guided_attention_loss(a, tokens, mels, g=g))
    assert got == pytest.approx(want, rel=1e-6)


def test_guided_attention_matches_a_loop_on_random_alignments():
    rng = np.random.default_rng(0)
    b, t_out, t_in, g = 3, 17, 9, 0.2
    a = rng.dirichlet(np.ones(t_in), (b, t_out)).astype(np.float32)
    tokens, mels = np.array([9, 5, 2]), np.array([17, 11, 4])
    total, cells = 0.0, 0
    for r in range(b):
        for t in range(mels[r]):
            for n in range(tokens[r]):
                total += float(a[r, t, n]) * _w(n, tokens[r], t, mels[r], g)
                cells += 1
    got = float(guided_attention_loss(a, tokens, mels, g=g))
    # float32 sums of ~150 terms of size <= 1: 7e-8 relative measured, the bound is 100x that
    assert got == pytest.approx(total / cells, rel=1e-5)


def test_guided_attention_jits_with_traced_lengths_and_computes_in_float32():
    rng = np.random.default_rng(1)
    a = rng.dirichlet(np.ones(6), (2, 8)).astype(np.float32)
    tokens, mels = jnp.array([6, 3]), jnp.array([8, 5])
    eager = guided_attention_loss(a, tokens, mels)
    jitted = jax.jit(guided_attention_loss)(a, tokens, mels)
    assert jitted.dtype == jnp.float32
    np.testing.assert_allclose(float(jitted), float(eager), rtol=1e-6)
    half = guided_attention_loss(jnp.asarray(a, jnp.bfloat16), tokens, mels)
    assert half.dtype == jnp.float32
    # bfloat16 rounds each weight by at most 2^-9 relative
    np.testing.assert_allclose(float(half), float(eager), rtol=2 ** -8)
    grad = jax.grad(lambda x: guided_attention_loss(x, tokens, mels))(jnp.asarray(a))
    assert np.all(np.isfinite(np.asarray(grad)))
    assert np.all(np.asarray(grad)[1, 5:] == 0) and np.all(np.asarray(grad)[1, :, 3:] == 0)  # padding


def test_attention_focus_hand_values():
    a = np.zeros((3, 4, 5), np.float32)
    a[0, :, :4] = 0.25               # spread evenly over 4 chars: 0.25 at every step
    a[1, :2, 0] = 1.0                # sharp for its 2 valid steps; padding steps hold junk below
    a[1, 2:] = 0.9
    a[2, 0, :2] = [0.5, 0.5]         # steps of 0.5, 1.0, 0.75 -> mean 0.75
    a[2, 1, 1] = 1.0
    a[2, 2, :2] = [0.25, 0.75]
    a[2, :, 4] = 0.95                # a padded character, ignored
    focus = np.asarray(attention_focus(a, np.array([4, 5, 2]), np.array([4, 2, 3])))
    np.testing.assert_allclose(focus, [0.25, 1.0, 0.75], rtol=1e-7)


def test_gate_pos_weight_is_torchs_bce_with_logits():
    """--gate-pos-weight: torch's BCEWithLogitsLoss(pos_weight=w) on logits of every size, and exactly DLE's
    loss at w = 1."""
    import torch

    from jtts.train.losses import bce_with_logits, tacotron2_loss

    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 300)) * np.array([[0.1], [3.0], [30.0], [300.0]])).astype(np.float32)
    y = (rng.random((4, 300)) < 0.1).astype(np.float32)
    for w in (1.0, 5.0, 0.3):
        ref = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(w))(torch.from_numpy(x), torch.from_numpy(y)).item()
        got = float(bce_with_logits(x, y, w))
        # terms are up to |x| = 1e3 before the mean: float32 rounding of the terms, not of the mean
        assert abs(got - ref) <= 1e-6 * float(np.mean(np.abs(x) * (1 + w))), (w, got, ref)
    assert float(bce_with_logits(x, y, 1.0)) == float(bce_with_logits(x, y))
    # the weight multiplies the stop frames' term only: with no stop frame it changes nothing
    zeros = np.zeros_like(y)
    assert float(bce_with_logits(x, zeros, 7.0)) == pytest.approx(float(bce_with_logits(x, zeros)), rel=1e-6)
    mel = rng.standard_normal((2, 80, 300)).astype(np.float32)
    out = (mel + 0.1, mel - 0.1, x[:2], None)
    base, parts = tacotron2_loss(out, mel, y[:2])
    weighted, wparts = tacotron2_loss(out, mel, y[:2], 5.0)
    assert wparts["gate"] > parts["gate"] and wparts["mel"] == parts["mel"]
    assert float(weighted - base) == pytest.approx(float(wparts["gate"] - parts["gate"]), rel=1e-5)


def test_guided_attention_matches_the_torch_reference():
    """The reference's torch twin (what benchmarks/learn_dle.py adds to DLE's loss) against jtts: value and
    gradient with respect to the alignments, on softmax rows with junk in the padding."""
    import torch

    from reference.tacotron2_torch import guided_attention_loss as torch_ga

    rng = np.random.default_rng(5)
    logits = rng.standard_normal((3, 40, 17)).astype(np.float32) * 3
    a = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    a[0, 30:] = 5.0  # junk past row 0's 30 frames
    tokens, mels = np.array([11, 17, 1], np.int32), np.array([30, 40, 7], np.int32)
    for g in (0.2, 0.4):
        ta = torch.from_numpy(a).requires_grad_(True)
        ref = torch_ga(ta, torch.from_numpy(tokens).long(), torch.from_numpy(mels).long(), g)
        ref.backward()
        value, grad = jax.value_and_grad(lambda x: guided_attention_loss(x, tokens, mels, g=g))(jnp.asarray(a))
        # a mean of products of terms in [0, 1]: float32 rounding of the summed terms, relative to their mean
        assert abs(float(value) - ref.item()) <= 1e-6 * ref.item(), (g, float(value), ref.item())
        # each cell's gradient is W / count (0 outside the valid cells): terms of size 1 / count
        count = float(np.sum(tokens * mels))  # valid cells
        np.testing.assert_allclose(np.asarray(grad), ta.grad.numpy(), rtol=0, atol=1e-6 / count)
        assert np.all(ta.grad.numpy()[0, 30:] == 0) and np.all(ta.grad.numpy()[2, :, 1:] == 0)
