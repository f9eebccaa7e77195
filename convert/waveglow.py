"""WaveGlow: DLE state_dict <-> jtts parameter names, and hyperparameters read off tensor shapes.

Weight-normed convs appear here in torch's legacy spelling (`weight_g`, `weight_v`); `torch_io` rewrites the
newer `parametrizations.weight.original0/1` spelling to it before a table is used. `prepare_state_dict` also
accepts two other layouts and rewrites them into DLE's:
  * NVIDIA's original waveglow repository (github.com/NVIDIA/waveglow, glow.py): one `WN.k.cond_layer` conv
    (n_mel*n_group -> 2*C*n_layers) shared by all layers, layer i reading output channels [2C*i, 2C*(i+1));
  * a model saved after `remove_weightnorm`: plain `weight` on the weight-normed convs (g = |weight| per
    output channel, v = weight: the same effective weights).
Export always writes DLE's layout (per-layer `cond_layers.i`, weight_g/weight_v).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from jtts.waveglow import UPSAMPLE_KERNEL, WaveGlowConfig

from .tables import CONV, CONV1X1, CONV_TRANSPOSE, WN_G, CheckpointError, Rule

SIGNATURES = ("upsample.weight", "WN.")  # keys (or key prefixes) only this model has

_WN_LAYERS = re.compile(r"WN\.\d+\.(start|in_layers\.\d+|cond_layers\.\d+|cond_layer|res_skip_layers\.\d+)")


def _wn_conv(torch_prefix: str, jtts_prefix: str, layout) -> list[Rule]:
    t, j = torch_prefix, jtts_prefix
    return [Rule(f"{t}.weight_g", f"{j}.g", WN_G), Rule(f"{t}.weight_v", f"{j}.v", layout),
            Rule(f"{t}.bias", f"{j}.bias")]


def table(cfg: WaveGlowConfig) -> list[Rule]:
    rules = [Rule("upsample.weight", "upsample.kernel", CONV_TRANSPOSE), Rule("upsample.bias", "upsample.bias")]
    for k in range(cfg.n_flows):
        t, j = f"WN.{k}", f"flows.{k}.wn"
        rules.append(Rule(f"convinv.{k}.conv.weight", f"flows.{k}.convinv.kernel", CONV1X1))
        rules += _wn_conv(f"{t}.start", f"{j}.start", CONV1X1)
        for i in range(cfg.n_layers):
            rules += _wn_conv(f"{t}.in_layers.{i}", f"{j}.in_layers.{i}", CONV)
            rules += _wn_conv(f"{t}.cond_layers.{i}", f"{j}.cond_layers.{i}", CONV1X1)
            rules += _wn_conv(f"{t}.res_skip_layers.{i}", f"{j}.res_skip_layers.{i}", CONV1X1)
        rules += [Rule(f"{t}.end.weight", f"{j}.end.kernel", CONV1X1), Rule(f"{t}.end.bias", f"{j}.end.bias")]
    return rules


# -- other layouts -> DLE's -------------------------------------------------------------------------------------

def restore_weight_norm(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Plain `weight` on a weight-normed conv (a model saved after remove_weightnorm) -> weight_g, weight_v."""
    out = {}
    for key, value in state.items():
        prefix = key[: -len(".weight")] if key.endswith(".weight") else None
        if prefix is not None and _WN_LAYERS.fullmatch(prefix) and f"{prefix}.weight_v" not in state:
            w = np.asarray(value, np.float32)
            out[f"{prefix}.weight_g"] = np.sqrt(np.sum(np.square(w, dtype=np.float64), axis=(1, 2),
                                                       keepdims=True)).astype(np.float32)
            out[f"{prefix}.weight_v"] = w
        else:
            out[key] = value
    return out


