"""Tiny Tacotron 2 / WaveGlow models with seeded random weights for the robustness tests (health, repair,
streaming, chunked vocoding), built in a second: parameters drawn in numpy and assigned to an abstract model
(initialising a model eagerly costs 5-10 s on the test machine)."""
from __future__ import annotations

import numpy as np

TINY = {"tacotron2": dict(n_symbols=148, symbols_embedding_dim=32, encoder_embedding_dim=32,
                          encoder_n_convolutions=2, attention_rnn_dim=64, decoder_rnn_dim=64, prenet_dim=32,
                          attention_dim=16, attention_location_n_filters=8, attention_location_kernel_size=7,
                          postnet_embedding_dim=32, postnet_n_convolutions=3),
        "waveglow": dict(n_flows=4, n_early_every=2, n_layers=2, n_channels=16)}


def tiny(kind: str, seed: int = 0, gate_bias: float = -10.0, **config):
    """A tiny model of `kind`. Tacotron 2's gate bias -10 keeps it from ever stopping by itself (every sentence
    runs max_decoder_steps); WaveGlow's 1x1 convs are rotations and its `end` layers small, so audio stays tame."""
    from jtts import models
    from jtts.checkpoint import assign, flat_state

    model = models.build(kind, {**TINY[kind], **config}, abstract=True)
    rng = np.random.default_rng(seed)
    params = {}
    for name, var in flat_state(model).items():
        shape, last = tuple(var.shape), name.rsplit(".", 1)[-1]
        if last in ("var", "scale", "g"):
            value = np.ones(shape)
        elif last in ("mean", "bias"):
            value = np.full(shape, gate_bias if name == "decoder.gate.bias" else 0.0)
        elif name.endswith("convinv.kernel"):
            value = np.linalg.qr(rng.standard_normal(shape))[0]
        else:
            value = rng.normal(0, (0.1 if ".end." in name else 1.0) * (int(np.prod(shape[:-1])) or 1) ** -0.5, shape)
        params[name] = np.asarray(value, np.float32)
    assign(model, params)
    return model
