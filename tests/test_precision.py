"""bfloat16 / float16 compute (float32 parameters) against float32 on the same converted weights.

Bounds are in units of the compute dtype's unit roundoff u (half an ulp of 1.0: 2^-8 for bfloat16, 2^-11 for
float16), the scale of rounding one GEMM operand. Measured here: at most 2.6 u for Tacotron 2 and 1.3 u for
WaveGlow (docs/testing.md); the bounds, 32 u and 16 u, sit >= 10x above that, because bfloat16 GEMMs round
differently on CPUs with and without native bfloat16. They catch a low-precision path that is broken, not one
that lost a few bits; what stays float32 is listed in docs/precision.md.
"""
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from helpers import as_numpy, rel

U = {"bfloat16": 2.0 ** -8, "float16": 2.0 ** -11}
TACO_U, WG_U = 32, 16


def _gate_rel(a, b, bias):
    """The gate logit is w.x + c, with c calibrated so that the logits cross 0: its rounding scales with
    |w.x| + |c|, not with the logit."""
    a, b = as_numpy(a), as_numpy(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(np.abs(b - bias) + abs(bias)))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_tacotron2_low_precision(dtype, taco):
    from jtts import Tacotron2

    low = Tacotron2.from_checkpoint(taco.dir, dtype=jnp.dtype(dtype))
    mels = torch.randn(3, 80, 45, generator=torch.Generator().manual_seed(5)) - 3.0
    args = (taco.tokens.numpy(), taco.lengths.numpy(), mels.numpy(), np.array([45, 40, 22]))
    ref = taco.model(*args, prenet_dropout=0.0)
    out = low(*args, prenet_dropout=0.0)
    bias = float(taco.ref.decoder.gate_layer.linear_layer.bias.detach()[0])
    for name, a, b in zip(("mel", "mel_postnet", "gate", "alignments"), out, ref):
        assert a.dtype == jnp.float32, name  # outputs stay float32 whatever the compute dtype
        err = _gate_rel(a, b, bias) if name == "gate" else rel(a, b)
        print(f"{dtype} teacher forcing {name}: {err / U[dtype]:.2f} u")
        assert 0 < err <= TACO_U * U[dtype], (name, err)
    kw = dict(max_decoder_steps=100, early_stopping=False, prenet_dropout=0.0)
    ref_mel = taco.model.infer(taco.tokens.numpy(), taco.lengths.numpy(), **kw)[0]
    low_mel = low.infer(taco.tokens.numpy(), taco.lengths.numpy(), **kw)[0]
    err = rel(low_mel, ref_mel)
    print(f"{dtype} 100 free steps mel_postnet: {err / U[dtype]:.2f} u")
    assert err <= TACO_U * U[dtype]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_waveglow_low_precision(dtype, wg):
    from jtts import WaveGlow

    low = WaveGlow.from_checkpoint(wg.dir, dtype=jnp.dtype(dtype))
    z = np.random.default_rng(0).standard_normal((2, 8, wg.mel.shape[2] * 32)).astype(np.float32)
    ref = wg.model.infer(wg.mel.numpy(), sigma=0.9, z=z)
    out = low.infer(wg.mel.numpy(), sigma=0.9, z=z)
    assert out.dtype == jnp.float32
    err = rel(out, ref)
    print(f"{dtype} WaveGlow audio: {err / U[dtype]:.2f} u")
    assert 0 < err <= WG_U * U[dtype], err
