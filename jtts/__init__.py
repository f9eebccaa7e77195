"""jtts: NVIDIA's Tacotron 2 + WaveGlow text-to-speech in JAX/Flax NNX.

text -> ids (`jtts.text`) -> `Tacotron2` (encoder, decoder, postnet) -> mel -> `WaveGlow` -> audio -> `Denoiser`.
"""

__all__ = ["Tacotron2", "Tacotron2Config", "WaveGlow", "WaveGlowConfig", "WaveGlowInference", "Denoiser"]

_LAZY = {"Tacotron2": "jtts.tacotron2", "Tacotron2Config": "jtts.tacotron2", "WaveGlow": "jtts.waveglow",
         "WaveGlowConfig": "jtts.waveglow", "WaveGlowInference": "jtts.waveglow", "Denoiser": "jtts.denoiser"}


def __getattr__(name):
    # Models load on first use: `import jtts` (and `jtts --help`) must not pay for importing JAX.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jtts' has no attribute {name!r}")
