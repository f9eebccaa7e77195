"""Audio front end: STFT and its inverse, log-mel spectrograms, WAV reading and writing.

The STFT conventions are NVIDIA's Tacotron 2 / WaveGlow ones, which the trained models depend on:
22050 Hz, 1024-point frames every 256 samples, a periodic Hann window, the signal reflect-padded by
half a frame on both sides, 80 Slaney mel bands from 0 to 8000 Hz and log(max(mel, 1e-5)).

Everything here stays in float32 whatever dtype the models run in, and the one matrix product (the
mel projection) asks for full float32 precision: log-mel values of quiet bins are sensitive to
rounding in the spectrum, and on GPUs/TPUs XLA's default matmul precision (TF32/bf16 passes) would
move them by ~1e-3, a hundred times the tolerance the parity tests hold this module to.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from jtts.files import atomic_write
from jtts.frontend import FMAX, FMIN, HOP, LOG_FLOOR, N_FFT, N_MELS, SAMPLE_RATE, WIN  # noqa: F401


_F32 = jnp.float32
_TINY = float(np.finfo(np.float32).tiny)


@functools.lru_cache(maxsize=None)
def _window(n_fft: int, win: int) -> np.ndarray:
    """Periodic ("FFT") Hann window of length `win`, zero-padded equally on both sides to `n_fft`.
    Built in float64 and rounded once to float32."""
    if not 0 < win <= n_fft:
        raise ValueError(f"window length {win} must be in 1..n_fft={n_fft}")
    n = np.arange(win)
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / win)
    left = (n_fft - win) // 2
    out = np.zeros(n_fft)
    out[left:left + win] = w
    return out


@functools.lru_cache(maxsize=None)
def mel_filterbank(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS,
                   fmin: float = FMIN, fmax: float = FMAX) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) float32 Slaney-style mel filter bank (librosa's default, as NVIDIA used).
    Cached and read-only: copy it before modifying."""
    import librosa  # heavy import, only needed here

    basis = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    basis = np.asarray(basis, np.float32)
    basis.flags.writeable = False
    return basis


def _batched(x, ndim: int):
    x = jnp.asarray(x, _F32)
    if x.ndim == ndim - 1:
        return x[None], True
    if x.ndim != ndim:
        raise ValueError(f"expected {ndim - 1} or {ndim} dimensions, got shape {x.shape}")
    return x, False


@functools.partial(jax.jit, static_argnames=("n_fft", "hop", "win"))
def stft(x, n_fft: int = N_FFT, hop: int = HOP, win: int = WIN) -> tuple[jax.Array, jax.Array]:
    """Magnitude and phase of audio x, (B, T) or (T,) -> two float32 arrays (B, n_fft // 2 + 1, frames)
    (or without B), frames = 1 + T // hop. Magnitude is sqrt(re^2 + im^2), phase atan2(im, re)."""
    x, single = _batched(x, 2)
    pad = n_fft // 2
    if x.shape[-1] <= pad:
        raise ValueError(f"audio of {x.shape[-1]} samples is too short for reflect padding by {pad}")
    xp = jnp.pad(x, ((0, 0), (pad, pad)), mode="reflect")  # mirror without repeating the edge sample
    n_frames = 1 + (xp.shape[-1] - n_fft) // hop
    idx = np.arange(n_frames)[:, None] * hop + np.arange(n_fft)[None, :]
    frames = xp[:, idx] * jnp.asarray(_window(n_fft, win), _F32)  # (B, frames, n_fft)
    # An FFT rather than a product with a DFT matrix: same float32 result to rounding, no exposure to
    # reduced matmul precision on accelerators, and n log n.
    spec = jnp.fft.rfft(frames, axis=-1)
    re, im = jnp.real(spec), jnp.imag(spec)
    magnitude = jnp.sqrt(re * re + im * im)  # not |z| (hypot): the reference computes it this way
    phase = jnp.arctan2(im, re)
    magnitude, phase = jnp.swapaxes(magnitude, 1, 2), jnp.swapaxes(phase, 1, 2)
    return (magnitude[0], phase[0]) if single else (magnitude, phase)


