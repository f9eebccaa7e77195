"""Training parity with the PyTorch reference (DLE's semantics), small configs, float32, dropout off.

Same weights (the reference's state_dict through jtts.convert's import table) and the same padded batch:
the loss, every parameter's gradient, and the parameters and BatchNorm running statistics after one DLE
optimizer step (clip_grad_norm_(1.0) + torch.optim.Adam(weight_decay=1e-6)) against the Optax chain.
"""
from __future__ import annotations

from types import SimpleNamespace

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from helpers import rel, step_error, tensor_errors, text_batch, waveglow_nll_terms
from reference.tacotron2_torch import tacotron2_small_config
from reference.waveglow_torch import waveglow_small_config
from reference.weights import live_tacotron2, live_waveglow

# LOSS_BOUND: relative to the magnitude of the loss's terms (see _torch_step). GRAD_BOUND: relative to each
# parameter's gradient norm, and Adam's input to the norm of its terms. NORM_BOUND: the clip's global norm.
# UPDATE_BOUND (of lr) + PARAM_ULPS (float32 ulps of |parameter| + lr): the parameters after one step, beyond
# what Adam makes of the two Adam inputs (helpers.step_error). STATS_BOUND: relative to each BatchNorm statistic.
# What each measures here: docs/testing.md.
LOSS_BOUND, GRAD_BOUND, NORM_BOUND, UPDATE_BOUND, PARAM_ULPS, STATS_BOUND = 1e-6, 1e-4, 1e-3, 1e-4, 16, 1e-5


def _to_jtts(ref, kind):
    """Reference weights -> jtts model through the converter's import path (no files)."""
    from jtts.checkpoint import assign
    from jtts.convert import import_state_dict
    from jtts.tacotron2 import Tacotron2
    from jtts.waveglow import WaveGlow

    # copies: numpy views of torch tensors would alias the jtts arrays, and the torch step mutates in place
    state = {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}
    found, cfg, params, _ = import_state_dict(state, ref.config, kind=kind)
    cls = Tacotron2 if kind == "tacotron2" else WaveGlow
    model = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0)))
    assign(model, params)
    return model, cfg


def _table(kind, cfg):
    from jtts.convert import tacotron2, waveglow

    return (tacotron2 if kind == "tacotron2" else waveglow).table(cfg)


