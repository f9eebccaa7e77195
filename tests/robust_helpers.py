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


def tiny_params(kind: str, config: dict, seed: int = 0, *, gate_bias: float = -10.0, end_scale: float = 0.1):
    """(abstract model, {name: float32 array}) of a tiny model of `kind` with `config`, drawn in numpy. Tacotron 2's
    gate bias -10 keeps it from ever stopping by itself (every sentence runs max_decoder_steps); WaveGlow's 1x1
    convs are rotations (invertible, well conditioned) and its WN `end` layers scaled by `end_scale`, so that the
    flows stay near unit scale: random weights otherwise make a WaveGlow whose audio is hundreds of times too
    loud and changes by whole percents when its mel changes by float rounding (full size needs 0.05)."""
    from jtts import models
    from jtts.checkpoint import flat_state

    model = models.build(kind, config, abstract=True)
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
            scale = end_scale if name.endswith("end.kernel") else 1.0
            value = rng.normal(0, scale * (int(np.prod(shape[:-1])) or 1) ** -0.5, shape)
        params[name] = np.asarray(value, np.float32)
    return model, params


def tiny(kind: str, seed: int = 0, gate_bias: float = -10.0, **config):
    """A tiny model of `kind` (TINY, edited by `config`), see `tiny_params`."""
    from jtts.checkpoint import assign

    model, params = tiny_params(kind, {**TINY[kind], **config}, seed, gate_bias=gate_bias)
    assign(model, params)
    return model


def tiny_dir(root, kind: str, config: dict, seed: int, end_scale: float = 0.1):
    """A model directory `root/kind` holding `tiny_params(kind, config, seed, end_scale=)`."""
    import dataclasses
    from pathlib import Path

    from jtts.checkpoint import save_model

    model, params = tiny_params(kind, config, seed, end_scale=end_scale)
    return save_model(Path(root) / kind, kind, dataclasses.asdict(model.config), params)
