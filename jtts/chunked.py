"""WaveGlow over a long mel in bounded working memory: each flow runs window by window over the audio.

`WaveGlowInference.infer` runs every flow over the whole mel at once: its activations (for WaveGlow-256 about
2,000 floats per audio group of 8 samples in each WN layer) grow with the mel's length, and past a few
hundred frames they no longer fit in the CPU's caches (samples/s drops by half between 87 and 600 frames).

`chunked_infer` gives the same audio, up to float rounding, with working memory set by the chunk size:

  * The reverse flows run one after the other over the whole length (the flow state between them is 8 floats
    per group, the size of the audio). Within a flow, the length is cut into chunks of `chunk` mel frames;
    each chunk is computed from a window that adds `context_frames` on both sides, and only the chunk's part
    of the window's result is kept.
  * That is exact, not approximate: a flow's coupling reads the other half of its input only through its WN,
    whose dilated convolutions see (kernel_size - 1) / 2 * (2 ** n_layers - 1) groups on each side (255 for the
    NGC model: 8 frames); the 1x1 convolutions and the upsampled conditioning are pointwise per group, and the
    upsampling needs the 3 frames before a window (its kernel spans 4 frames). A window that ends at the real
    end of the mel masks the padding exactly as `infer` does. Results are written to a second buffer, so a
    window never reads what an earlier chunk of the same flow wrote.
  * The noise is drawn exactly as `infer` draws it for the whole mel (jax.random.normal(key, (B, 8, F * 32))),
    so the same key gives the same audio either way (`tests/test_streaming.py` bounds the difference).

One program per flow width (3 for the NGC model) is compiled for a given chunk size, whatever the mel's
length; `infer`'s bucketed whole-mel programs are used for mels of up to `2 * chunk` frames.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jtts.waveglow import F32, UPSAMPLE_KERNEL, UPSAMPLE_STRIDE, Folded, WaveGlowConfig, WaveGlowInference, \
    _check_mel, _group, _upsample, _wn

CHUNK_FRAMES = 128  # see docs/robustness.md: speed and memory against the chunk size
_UP_CONTEXT = UPSAMPLE_KERNEL // UPSAMPLE_STRIDE - 1  # frames before a block that reach it through upsampling


def context_frames(cfg: WaveGlowConfig) -> int:
    """Mel frames on each side of a chunk that one flow's WN sees: its receptive field, rounded up to frames."""
    groups = (cfg.kernel_size - 1) // 2 * (2 ** cfg.n_layers - 1)
    per_frame = UPSAMPLE_STRIDE // cfg.n_group
    return -(-groups // per_frame)


def chunked_infer(vocoder: WaveGlowInference, mel, *, sigma: float = 0.9, z=None, key=None,
                  chunk: int = CHUNK_FRAMES, context: int | None = None) -> jax.Array:
    """Mel (B, n_mel, F) -> float32 audio (B, F * 256): `vocoder.infer(mel, sigma=, z=, key=)` computed window
    by window (see the module docstring). Mels of at most 2 * chunk frames go to `vocoder.infer` whole.
    context: frames of context per side (default `context_frames`; less is only for measuring the seam error)."""
    cfg = vocoder.config
    mel = jnp.asarray(mel, F32)
    _check_mel(mel, cfg)
    b, _, frames = mel.shape
    if frames <= 2 * chunk:
        return vocoder.infer(mel, sigma=sigma, z=z, key=key)
    per_frame = UPSAMPLE_STRIDE // cfg.n_group
    shape = (b, cfg.n_group, frames * per_frame)
    if z is None:
        if sigma != 0 and key is None:
            raise ValueError("infer draws noise: pass key= (or z=, or sigma=0)")
        z = jnp.zeros(shape, F32) if sigma == 0 else jax.random.normal(key, shape, F32)
    z = jnp.asarray(z, F32)
    if z.shape != shape:
        raise ValueError(f"z must have shape {shape} for this mel, got {z.shape}")
    ctx = context_frames(cfg) if context is None else context
    width = chunk + 2 * ctx
    padded = -(-frames // chunk) * chunk
    mel = jnp.pad(mel, ((0, 0), (0, 0), (_UP_CONTEXT, padded - frames)))
    z = jnp.pad(jnp.swapaxes(z, 1, 2) * jnp.asarray(sigma, F32), ((0, 0), (0, (padded - frames) * per_frame), (0, 0)))
    valid = jnp.asarray(frames * per_frame, jnp.int32)
    w = vocoder.weights
    used = cfg.n_remaining_channels
    x = z[..., :used]
    for s in reversed(range(len(w.stages))):
        stage = w.stages[s]
        for j in reversed(range(stage[0].shape[0])):
            w_inv, wn = jax.tree.map(lambda a: a[j], stage)  # noqa: B023  (used at once)
            y = jnp.zeros_like(x)
            for at in range(0, padded, chunk):
                start = min(max(at - ctx, 0), padded - width)
                y = _window_flow(w.up_w, w.up_b, w_inv, wn, x, y, mel, jnp.int32(start), jnp.int32(at), valid,
                                 cfg=cfg, chunk=chunk, width=width)
            x = y
        if s > 0:
            x = jnp.concatenate([z[..., used:used + cfg.n_early_size], x], axis=-1)
            used += cfg.n_early_size
    return x.reshape(b, -1)[:, :frames * UPSAMPLE_STRIDE]


@functools.partial(jax.jit, static_argnames=("cfg", "chunk", "width"), donate_argnames=("y",))
def _window_flow(up_w, up_b, w_inv, wn, x, y, mel, start, at, valid, *, cfg, chunk, width):
    """One reverse flow on the window of frames [start, start + width) of x (B, groups, c); writes the frames
    [at, at + chunk) of the result into y. mel carries _UP_CONTEXT zero frames in front."""
    per_frame = UPSAMPLE_STRIDE // cfg.n_group
    mel_w = jax.lax.dynamic_slice_in_dim(mel, start, width + _UP_CONTEXT, axis=2)
    up = _upsample(Folded(up_w, up_b, ()), mel_w, (width + _UP_CONTEXT) * UPSAMPLE_STRIDE)
    spect = _group(up, cfg.n_group)[:, _UP_CONTEXT * per_frame:]
    xw = jax.lax.dynamic_slice_in_dim(x, start * per_frame, width * per_frame, axis=1)
    h = xw.shape[-1] // 2
    out = _wn(wn, cfg, xw[..., :h], spect, valid - start * per_frame)
    x1 = (xw[..., h:] - out[..., :h]) / jnp.exp(out[..., h:])
    yw = jnp.dot(jnp.concatenate([xw[..., :h], x1], axis=-1), w_inv, precision=jax.lax.Precision.HIGHEST)
    keep = jax.lax.dynamic_slice_in_dim(yw, (at - start) * per_frame, chunk * per_frame, axis=1)
    return jax.lax.dynamic_update_slice_in_dim(y, keep, at * per_frame, axis=1)
