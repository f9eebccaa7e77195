"""Random weights with every computational path live, and writers for DLE-format checkpoint files.

"Live" means no part of a model is invisible in its outputs: BatchNorm statistics are not the
identity, WaveGlow's zero-initialised `end` convolutions get small random values, the 1x1 invertible
convolutions have log|det| != 0, and Tacotron 2's stop gate is calibrated to fire at a different step
for each utterance of a test batch. All draws come from a torch.Generator seeded by the caller.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .tacotron2_torch import Tacotron2
from .waveglow_torch import WaveGlow, WNConv1d


def _uniform(g, shape, bound):
    return (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * bound


def _normal(g, shape, std, mean=0.0):
    return torch.randn(shape, generator=g, dtype=torch.float64) * std + mean


def _fill(param, values):
    with torch.no_grad():
        param.copy_(values.to(param.dtype))


def _xavier(g, w, gain=1.0):
    fan_out, fan_in = w.shape[0], w[0].numel()
    rf = w[0, 0].numel() if w.dim() > 2 else 1  # conv kernels count in both fans
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out * rf))
    _fill(w, _uniform(g, w.shape, bound))


def _live_batchnorm(g, bn: nn.BatchNorm1d):
    c = bn.num_features
    _fill(bn.weight, _uniform(g, (c,), 0.5) + 1.0)      # U(0.5, 1.5)
    _fill(bn.bias, _normal(g, (c,), 0.1))
    _fill(bn.running_mean, _normal(g, (c,), 0.2))
    _fill(bn.running_var, _uniform(g, (c,), 0.75) + 1.25)  # U(0.5, 2)
    bn.num_batches_tracked.fill_(int(torch.randint(1, 100_000, (1,), generator=g)))


def live_tacotron2(config: dict, seed: int) -> Tacotron2:
    """A Tacotron2 with deterministic random weights (same seed -> same weights), in eval mode."""
    g = torch.Generator().manual_seed(seed)
    model = Tacotron2(**config)
    # Modules are visited in a fixed (registration) order: the draws depend only on config and seed.
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm1d):
            _live_batchnorm(g, module)
        elif isinstance(module, nn.Embedding):
            _fill(module.weight, _normal(g, module.weight.shape, 1.0))
        elif isinstance(module, (nn.Linear, nn.Conv1d)):
            gain = 5.0 / 3 if module.weight.shape[0] > 1 else 1.0  # tanh gain; the gate gets 1
            if name == "decoder.attention_layer.v.linear_layer":
                gain = 2.0  # sharper (less uniform) attention, so the location features matter
            _xavier(g, module.weight, gain)
            if module.bias is not None:
                _fill(module.bias, _normal(g, module.bias.shape, 0.1))
        elif isinstance(module, (nn.LSTM, nn.LSTMCell)):
            # Twice torch's default range: at 1x the decoder settles to a fixed point within a few
            # steps; at 3x float32 rounding starts to grow along decoding. 2x moves, yet contracts.
            bound = 2.0 / math.sqrt(module.hidden_size)
            for p in module.parameters(recurse=False):
                _fill(p, _uniform(g, p.shape, bound))
    return model.eval()


def calibrate_gate(model: Tacotron2, tokens, lengths, n_steps: int, min_step: int = 1,
                   margin: float = 1e-3, **infer_kwargs) -> list[int]:
    """Set the gate bias (and if need be the gate weights) so each utterance stops at its own step.

    The gate logit never feeds back into decoding, so one run without early stopping (recording the
    gate layer's inputs x[b, t]) gives the logits w.x[b, t] + c for any gate weights w and bias c;
    utterance b stops at the first t with a positive logit. A choice is accepted when every stop
    step is >= min_step and < n_steps, the steps are distinct, and every |logit| up to the stop is
    >= margin (so frameworks differing by float rounding stop at the same step); among accepted
    biases the one with the largest clearance is used. The random gate weights are tried first
    (then negated / doubled); failing those, a direction fitted by ridge regression to one ramp per
    utterance. Returns the stop steps, which equal the resulting mel_lengths. infer_kwargs (e.g.
    isolate=True) are passed to every `model.infer` call.
    """
    gate = model.decoder.gate_layer.linear_layer
    feats = []
    hook = gate.register_forward_hook(lambda mod, inp, out: feats.append(inp[0].detach()))
    try:
        with torch.no_grad():
            model.infer(tokens, lengths, max_decoder_steps=n_steps, early_stopping=False, **infer_kwargs)
    finally:
        hook.remove()
    x = torch.stack(feats, dim=1).double()  # (B, n_steps, D)
    w0 = gate.weight.detach()[0].double()
    for w in _gate_directions(x, w0, min_step):
        found = _best_shift(x @ w, min_step, margin)
        if found is None:
            continue
        c, steps = found
        with torch.no_grad():
            gate.weight.copy_(w[None].to(gate.weight.dtype))
            gate.bias.fill_(c)
            check = model.infer(tokens, lengths, max_decoder_steps=n_steps, early_stopping=True, **infer_kwargs)
        if check["mel_lengths"].tolist() != steps:  # cannot happen unless rounding exceeds margin
            raise RuntimeError(f"calibrate_gate: expected stops {steps}, got {check['mel_lengths'].tolist()}")
        return steps
    raise RuntimeError(
        f"calibrate_gate: no gate gives distinct stop steps in [{min_step}, {n_steps}) with margin "
        f"{margin} for this batch; use a larger n_steps, a smaller min_step or another seed")


def _gate_directions(x, w0, min_step):
    """Candidate gate weight vectors, in a fixed order."""
    yield from (w0, -w0, 2 * w0, -2 * w0)
    B, T, D = x.shape
    # Ramps crossing zero at evenly spread steps, fitted on centred features.
    stops = [min_step + (b + 1) * (T - 1 - min_step) // (B + 1) for b in range(B)]
    t = torch.arange(T, dtype=torch.float64)
    y = torch.stack([(t - s + 0.5) / T for s in stops]).reshape(-1)
    xf = x.reshape(-1, D)
    xc = xf - xf.mean(0)
    gram = xc.T @ xc
    for rel_ridge in (1e-4, 1e-2, 1e-6):
        lam = rel_ridge * float(gram.diagonal().mean()) + 1e-12
        w = torch.linalg.solve(gram + lam * torch.eye(D, dtype=x.dtype), xc.T @ y)
        yield w / (xf @ w).std()  # unit-spread logits, so `margin` means the same for every candidate


def _best_shift(h, min_step, margin):
    """Search the bias c for logits h + c; returns (c, crossing steps) with the largest clearance."""
    B, T = h.shape
    # The crossing pattern only changes when -c passes a value of h, so midpoints between the
    # sorted distinct values cover every case.
    vals = torch.unique(h.flatten()).tolist()
    best = None
    for lo, hi in zip(vals[:-1], vals[1:]):
        theta = 0.5 * (lo + hi)  # fire when h > theta, i.e. c = -theta
        above = h > theta
        if not bool(above.any(dim=1).all()):
            continue
        steps = above.int().argmax(dim=1).tolist()
        if min(steps) < min_step or len(set(steps)) != B:
            continue
        clearance = min(float((h[b, : steps[b] + 1] - theta).abs().min()) for b in range(B))
        if clearance >= margin and (best is None or clearance > best[0]):
            best = (clearance, -theta, steps)
    return None if best is None else (best[1], best[2])


def live_waveglow(config: dict, seed: int, weight_norm_style: str = "old") -> WaveGlow:
    """A WaveGlow with deterministic random weights and every path live, in eval mode."""
    g = torch.Generator().manual_seed(seed)
    model = WaveGlow(**config, weight_norm_style=weight_norm_style)
    up = model.upsample
    _fill(up.weight, _uniform(g, up.weight.shape, 1.0 / math.sqrt(up.weight.shape[1] * 4)))
    _fill(up.bias, _normal(g, up.bias.shape, 0.05))
    n_ch = config["WN_config"]["n_channels"]
    for wn, inv in zip(model.WN, model.convinv):
        for conv in [wn.start, *wn.in_layers, *wn.cond_layers, *wn.res_skip_layers]:
            v, gw = _wn_params(conv)
            _fill(v, _normal(g, v.shape, 1.0))
            # Effective rows have norm g ~ U(0.5, 1.5): unit-scale activations through the stack.
            _fill(gw, _uniform(g, gw.shape, 0.5) + 1.0)
            _fill(conv.bias, _normal(g, conv.bias.shape, 0.1))
        # Small enough that exp(log_s) stays near 1 over 12 flows, large enough to move the audio.
        _fill(wn.end.weight, _normal(g, wn.end.weight.shape, 0.15 / math.sqrt(n_ch)))
        _fill(wn.end.bias, _normal(g, wn.end.bias.shape, 0.05))
        c = inv.conv.weight.shape[0]
        q = torch.linalg.qr(_normal(g, (c, c), 1.0))[0]
        w = q @ (torch.eye(c, dtype=torch.float64) + _normal(g, (c, c), 0.1))
        if torch.det(w) < 0:
            w[:, 0] = -w[:, 0]
        _fill(inv.conv.weight, w[:, :, None])
    return model.eval()


def _wn_params(conv):
    """(v, g) of a weight-normed conv, either style."""
    if isinstance(conv, WNConv1d):
        return conv.weight_v, conv.weight_g
    p = conv.parametrizations.weight
    return p.original1, p.original0


def _adam_state(model, lr, weight_decay):
    """A real Adam state_dict after one step, taken on a copy so the model itself is unchanged."""
    twin = copy.deepcopy(model).float().train()
    opt = torch.optim.Adam(twin.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(0)
    for p in twin.parameters():
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype) * 1e-3
    opt.step()
    return opt.state_dict()


def _state_dict(model, module_prefix=False, dtype=None):
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach().clone()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[("module." if module_prefix else "") + k] = v
    return out


def save_dle_checkpoint(path, model, config, *, module_prefix=True, with_optimizer=True, dtype=None,
                        epoch=1500):
    """Write a DLE training checkpoint (the layout train.py saves), loadable with weights_only=True.

    As in DLE, the RNG entries are tensors stacked over ranks (one rank here); the scaler dict is an
    enabled GradScaler's. dtype (e.g. torch.float16) converts the floating tensors of the state_dict.
    """
    is_taco = isinstance(model, Tacotron2)
    ckpt = {
        "epoch": epoch,
        "cuda_rng_state_all": torch.zeros((1, 16), dtype=torch.uint8),
        "random_rng_states_all": torch.stack([torch.get_rng_state()]),
        "config": copy.deepcopy(dict(config)),
        "state_dict": _state_dict(model, module_prefix, dtype),
        "optimizer": (_adam_state(model, 1e-3 if is_taco else 1e-4, 1e-6)
                      if with_optimizer else {"state": {}, "param_groups": []}),
        "scaler": {"scale": 32768.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                   "growth_interval": 2000, "_growth_tracker": 117},
    }
    torch.save(ckpt, path)
    return ckpt


def save_hub_checkpoint(path, model, config):
    """The torch-hub layout: {'state_dict', 'config'}."""
    torch.save({"state_dict": _state_dict(model), "config": copy.deepcopy(dict(config))}, path)


def save_state_dict(path, model):
    """A bare state_dict."""
    torch.save(_state_dict(model), path)
