"""DLE's training losses, computed in float32 whatever the compute dtype.

Tacotron 2: MSE(mel) + MSE(postnet mel) + BCEWithLogits(gate), each a plain mean over the whole padded
tensor, as DLE's Tacotron2Loss (its `mask_padding` is off by default; with it on, the model itself zeroes
the mels and sets the gate logits to +1e3 past each length, so padding still enters the means).
WaveGlow: the flow's negative log-likelihood per audio sample, sigma 1.0 (DLE's training value).
"""
from __future__ import annotations

import jax.numpy as jnp

from jtts.waveglow import waveglow_loss as _waveglow_nll

F32 = jnp.float32


def bce_with_logits(logits, targets, pos_weight: float = 1.0):
    """Mean binary cross-entropy on logits, in torch's stable form max(x, 0) - x*y + log(1 + exp(-|x|)); with
    pos_weight, torch's BCEWithLogitsLoss(pos_weight=...): the positive term weighted, (1 - y) x +
    (1 + (w - 1) y) (log(1 + exp(-|x|)) + max(-x, 0))."""
    x, y = jnp.asarray(logits, F32), jnp.asarray(targets, F32)
    softplus_neg = jnp.log1p(jnp.exp(-jnp.abs(x)))
    if pos_weight == 1.0:
        return jnp.mean(jnp.maximum(x, 0.0) - x * y + softplus_neg)
    return jnp.mean((1.0 - y) * x + (1.0 + (pos_weight - 1.0) * y) * (softplus_neg + jnp.maximum(-x, 0.0)))


def tacotron2_loss(outputs, mel_target, gate_target, gate_pos_weight: float = 1.0):
    """outputs = Tacotron2.__call__'s (mel, mel_postnet, gate_logits, alignments) -> (loss, parts dict).
    gate_pos_weight weights the gate's "stop" frames (1, the default, is DLE's loss; ESPnet uses 5, Coqui 10)."""
    mel, mel_post, gate = (jnp.asarray(o, F32) for o in outputs[:3])
    target = jnp.asarray(mel_target, F32)
    mel_loss = jnp.mean(jnp.square(mel - target))
    post_loss = jnp.mean(jnp.square(mel_post - target))
    gate_loss = bce_with_logits(gate, gate_target, gate_pos_weight)
    return mel_loss + post_loss + gate_loss, dict(mel=mel_loss, postnet=post_loss, gate=gate_loss)


def waveglow_loss(outputs, sigma: float = 1.0):
    """outputs = WaveGlow.__call__'s (z, log_s_list, log_det_W_list) -> (loss, parts dict).

    (sum z^2 / (2 sigma^2) - sum log_s - sum log_det_W) / z.size; z.size is B * n_group * T_groups.
    """
    z, log_s, log_det = outputs
    loss = _waveglow_nll(z, log_s, log_det, sigma=sigma)
    z = jnp.asarray(z, F32)
    prior = jnp.sum(z * z) / (2.0 * sigma * sigma) / z.size
    return loss, dict(prior=prior, log_s=-sum(jnp.sum(s) for s in log_s) / z.size,
                      log_det=-sum(jnp.asarray(d, F32) for d in log_det) / z.size)


def _valid_cells(token_lengths, mel_lengths, t_out: int, t_in: int):
    """(B, T_out, T_in) bool: decoder step t < mel_length and text position n < token_length."""
    steps = jnp.arange(t_out)[None, :, None] < jnp.asarray(mel_lengths)[:, None, None]
    chars = jnp.arange(t_in)[None, None, :] < jnp.asarray(token_lengths)[:, None, None]
    return steps & chars


def guided_attention_loss(alignments, token_lengths, mel_lengths, g: float = 0.2):
    """Tachibana et al. 2017's diagonal prior on attention (beyond DLE; ESPnet and Coqui offer it).

    alignments (B, T_out, T_in) -> the mean over valid cells of A[b, t, n] * W[b, t, n] with
    W = 1 - exp(-(n / N_b - t / T_b)^2 / (2 g^2)), N_b and T_b the row's token and mel lengths: 0 for an
    alignment on the diagonal, up to 1 for attention far from it. Padded cells count neither in the sum nor
    in the number of cells. float32 whatever the alignments' dtype; jit-able (lengths may be traced).
    """
    a = jnp.asarray(alignments, F32)
    _, t_out, t_in = a.shape
    n_len = jnp.maximum(jnp.asarray(token_lengths, F32), 1.0)[:, None, None]
    t_len = jnp.maximum(jnp.asarray(mel_lengths, F32), 1.0)[:, None, None]
    n = jnp.arange(t_in, dtype=F32)[None, None, :] / n_len
    t = jnp.arange(t_out, dtype=F32)[None, :, None] / t_len
    w = 1.0 - jnp.exp(-jnp.square(n - t) / (2.0 * g * g))
    valid = _valid_cells(token_lengths, mel_lengths, t_out, t_in)
    return jnp.sum(jnp.where(valid, a * w, 0.0)) / jnp.maximum(jnp.sum(valid), 1).astype(F32)


def attention_focus(alignments, token_lengths, mel_lengths):
    """The mean over valid decoder steps of the largest attention weight: about 1/N for attention spread
    evenly over N characters, near 1 for a sharp alignment. -> (B,) float32 per utterance."""
    a = jnp.asarray(alignments, F32)
    _, t_out, t_in = a.shape
    valid = _valid_cells(token_lengths, mel_lengths, t_out, t_in)
    peak = jnp.max(jnp.where(valid, a, 0.0), axis=2)
    steps = jnp.any(valid, axis=2)
    return jnp.sum(jnp.where(steps, peak, 0.0), axis=1) / jnp.maximum(jnp.sum(steps, axis=1), 1).astype(F32)


__all__ = ["tacotron2_loss", "waveglow_loss", "bce_with_logits", "guided_attention_loss", "attention_focus"]
