"""jtts: NVIDIA's Tacotron 2 + WaveGlow text-to-speech in JAX/Flax NNX.

text -> ids (`jtts.text`) -> `Tacotron2` (encoder, decoder, postnet) -> mel -> `WaveGlow` -> audio -> `Denoiser`.
"""
from jtts.tacotron2 import Tacotron2, Tacotron2Config

__all__ = ["Tacotron2", "Tacotron2Config", "WaveGlow", "WaveGlowConfig", "Denoiser"]


def __getattr__(name):
    # WaveGlow and the denoiser load lazily so that `import jtts` stays cheap for text-only users.
    if name in ("WaveGlow", "WaveGlowConfig"):
        from jtts import waveglow

        return getattr(waveglow, name)
    if name == "Denoiser":
        from jtts.denoiser import Denoiser

        return Denoiser
    raise AttributeError(f"module 'jtts' has no attribute {name!r}")
