"""Audio for a pipe: samples encoded as soundfile encodes them in files, and a writer that sends them to a stream
as they come (`jtts synthesize -o -`), under a WAV header that gives no length or under none at all."""
from __future__ import annotations

import os

from jtts.errors import JttsError


def encode(audio, rate: int, fmt: str, subtype: str, where) -> bytes:
    """Samples in soundfile's encoding (the same bytes in a file and in a stream); NaN or infinity refused."""
    import io

    import numpy as np
    import soundfile as sf

    audio = np.asarray(audio, np.float32)
    if not np.isfinite(audio).all():
        raise JttsError(f"{where}: the models produced NaN or infinite samples")
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0), rate, subtype=subtype, format=fmt,
             **({"endian": "LITTLE"} if fmt == "RAW" else {}))
    return bytes(buf.getbuffer())


class AudioStream:
    """Audio to stdout as it comes: a WAV header whose RIFF and data sizes say 0xFFFFFFFF (unknown: readers
    take the data up to the end of the stream), or nothing with --raw; then the samples, flushed per write.
    Resampling, if asked, runs as one soxr stream, so sentence boundaries leave no seams."""

    def __init__(self, out, rate: int, subtype: str, raw: bool, source_rate: int | None = None):
        """rate: the stream's; source_rate: the rate of the audio written (default: the same)."""
        self.out, self.rate, self.subtype = out, rate, subtype
        self.resampler = None
        if source_rate is not None and rate != source_rate:
            import soxr

            self.resampler = soxr.ResampleStream(source_rate, rate, 1, dtype="float32")
        if not raw:
            self._send(wav_header(rate, subtype))

    def write(self, audio, last: bool = False) -> None:
        if self.resampler is not None:
            audio = self.resampler.resample_chunk(audio, last=last)
        if len(audio):
            self._send(encode(audio, self.rate, "RAW", self.subtype, "-o -"))

    def _send(self, data: bytes) -> None:
        try:
            self.out.write(data)
            self.out.flush()
        except BrokenPipeError:
            # nothing more can reach the reader; keep Python from failing again when it flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.out.fileno())
            raise JttsError("-o -: the reader closed the pipe before the end of the audio") from None


def wav_header(rate: int, subtype: str) -> bytes:
    """A mono WAV header for a stream of unknown length (RIFF and data sizes 0xFFFFFFFF)."""
    import struct

    bits = {"PCM_16": 16, "PCM_24": 24, "FLOAT": 32}[subtype]
    tag = 3 if subtype == "FLOAT" else 1  # WAVE_FORMAT_IEEE_FLOAT / WAVE_FORMAT_PCM
    fmt = struct.pack("<HHIIHH", tag, 1, rate, rate * bits // 8, bits // 8, bits)
    return b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt + \
        b"data" + struct.pack("<I", 0xFFFFFFFF)
