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


def bce_with_logits(logits, targets):
    """Mean binary cross-entropy on logits, in torch's stable form max(x, 0) - x*y + log(1 + exp(-|x|))."""
    x, y = jnp.asarray(logits, F32), jnp.asarray(targets, F32)
    return jnp.mean(jnp.maximum(x, 0.0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x))))


def tacotron2_loss(outputs, mel_target, gate_target):
    """outputs = Tacotron2.__call__'s (mel, mel_postnet, gate_logits, alignments) -> (loss, parts dict)."""
    mel, mel_post, gate = (jnp.asarray(o, F32) for o in outputs[:3])
    target = jnp.asarray(mel_target, F32)
    mel_loss = jnp.mean(jnp.square(mel - target))
    post_loss = jnp.mean(jnp.square(mel_post - target))
    gate_loss = bce_with_logits(gate, gate_target)
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


__all__ = ["tacotron2_loss", "waveglow_loss", "bce_with_logits"]
