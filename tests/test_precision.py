"""bfloat16 / float16 compute (float32 parameters) against float32 on the same converted weights.

The bounds are about 3x the errors measured on these weights (see docs/precision.md), so a regression that
moves a delicate part (cell state, softmax, 1x1 inverse, log-determinant) out of float32 fails them.
"""
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conftest import rel

TACO_BOUNDS = {"bfloat16": 3e-2, "float16": 5e-3}
WG_BOUNDS = {"bfloat16": 5e-2, "float16": 1e-2}


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_tacotron2_low_precision(dtype, taco):
    from jtts import Tacotron2

    low = Tacotron2.from_checkpoint(taco.dir, dtype=jnp.dtype(dtype))
    mels = torch.randn(3, 80, 45, generator=torch.Generator().manual_seed(5)) - 3.0
    args = (taco.tokens.numpy(), taco.lengths.numpy(), mels.numpy(), np.array([45, 40, 22]))
    ref = taco.model(*args, prenet_dropout=0.0)
    out = low(*args, prenet_dropout=0.0)
    for name, a, b in zip(("mel", "mel_postnet", "gate", "alignments"), out, ref):
        assert a.dtype == jnp.float32, name  # outputs stay float32 whatever the compute dtype
        err = rel(a, np.asarray(b))
        assert 0 < err <= TACO_BOUNDS[dtype], (name, err)
    kw = dict(max_decoder_steps=100, early_stopping=False, prenet_dropout=0.0)
    ref_mel = taco.model.infer(taco.tokens.numpy(), taco.lengths.numpy(), **kw)[0]
    low_mel = low.infer(taco.tokens.numpy(), taco.lengths.numpy(), **kw)[0]
    assert rel(low_mel, np.asarray(ref_mel)) <= TACO_BOUNDS[dtype]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_waveglow_low_precision(dtype, wg):
    from jtts import WaveGlow

    low = WaveGlow.from_checkpoint(wg.dir, dtype=jnp.dtype(dtype))
    z = np.random.default_rng(0).standard_normal((2, 8, wg.mel.shape[2] * 32)).astype(np.float32)
    ref = wg.model.infer(wg.mel.numpy(), sigma=0.9, z=z)
    out = low.infer(wg.mel.numpy(), sigma=0.9, z=z)
    assert out.dtype == jnp.float32
    err = rel(out, np.asarray(ref))
    assert 0 < err <= WG_BOUNDS[dtype], err