def _overlap_add(frames, hop: int):
    """(B, F, n) frames placed every `hop` samples and summed -> (B, (F - 1) * hop + n).

    Frames are cut into hop-long blocks and block r of every frame is added at once (a shifted
    slice), so the sum is a handful of dense adds: no scatter, deterministic on every backend."""
    b, f, n = frames.shape
    r = -(-n // hop)
    blocks = jnp.pad(frames, ((0, 0), (0, 0), (0, r * hop - n))).reshape(b, f, r, hop)
    out = jnp.zeros((b, f + r - 1, hop), frames.dtype)
    for k in range(r):
        out = out.at[:, k:k + f].add(blocks[:, :, k])
    return out.reshape(b, -1)[:, :(f - 1) * hop + n]


@functools.partial(jax.jit, static_argnames=("n_fft", "hop", "win"))
def istft(magnitude, phase, n_fft: int = N_FFT, hop: int = HOP, win: int = WIN) -> jax.Array:
    """Inverse of `stft`: (B, n_fft // 2 + 1, F) magnitude and phase -> float32 audio (B, (F - 1) * hop)
    (or without B). Inverts any spectrum, consistent or not (e.g. the denoiser's modified magnitudes),
    the way NVIDIA's conv-transpose inverse does:

    NVIDIA's inverse basis is pinv(s * D) with D the (n_fft + 2, n_fft) matrix of real and imaginary
    rows of the one-sided DFT and s = n_fft / hop. D has full column rank, so pinv(D) c is the real
    signal y minimising |D y - c|. irfft(c) is that y: D irfft(c) equals c with the imaginary parts of
    the DC and Nyquist bins zeroed, and D's rows for those parts are zero, so D^T D irfft(c) = D^T c,
    the normal equations. Each frame is then windowed, overlap-added, divided by the summed squared
    window where that sum exceeds float32's smallest normal number (elsewhere every frame's window is
    zero too), and multiplied by s, which cancels the 1/s in the basis, so neither is applied here."""
    magnitude, single = _batched(magnitude, 3)
    phase, _ = _batched(phase, 3)
    if magnitude.shape[1] != n_fft // 2 + 1 or phase.shape != magnitude.shape:
        raise ValueError(f"expected magnitude and phase of shape (B, {n_fft // 2 + 1}, frames), "
                         f"got {magnitude.shape} and {phase.shape}")
    spec = jax.lax.complex(magnitude * jnp.cos(phase), magnitude * jnp.sin(phase))
    frames = jnp.fft.irfft(jnp.swapaxes(spec, 1, 2), n=n_fft, axis=-1)  # (B, F, n_fft)
    window = _window(n_fft, win)
    y = _overlap_add(frames * jnp.asarray(window, _F32), hop)
    n_frames = magnitude.shape[-1]
    wss = _overlap_add(jnp.broadcast_to(jnp.asarray(window ** 2, _F32), (1, n_frames, n_fft)), hop)
    nonzero = wss > _TINY
    y = jnp.where(nonzero, y / jnp.where(nonzero, wss, 1.0), y)
    pad = n_fft // 2
    y = y[:, pad:y.shape[-1] - pad]
    return y[0] if single else y


@functools.partial(jax.jit, static_argnames=("sample_rate", "n_fft", "hop", "win", "n_mels", "fmin", "fmax"))
def mel_spectrogram(wav, *, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, hop: int = HOP,
                    win: int = WIN, n_mels: int = N_MELS, fmin: float = FMIN,
                    fmax: float = FMAX) -> jax.Array:
    """Log-mel spectrogram of float audio in [-1, 1]: (T,) -> (n_mels, frames), (B, T) -> (B, n_mels,
    frames), frames = 1 + T // hop. Values outside [-1, 1] are not checked (nor clipped)."""
    magnitude, _ = stft(wav, n_fft=n_fft, hop=hop, win=win)
    basis = jnp.asarray(mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax))
    mel = jnp.einsum("mf,...ft->...mt", basis, magnitude, precision=jax.lax.Precision.HIGHEST)
    return jnp.log(jnp.maximum(mel, LOG_FLOOR))


def load_wav(path, sample_rate: int | None = SAMPLE_RATE) -> tuple[np.ndarray, int]:
    """Read an audio file as float32 mono in [-1, 1] -> (audio (T,), sample rate).

    Integer PCM is scaled by 1 / 2^(bits - 1) (int16 / 32768, as NVIDIA's data loader did), channels
    are averaged, and the audio is resampled (soxr) to `sample_rate` unless that is None."""
    import soundfile as sf

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such audio file: {path}")
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise ValueError(f"cannot read audio file {path}: {e}") from e
    audio = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if sample_rate is not None and sr != sample_rate:
        import soxr

        audio = soxr.resample(audio, sr, sample_rate)
        sr = sample_rate
    return np.ascontiguousarray(audio, np.float32), int(sr)


def save_wav(path, audio, sample_rate: int = SAMPLE_RATE, subtype: str = "PCM_16") -> None:
    """Write float audio, (T,) or (T, channels), clipped to [-1, 1], as a WAV file (16-bit PCM by
    default; subtype="FLOAT" keeps float32 exactly).

    The file is written next to `path` under a temporary name and renamed over `path` only once
    complete, so an interrupted or failed write never leaves a truncated file at `path`."""
    import soundfile as sf

    audio = np.asarray(audio, np.float32)
    if audio.ndim not in (1, 2):
        raise ValueError(f"audio must be (samples,) or (samples, channels), got shape {audio.shape}")
    if not np.isfinite(audio).all():
        raise ValueError(f"audio for {path} contains NaN or infinite samples")
    audio = np.clip(audio, -1.0, 1.0)
    with atomic_write(path) as f:
        sf.write(f, audio, sample_rate, subtype=subtype, format="WAV")
