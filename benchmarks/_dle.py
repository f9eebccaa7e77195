"""NVIDIA's own PyTorch modules, imported at run time from a DeepLearningExamples checkout the user points to.

Used by `parity.py`, `bench.py --dle` and `learn_dle.py`: nothing of DLE is part of this project.
"""
from __future__ import annotations

import sys
from pathlib import Path


def load(path: Path):
    """-> (DLE's `models` module, its `tacotron2.model` module, its WaveGlow `Denoiser` class)."""
    path = Path(path).expanduser().resolve()
    if not (path / "models.py").is_file() or not (path / "tacotron2" / "model.py").is_file():
        raise SystemExit(f"--dle {path}: not DLE's PyTorch/SpeechSynthesis/Tacotron2 directory (no models.py)")
    sys.path.insert(0, str(path))
    import models  # noqa: E402  (DLE's top-level module)
    import tacotron2.model as taco_module
    from waveglow.denoiser import Denoiser

    return models, taco_module, Denoiser


class NoDropout:
    """Stands in for torch.nn.functional inside DLE's Tacotron 2 module: dropout becomes the identity, which is
    what `prenet_dropout=0` means on our side (DLE hard-codes the prenet's p=0.5 with training=True)."""

    def __init__(self, functional):
        self._functional = functional

    def __getattr__(self, name):
        return getattr(self._functional, name)

    @staticmethod
    def dropout(x, *args, **kwargs):
        return x
