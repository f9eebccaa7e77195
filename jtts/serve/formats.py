"""Audio answers of `jtts serve`: 16-bit mono at the models' sample rate as WAV, raw PCM or FLAC.

Samples are converted by libsndfile (clipped to [-1, 1]) as `jtts synthesize` converts them for its files, so
the same text, seed and options give the same samples from both. Streamed WAV announces unknown sizes
(0xFFFFFFFF, as `jtts synthesize -o -` and other streaming encoders do), then each sentence's samples.
"""
from __future__ import annotations

import io
import struct

import numpy as np

FORMATS = {"wav": "audio/wav", "pcm": "audio/pcm", "flac": "audio/flac"}
STREAMABLE = ("wav", "pcm")
_UNKNOWN = 0xFFFFFFFF


def _soundfile(audio: np.ndarray, fmt: str, rate: int, **kw) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(np.asarray(audio, np.float32), -1.0, 1.0), rate, format=fmt, subtype="PCM_16", **kw)
    return buf.getvalue()


def pcm16(audio: np.ndarray) -> bytes:
    """float32 samples -> little-endian int16 bytes."""
    return _soundfile(audio, "RAW", 8000, endian="LITTLE")  # raw samples: the rate is not part of the bytes


def wav_header(data_bytes: int | None, rate: int) -> bytes:
    """The 44-byte header of a 16-bit mono WAV file; None: the length is not known yet (streaming)."""
    riff = _UNKNOWN if data_bytes is None else 36 + data_bytes
    data = _UNKNOWN if data_bytes is None else data_bytes
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVEfmt " +
            struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16) + b"data" + struct.pack("<I", data))


def stream_header(rate: int) -> bytes:
    return wav_header(None, rate)


def encode(audio: np.ndarray, fmt: str, rate: int) -> bytes:
    if fmt == "flac":
        return _soundfile(audio, "FLAC", rate)
    data = pcm16(audio)
    return wav_header(len(data), rate) + data if fmt == "wav" else data


def silence(seconds: float, rate: int) -> np.ndarray:
    return np.zeros(int(round(seconds * rate)), np.float32)


def join(pieces: list[np.ndarray], pause: float, rate: int) -> np.ndarray:
    """Sentences with `pause` seconds of silence between them, as `jtts synthesize` joins them."""
    gap = silence(pause, rate)
    out = []
    for j, piece in enumerate(pieces):
        if j:
            out.append(gap)
        out.append(piece)
    return np.concatenate(out) if out else np.zeros(0, np.float32)
