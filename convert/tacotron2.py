"""Tacotron 2: DLE state_dict <-> jtts parameter names, and hyperparameters read off tensor shapes."""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from jtts.tacotron2 import Tacotron2Config

from .tables import CONV, LINEAR, SAME, CheckpointError, Rule

SIGNATURES = ("embedding.weight", "decoder.")  # keys (or key prefixes) only this model has


def _conv_bn(torch_prefix: str, jtts_prefix: str) -> list[Rule]:
    t, j = torch_prefix, jtts_prefix
    return [Rule(f"{t}.0.conv.weight", f"{j}.conv.kernel", CONV), Rule(f"{t}.0.conv.bias", f"{j}.conv.bias"),
            Rule(f"{t}.1.weight", f"{j}.bn.scale"), Rule(f"{t}.1.bias", f"{j}.bn.bias"),
            Rule(f"{t}.1.running_mean", f"{j}.bn.mean"), Rule(f"{t}.1.running_var", f"{j}.bn.var")]


def _lstm(t_weights: dict[str, str], jtts_prefix: str) -> list[Rule]:
    """t_weights: torch names of (weight_ih, weight_hh, bias_ih, bias_hh)."""
    j = jtts_prefix
    return [Rule(t_weights["weight_ih"], f"{j}.ih.kernel", LINEAR), Rule(t_weights["weight_hh"], f"{j}.hh.kernel", LINEAR),
            Rule(t_weights["bias_ih"], f"{j}.ih.bias"), Rule(t_weights["bias_hh"], f"{j}.hh.bias")]


def table(cfg: Tacotron2Config) -> list[Rule]:
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    att, dec = "decoder.attention_layer", "decoder"
    rules = [Rule("embedding.weight", "embedding.embedding", SAME)]
    for i in range(cfg.encoder_n_convolutions):
        rules += _conv_bn(f"encoder.convolutions.{i}", f"encoder.convs.{i}")
    rules += _lstm({n: f"encoder.lstm.{n}_l0" for n in names}, "encoder.lstm_fwd")
    rules += _lstm({n: f"encoder.lstm.{n}_l0_reverse" for n in names}, "encoder.lstm_bwd")
    rules += [Rule(f"{dec}.prenet.layers.{i}.linear_layer.weight", f"decoder.prenet.{i}.kernel", LINEAR) for i in (0, 1)]
    rules += _lstm({n: f"{dec}.attention_rnn.{n}" for n in names}, "decoder.attention_rnn")
    rules += [
        Rule(f"{att}.query_layer.linear_layer.weight", "decoder.attention.query.kernel", LINEAR),
        Rule(f"{att}.memory_layer.linear_layer.weight", "decoder.attention.memory.kernel", LINEAR),
        Rule(f"{att}.v.linear_layer.weight", "decoder.attention.v.kernel", LINEAR),
        Rule(f"{att}.location_layer.location_conv.conv.weight", "decoder.attention.location_conv.kernel", CONV),
        Rule(f"{att}.location_layer.location_dense.linear_layer.weight", "decoder.attention.location_dense.kernel",
             LINEAR),
    ]
    rules += _lstm({n: f"{dec}.decoder_rnn.{n}" for n in names}, "decoder.decoder_rnn")
    rules += [Rule(f"{dec}.linear_projection.linear_layer.weight", "decoder.projection.kernel", LINEAR),
              Rule(f"{dec}.linear_projection.linear_layer.bias", "decoder.projection.bias"),
              Rule(f"{dec}.gate_layer.linear_layer.weight", "decoder.gate.kernel", LINEAR),
              Rule(f"{dec}.gate_layer.linear_layer.bias", "decoder.gate.bias")]
    for i in range(cfg.postnet_n_convolutions):
        rules += _conv_bn(f"postnet.convolutions.{i}", f"postnet.convs.{i}")
    return rules


def is_buffer(key: str) -> bool:
    """BatchNorm step counters: integers, not weights; kept in the model's extras for export."""
    return key.endswith(".num_batches_tracked")


def _count(state: Mapping[str, Any], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.fullmatch(k))})


def infer_config(state: Mapping[str, np.ndarray], dle_config: Mapping[str, Any] | None = None,
                 source: str = "checkpoint") -> Tacotron2Config:
    """Every shape-determined hyperparameter comes from the tensors; the rest (thresholds, dropout rates,
    max steps) from the checkpoint's config when it has one, else DLE's defaults."""
    def shape(key):
        if key not in state:
            raise CheckpointError(f"{source}: missing key {key} (not a complete Tacotron 2 checkpoint)")
        return state[key].shape

    n_enc = _count(state, r"encoder\.convolutions\.(\d+)\.0\.conv\.weight")
    n_post = _count(state, r"postnet\.convolutions\.(\d+)\.0\.conv\.weight")
    enc = shape("encoder.convolutions.0.0.conv.weight")
    loc = shape("decoder.attention_layer.location_layer.location_conv.conv.weight")
    post = shape("postnet.convolutions.0.0.conv.weight")
    prenet = shape("decoder.prenet.layers.0.linear_layer.weight")
    shaped = dict(
        n_symbols=shape("embedding.weight")[0], symbols_embedding_dim=shape("embedding.weight")[1],
        encoder_n_convolutions=n_enc, encoder_embedding_dim=enc[0], encoder_kernel_size=enc[2],
        attention_rnn_dim=shape("decoder.attention_rnn.weight_hh")[1],
        attention_dim=shape("decoder.attention_layer.query_layer.linear_layer.weight")[0],
        attention_location_n_filters=loc[0], attention_location_kernel_size=loc[2],
        decoder_rnn_dim=shape("decoder.decoder_rnn.weight_hh")[1], prenet_dim=prenet[0], n_mel_channels=prenet[1],
        postnet_n_convolutions=n_post, postnet_embedding_dim=post[0], postnet_kernel_size=post[2],
    )
    shaped = {k: int(v) for k, v in shaped.items()}
    if dle_config:
        for k, v in shaped.items():
            if k in dle_config and int(dle_config[k]) != v:
                raise CheckpointError(f"{source}: config says {k}={dle_config[k]} but the weights have {k}={v}")
    rest = {k: v for k, v in (dle_config or {}).items() if k not in shaped}
    return Tacotron2Config.from_dle({**rest, **shaped})
