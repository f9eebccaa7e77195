"""The audio front end's settings, DLE's defaults (the NGC models were trained with these): 22050 Hz,
1024-point frames every 256 samples, a 1024-sample Hann window, 80 Slaney mel bands from 0 to 8000 Hz,
log(max(mel, 1e-5)).

A model's front end is part of its config (`Tacotron2Config.audio`, `WaveGlowConfig.audio`, an `AudioConfig`),
so `jtts convert` and `jtts train` write it into model.json, and a model directory written before it existed
loads with DLE's defaults. `frontend_of(model)` reads it; `shared_frontend(tacotron2, waveglow)` checks that
two models agree before one's mels feed the other.

A module of its own, free of JAX, so that commands and their `--help` can name these values cheaply;
`jtts.audio` computes with them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

SAMPLE_RATE = 22050
N_FFT = 1024
HOP = 256
WIN = 1024
N_MELS = 80
FMIN = 0.0
FMAX = 8000.0
LOG_FLOOR = 1e-5  # mel energies are clamped here before the log; fixed (DLE's), not a setting


@dataclass(frozen=True)
class AudioConfig:
    """How audio becomes a log-mel spectrogram: sample rate (Hz), STFT size, hop and window length (samples),
    mel bands and their frequency range (Hz). Names as `jtts.audio.mel_spectrogram`'s arguments."""
    sample_rate: int = SAMPLE_RATE
    n_fft: int = N_FFT
    hop: int = HOP
    win: int = WIN
    n_mels: int = N_MELS
    fmin: float = FMIN
    fmax: float = FMAX

    def __post_init__(self):
        for name in ("sample_rate", "n_fft", "hop", "win", "n_mels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"audio.{name} must be a positive integer, got {value!r}")
        for name in ("fmin", "fmax"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"audio.{name} must be a number, got {value!r}")
            object.__setattr__(self, name, float(value))  # 8000 and 8000.0 are one config
        problems = []
        if self.n_fft % 2:
            problems.append(f"n_fft must be even (frames = 1 + samples // hop), got {self.n_fft}")
        if self.win > self.n_fft:
            problems.append(f"win {self.win} exceeds n_fft {self.n_fft}")
        if self.hop > self.n_fft:
            problems.append(f"hop {self.hop} exceeds n_fft {self.n_fft} (samples between frames would be lost)")
        if not 0.0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            problems.append(f"need 0 <= fmin < fmax <= sample_rate / 2 = {self.sample_rate / 2:g}, got fmin "
                            f"{self.fmin:g}, fmax {self.fmax:g}")
        if problems:
            raise ValueError("invalid audio config: " + "; ".join(problems))

    @classmethod
    def of(cls, value: "AudioConfig | Mapping[str, Any] | None", **defaults) -> "AudioConfig":
        """An AudioConfig from itself, a dict (model.json's "audio"; absent keys take `defaults`, then DLE's) or
        None (`defaults`, then DLE's). Unknown keys are an error: a misspelt setting must not be ignored."""
        if isinstance(value, cls):
            return value
        if value is None:
            return cls(**defaults)
        if not isinstance(value, Mapping):
            raise ValueError(f"audio must be a mapping of front-end settings, got {value!r}")
        unknown = sorted(set(value) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown audio setting(s) {', '.join(unknown)} (known: {', '.join(FIELDS)})")
        return cls(**{**defaults, **value})

    def frames(self, samples: int) -> int:
        """Mel frames of a clip of `samples` samples (the STFT is centred: reflect-padded by n_fft // 2)."""
        return 1 + int(samples) // self.hop

    def mel_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `jtts.audio.mel_spectrogram`."""
        return dataclasses.asdict(self)

    def cache_params(self) -> dict[str, Any]:
        """What a mel cache records (and compares) about the mels it holds."""
        return {**dataclasses.asdict(self), "log_floor": LOG_FLOOR}

    def differences(self, other: "AudioConfig") -> list[str]:
        """'sample_rate 22050 vs 16000' for each setting that differs."""
        return [f"{f.name} {getattr(self, f.name):g} vs {getattr(other, f.name):g}"
                for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(other, f.name)]


FIELDS = tuple(f.name for f in dataclasses.fields(AudioConfig))
DEFAULT = AudioConfig()


def model_audio(config, n_mels: int) -> AudioConfig:
    """The `audio` field of a model config after construction: None (a model.json written before the front end
    was stored, or a config built in code) is DLE's front end with the model's mel channel count; a dict is
    completed the same way. A front end whose n_mels is not the model's n_mel_channels is refused."""
    audio = AudioConfig.of(config.audio, n_mels=n_mels)
    if audio.n_mels != n_mels:
        raise ValueError(f"audio.n_mels {audio.n_mels} differs from n_mel_channels {n_mels} (set both)")
    return audio


def frontend_of(model_or_config) -> AudioConfig:
    """The front end of a model (anything with a `config`, e.g. Tacotron2, WaveGlow, WaveGlowInference) or of a
    model config: its `audio`, or DLE's for a model kind that has none."""
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, "audio", None) or DEFAULT


def shared_frontend(*models) -> AudioConfig:
    """The front end several models share (a Tacotron 2 and the WaveGlow that vocodes its mels); a JttsError
    naming the settings that differ when they do not agree."""
    from jtts.errors import JttsError

    first, *rest = [frontend_of(m) for m in models]
    for m, audio in zip(models[1:], rest):
        diff = first.differences(audio)
        if diff:
            a, b = (type(x).__name__ for x in (models[0], m))
            raise JttsError(f"the {a} and {b} models have different audio front ends ({'; '.join(diff)}): a "
                            f"vocoder must be trained on the mels it is given")
    return first