def tacotron2_batch(seed=0):
    tokens, lengths = text_batch([13, 9, 6], seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    mel_lengths = torch.tensor([18, 14, 9])
    mels = torch.randn(3, 80, 18, generator=g) * 0.7 - 3.0
    gate = torch.zeros(3, 18)
    for b, n in enumerate(mel_lengths.tolist()):
        mels[b, :, n:] = 0.0  # DLE's collate zero-pads mels
        gate[b, n - 1:] = 1.0  # and marks the last real frame and the padding as "stop"
    return dict(tokens=tokens, token_lengths=lengths, mels=mels, mel_lengths=mel_lengths, gate=gate)


def _np(batch):
    return {k: v.numpy().astype(np.int32 if v.dtype == torch.long else np.float32) for k, v in batch.items()}


def _torch_step(ref, loss_fn, lr, weight_decay, clip):
    """DLE's iteration: loss.backward(), clip_grad_norm_, Adam step. loss_fn -> (loss, magnitude of its terms).

    -> namespace: loss, terms, grads, norm (the global gradient norm the clip used), state_dicts before and after,
    adam_in (Adam's input per parameter: clipped gradient + weight_decay * param)."""
    ref.train()
    ref.zero_grad()
    before = {k: v.detach().clone().numpy() for k, v in ref.state_dict().items()}
    loss, terms = loss_fn()
    loss.backward()
    grads = {k: p.grad.detach().clone().numpy() for k, p in ref.named_parameters()}
    norm = float(torch.nn.utils.clip_grad_norm_(ref.parameters(), clip))
    adam_in = {k: (p.grad + weight_decay * p).detach().numpy().copy() for k, p in ref.named_parameters()}
    torch.optim.Adam(ref.parameters(), lr=lr, weight_decay=weight_decay).step()
    after = {k: v.detach().clone().numpy() for k, v in ref.state_dict().items()}
    return SimpleNamespace(loss=float(loss.detach()), terms=float(terms), grads=grads, norm=norm, before=before,
                           after=after, adam_in=adam_in)


def _check(kind, trainer, state, batch_np, ref, key, lr, clip, weight_decay=1e-6):
    """ref: _torch_step's result. Asserts every bound -> the measured errors, each against its bound's scale."""
    import optax

    from jtts.train.optim import flat_params_to_torch

    table = _table(kind, trainer.config)
    loss, _, grads = trainer.loss_and_grads(state, batch_np, key)
    # float32 rounding of the loss scales with its terms, not with the loss (a small difference for WaveGlow)
    err = dict(loss=abs(float(loss) - ref.loss) / ref.terms)
    assert err["loss"] <= LOSS_BOUND, (float(loss), ref.loss, ref.terms)
    ours = flat_params_to_torch(jax.device_get(grads), table)
    assert set(ours) == set(ref.grads)
    err["grads"] = _worst(tensor_errors(ours, ref.grads), GRAD_BOUND, "gradient")

    new_state, metrics = trainer.train_step(state, batch_np, key)
    assert bool(metrics["finite"])
    # both are float32 sums of squares over every gradient element (8M for this WaveGlow)
    norm = float(metrics["grad_norm"])
    err["norm"] = abs(norm - ref.norm) / ref.norm
    assert err["norm"] <= NORM_BOUND, (norm, ref.norm)
    # Adam's input, read off its first moment (mu = (1 - b1) h), against our clipped gradient plus decay
    h = {k: v / 0.1 for k, v in flat_params_to_torch(jax.device_get(optax.tree_utils.tree_get(
        new_state["opt"], "mu")), table).items()}
    assert set(h) == set(ref.adam_in)
    # where clipped gradient and decay nearly cancel (WaveGlow's weight_v can), rounding scales with the terms
    coef = min(1.0, clip / (norm + 1e-6))
    expected = {k: coef * ours[k] + weight_decay * ref.before[k] for k in h}
    terms = {k: np.abs(coef * ours[k]) + np.abs(weight_decay * ref.before[k]) for k in h}
    err["adam_in"] = _worst(tensor_errors(h, expected, terms), GRAD_BOUND, "Adam input")
    after = flat_params_to_torch(jax.device_get(new_state["params"]), table)
    # beyond what Adam makes of the two inputs; optax's float32 bias correction 1 - 0.999 alone is 6.4e-6 of lr
    err["params"] = _worst({k: step_error(after[k], ref.after[k], h[k], ref.adam_in[k], ref.before[k], lr,
                                          UPDATE_BOUND, PARAM_ULPS) for k in h}, 1.0, "parameter after a step")
    # BatchNorm running statistics: 0.9 of the old (live, non-zero) statistics + 0.1 of the batch's
    stats = flat_params_to_torch(jax.device_get(new_state["stats"]), table)
    err["stats"] = _worst({k: rel(v, ref.after[k]) for k, v in stats.items()}, STATS_BOUND, "statistic")
    return err


def _worst(errors, bound, what):
    """Asserts every value <= bound -> (name, value) of the largest ((None, 0) for none)."""
    name = max(errors, key=errors.get, default=None)
    value = errors[name] if name is not None else 0.0
    assert value <= bound, f"{what} {name}: {value:.2e} > {bound:.0e}"
    return name, value


def _report(kind, err):
    print(f"{kind}: loss {err['loss']:.1e} of its terms; gradient {err['grads'][1]:.1e} ({err['grads'][0]}); "
          f"clip norm {err['norm']:.1e}; Adam input {err['adam_in'][1]:.1e} ({err['adam_in'][0]}); parameters "
          f"after a step {err['params'][1]:.3f} of the allowance ({err['params'][0]}); BatchNorm statistics "
          f"{err['stats'][1]:.1e}")


@pytest.fixture
def no_torch_dropout(monkeypatch):
    """The reference's dropouts are F.dropout calls with fixed rates: make them the identity."""
    monkeypatch.setattr(torch.nn.functional, "dropout", lambda x, p=0.5, training=True, inplace=False: x)


def test_tacotron2_loss_grads_and_step_match_torch(no_torch_dropout):
    from jtts.train.optim import make_optimizer
    from jtts.train.step import Trainer

    cfg = tacotron2_small_config()
    ref = live_tacotron2(cfg, seed=11)
    model, _ = _to_jtts(ref, "tacotron2")
    batch = tacotron2_batch()

    def loss_fn():
        out = ref(batch["tokens"], batch["token_lengths"], batch["mels"], batch["mel_lengths"], prenet_dropout=0.0)
        loss = ref.loss(out, batch["mels"], batch["gate"])
        return loss, float(loss.detach())  # MSE + MSE + BCE: non-negative terms, the loss is their magnitude

    ref_step = _torch_step(ref, loss_fn, lr=1e-3, weight_decay=1e-6, clip=1.0)
    tx, schedule = make_optimizer("tacotron2", lr=1e-3, weight_decay=1e-6, grad_clip=1.0)
    trainer = Trainer(model, tx, schedule, dropout=False, prenet_dropout=0.0)
    _report("tacotron2", _check("tacotron2", trainer, trainer.init_state(), _np(batch), ref_step, jax.random.key(0),
                                 lr=1e-3, clip=1.0))


def test_waveglow_loss_grads_and_step_match_torch():
    from jtts.train.optim import make_optimizer
    from jtts.train.step import Trainer

    cfg = waveglow_small_config(n_flows=8)  # one early output; 8 flows halve the compile and torch time
    ref = live_waveglow(cfg, seed=12)
    model, _ = _to_jtts(ref, "waveglow")
    g = torch.Generator().manual_seed(13)
    mel = torch.randn(2, 80, 6, generator=g) * 0.5 - 4.0
    audio = torch.randn(2, 1024, generator=g) * 0.3

    def loss_fn():
        out = ref(mel, audio)
        return ref.loss(*out), waveglow_nll_terms(*out)

    ref_step = _torch_step(ref, loss_fn, lr=1e-4, weight_decay=1e-6, clip=1.0)
    # the clip of 1.0 binds here (DLE's WaveGlow runs use 65504): the clipped path is the one under test
    tx, schedule = make_optimizer("waveglow", lr=1e-4, weight_decay=1e-6, grad_clip=1.0)
    trainer = Trainer(model, tx, schedule)
    _report("waveglow", _check("waveglow", trainer, trainer.init_state(), dict(mels=mel.numpy(), audio=audio.numpy()),
                                ref_step, jax.random.key(0), lr=1e-4, clip=1.0))


@pytest.mark.parametrize("clip", [1.0, 1e9])
def test_optax_chain_equals_torch_adam_with_clipping(clip):
    """Identical gradients, three steps: clip_grad_norm_ + Adam(weight_decay) vs the Optax chain, to 1e-6."""
    import optax

    from jtts.train.optim import dle_adam

    g = torch.Generator().manual_seed(3)
    shapes = {"a": (7, 5), "b": (11,), "c": (3, 4, 2)}
    params = {k: torch.randn(s, generator=g, requires_grad=True) for k, s in shapes.items()}
    grads = [{k: torch.randn(s, generator=g) * 0.5 for k, s in shapes.items()} for _ in range(3)]
    opt = torch.optim.Adam(params.values(), lr=1e-3, weight_decay=1e-6)
    ours = {k: jax.numpy.asarray(p.detach().numpy().copy()) for k, p in params.items()}
    tx = dle_adam(1e-3, weight_decay=1e-6, grad_clip=clip)
    state = tx.init(ours)
    for step in grads:
        for k, p in params.items():
            p.grad = step[k].clone()
        torch.nn.utils.clip_grad_norm_(params.values(), clip)
        opt.step()
        updates, state = tx.update({k: jax.numpy.asarray(v.numpy()) for k, v in step.items()}, state, ours)
        ours = optax.apply_updates(ours, updates)
    # elementwise Adam in float32 on both sides; optax's float32 bias correction alone is 6.4e-6 of a step
    worst = _worst({k: rel(ours[k], p.detach().numpy()) for k, p in params.items()}, 1e-6, "parameter")
    print(f"clip {clip:g}: worst parameter rel {worst[1]:.1e} after 3 steps")


def test_load_into_torch_copies_every_tensor_and_refuses_a_partial_set():
    """The path the DLE benchmarks use to hand jtts weights to a torch model (learn_dle.py, train_curves.py)."""
    from jtts.convert import import_state_dict
    from jtts.errors import CheckpointError
    from jtts.train.optim import load_into_torch

    ref = live_tacotron2(tacotron2_small_config(), seed=3)
    _, cfg, params, _ = import_state_dict({k: v.numpy().copy() for k, v in ref.state_dict().items()}, ref.config,
                                          kind="tacotron2")
    other = live_tacotron2(tacotron2_small_config(), seed=4)
    load_into_torch(other, params, _table("tacotron2", cfg))
    want, got = ref.state_dict(), other.state_dict()
    assert set(want) == set(got)
    counted = [k for k in want if not k.endswith("num_batches_tracked")]
    assert len(counted) > 40 and any(k.endswith("running_var") for k in counted)
    assert all(torch.equal(want[k], got[k]) for k in counted)
    params.pop("embedding.embedding")
    with pytest.raises(CheckpointError, match="missing \\['embedding.weight'\\]"):
        load_into_torch(other, params, _table("tacotron2", cfg))