def split_legacy_cond_layer(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """NVIDIA waveglow's shared `WN.k.cond_layer` -> DLE's per-layer `WN.k.cond_layers.i` (exact).

    Layer i of the shared conv's output is rows [2C*i, 2C*(i+1)) (C = n_channels, read off `WN.k.start`).
    Weight norm is per output row, so splitting the rows of g, v and the bias gives identical weights.
    """
    out = {}
    for key, value in state.items():
        m = re.fullmatch(r"(WN\.\d+)\.cond_layer\.(weight_g|weight_v|bias)", key)
        if m is None:
            out[key] = value
            continue
        wn, part = m.groups()
        start = state.get(f"{wn}.start.weight_v", state.get(f"{wn}.start.weight"))
        if start is None:
            raise CheckpointError(f"{key}: legacy cond_layer without {wn}.start (cannot tell the channel count)")
        rows = 2 * int(np.shape(start)[0])
        n = int(np.shape(value)[0])
        if n % rows:
            raise CheckpointError(f"{key}: {n} output channels is not a multiple of 2*n_channels={rows}")
        for i in range(n // rows):
            out[f"{wn}.cond_layers.{i}.{part}"] = np.ascontiguousarray(value[i * rows:(i + 1) * rows])
    return out


def prepare_state_dict(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Any supported WaveGlow layout -> DLE's (called by `jtts.convert` before `infer_config` and `table`)."""
    return split_legacy_cond_layer(restore_weight_norm(state))


# -- hyperparameters --------------------------------------------------------------------------------------------

def _count(state: Mapping[str, Any], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.fullmatch(k))})


def infer_config(state: Mapping[str, np.ndarray], dle_config: Mapping[str, Any] | None = None,
                 source: str = "checkpoint") -> WaveGlowConfig:
    """Every hyperparameter from tensor shapes (DLE-layout state_dict); checked against `dle_config` if given."""
    def shape(key):
        if key not in state:
            raise CheckpointError(f"{source}: missing key {key} (not a complete WaveGlow checkpoint)")
        return tuple(np.shape(state[key]))

    up = shape("upsample.weight")
    if len(up) != 3 or up[0] != up[1] or up[2] != UPSAMPLE_KERNEL:
        raise CheckpointError(f"{source}: upsample.weight has shape {up}, expected (n_mel, n_mel, {UPSAMPLE_KERNEL})")
    n_flows = _count(state, r"convinv\.(\d+)\.conv\.weight")
    if n_flows == 0:
        raise CheckpointError(f"{source}: no convinv.N.conv.weight keys (not a WaveGlow checkpoint)")
    sizes = [shape(f"convinv.{k}.conv.weight")[0] for k in range(n_flows)]
    drops = [k for k in range(1, n_flows) if sizes[k] != sizes[k - 1]]
    if drops:
        every, size = drops[0], sizes[drops[0] - 1] - sizes[drops[0]]
    else:  # no early output within n_flows: the values cannot be seen; take the config's, else the defaults
        flat = _flat(dle_config or {})
        every = int(flat.get("n_early_every", max(n_flows, WaveGlowConfig.n_early_every)))
        size = int(flat.get("n_early_size", WaveGlowConfig.n_early_size))
    start = shape("WN.0.start.weight_v")
    in0 = shape("WN.0.in_layers.0.weight_v")
    shaped = dict(n_mel_channels=up[0], n_flows=n_flows, n_group=sizes[0], n_early_every=every,
                  n_early_size=size, n_layers=_count(state, r"WN\.0\.in_layers\.(\d+)\.weight_v"),
                  n_channels=start[0], kernel_size=in0[2])
    try:
        cfg = WaveGlowConfig(**{k: int(v) for k, v in shaped.items()})
    except ValueError as e:
        raise CheckpointError(f"{source}: weights describe no valid WaveGlow ({e})") from None
    if list(cfg.remaining_channels) != sizes:
        raise CheckpointError(f"{source}: invertible conv sizes {sizes} follow no early-output schedule")
    if dle_config:
        check_against_dle_config(cfg, dle_config, source)
    return cfg


def _flat(dle_config: Mapping[str, Any]) -> dict[str, Any]:
    return {**{k: v for k, v in dle_config.items() if k != "WN_config"}, **dict(dle_config.get("WN_config") or {})}


def check_against_dle_config(config: WaveGlowConfig, dle_config: Mapping[str, Any], source: str) -> None:
    """Raises CheckpointError naming the first field where a checkpoint's config contradicts its weights."""
    mine = _flat(config.to_dle())
    for key, value in _flat(dle_config).items():
        if key not in mine:
            continue
        try:
            same = int(value) == mine[key]
        except (TypeError, ValueError):
            same = False
        if not same:
            raise CheckpointError(f"{source}: config says {key}={value!r} but the weights have {key}={mine[key]}")

