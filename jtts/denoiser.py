"""WaveGlow's denoiser (as in NVIDIA DeepLearningExamples): subtract the model's own bias spectrum.

The bias spectrum is the STFT magnitude of what the vocoder makes of a silent (all-zero) mel with no noise
(sigma 0), first frame only. Denoising scales it by `strength`, subtracts it from every frame's magnitude,
clamps at zero and resynthesises with the original phase.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jtts import audio as _audio

F32 = jnp.float32
BIAS_FRAMES = 88  # length of the silent mel the bias is measured on (DLE's choice)


class Denoiser:
    def __init__(self, waveglow, filter_length: int = 1024, n_overlap: int = 4, win_length: int = 1024):
        """waveglow: a `WaveGlowInference`, or a `WaveGlow` (then folded here, once: ~0.3 s for WaveGlow-256 on
        CPU; pass the inference object the pipeline uses to fold only once)."""
        if filter_length % n_overlap:
            raise ValueError(f"n_overlap={n_overlap} must divide filter_length={filter_length}")
        self.filter_length, self.hop_length, self.win_length = filter_length, filter_length // n_overlap, win_length
        vocoder = waveglow.inference()
        silent = jnp.zeros((1, vocoder.config.n_mel_channels, BIAS_FRAMES), F32)
        bias_audio = vocoder.infer(silent, sigma=0.0)
        magnitude, _ = _audio.stft(bias_audio, n_fft=filter_length, hop=self.hop_length, win=win_length)
        self.bias_spec = jnp.asarray(magnitude[:, :, :1], F32)  # (1, n_fft // 2 + 1, 1)

    def __call__(self, audio, strength: float = 0.01) -> jax.Array:
        """audio (B, T) -> denoised float32 audio (B, T rounded down to a multiple of the hop: DLE's length,
        T itself for WaveGlow's output). Audio shorter than one STFT window (a sentence of a few frames), which
        DLE's reflect padding cannot take, is zero-padded to a window and cut back to T."""
        audio = jnp.asarray(audio, F32)
        if audio.ndim != 2:
            raise ValueError(f"audio must be (batch, samples), got shape {audio.shape}")
        t = audio.shape[1]
        if t < self.filter_length:
            audio = jnp.pad(audio, ((0, 0), (0, self.filter_length - t)))
        out = _denoise(audio, self.bias_spec, jnp.asarray(strength, F32), self.filter_length, self.hop_length,
                       self.win_length)
        return out[:, :t] if t < self.filter_length else out


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _denoise(audio, bias_spec, strength, n_fft, hop, win):
    magnitude, phase = _audio.stft(audio, n_fft=n_fft, hop=hop, win=win)
    magnitude = jnp.maximum(magnitude - bias_spec * strength, 0.0)
    return _audio.istft(magnitude, phase, n_fft=n_fft, hop=hop, win=win)
