"""Training parity with the PyTorch reference (DLE's semantics), small configs, float32, dropout off.

Same weights (the reference's state_dict through jtts.convert's import table) and the same padded batch:
the loss, every parameter's gradient, and the parameters and BatchNorm running statistics after one DLE
optimizer step (clip_grad_norm_(1.0) + torch.optim.Adam(weight_decay=1e-6)) against the Optax chain.
"""
from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from conftest import text_batch
from reference.tacotron2_torch import tacotron2_small_config
from reference.waveglow_torch import waveglow_small_config
from reference.weights import live_tacotron2, live_waveglow

LOSS_BOUND, GRAD_BOUND, PARAM_BOUND = 1e-6, 1e-4, 1e-5
ADAM_EPS = 1e-8


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


def _norm_rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


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
    """DLE's iteration: loss.backward(), clip_grad_norm_, Adam step.

    -> (loss, grads, state_dict after, Adam's input per parameter: clipped gradient + weight_decay * param)."""
    ref.train()
    ref.zero_grad()
    loss = loss_fn()
    loss.backward()
    grads = {k: p.grad.detach().clone().numpy() for k, p in ref.named_parameters()}
    torch.nn.utils.clip_grad_norm_(ref.parameters(), clip)
    adam_in = {k: (p.grad + weight_decay * p).detach().numpy().copy() for k, p in ref.named_parameters()}
    torch.optim.Adam(ref.parameters(), lr=lr, weight_decay=weight_decay).step()
    after = {k: v.detach().clone().numpy() for k, v in ref.state_dict().items()}
    return float(loss.detach()), grads, after, adam_in


def _check(kind, trainer, state, batch_np, ref_loss, ref_grads, ref_after, adam_in, key, lr):
    from jtts.train.optim import flat_params_to_torch

    table = _table(kind, trainer.config)
    loss, _, grads = trainer.loss_and_grads(state, batch_np, key)
    assert abs(float(loss) - ref_loss) <= LOSS_BOUND * abs(ref_loss), (float(loss), ref_loss)
    ours = flat_params_to_torch(jax.device_get(grads), table)
    assert set(ours) == set(ref_grads)
    # A conv bias feeding training-mode BatchNorm has a gradient that is 0 in exact arithmetic (the batch mean
    # absorbs it): both frameworks give rounding noise there, so such parameters are held to the global scale.
    total = np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in ref_grads.values()))
    null = {k for k, g in ref_grads.items() if np.linalg.norm(g) <= 1e-6 * total}
    errs = {k: float(np.linalg.norm(ours[k] - ref_grads[k]) / total) if k in null else _norm_rel(ours[k], ref_grads[k])
            for k in ref_grads}
    worst = max(errs, key=errs.get)
    assert errs[worst] <= GRAD_BOUND, f"gradient of {worst}: rel {errs[worst]:.2e}"

    new_state, metrics = trainer.train_step(state, batch_np, key)
    assert bool(metrics["finite"])
    after = flat_params_to_torch(jax.device_get(new_state["params"]), table)
    stats = {k.replace(".", "/"): v for k, v in jax.device_get(new_state["stats"]).items()}
    after.update(flat_params_to_torch(stats, table, key_sep="/"))
    # Adam's first step is lr * h / (|h| + eps) for its input h (clipped gradient + decay): where |h| is not well
    # above eps (a null gradient, or decay cancelling the gradient) gradient rounding decides the step. There
    # the two only have to agree to lr (< 1% of the elements); elsewhere to PARAM_BOUND. The chain itself is
    # checked exactly, on identical gradients, in test_optax_chain_equals_torch_adam_with_clipping.
    perrs, n_ill, n_all = {}, 0, 0
    for k in after:
        ill = np.abs(adam_in[k]) < 10 * ADAM_EPS if k in adam_in else np.zeros(after[k].shape, bool)
        if k in null:
            ill[...] = True
        else:
            n_ill, n_all = n_ill + int(ill.sum()), n_all + ill.size
        assert np.max(np.abs(after[k] - ref_after[k]), initial=0.0, where=ill) <= 2.0 * lr, k
        if not ill.all():
            perrs[k] = _norm_rel(np.where(ill, 0.0, after[k]), np.where(ill, 0.0, ref_after[k]))
    assert n_ill <= 1e-2 * n_all, f"{n_ill} of {n_all} elements have Adam inputs below 10 eps"
    worst_p = max(perrs, key=perrs.get)
    assert perrs[worst_p] <= PARAM_BOUND, f"after one step, {worst_p}: rel {perrs[worst_p]:.2e}"
    return errs, perrs


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
        return ref.loss(out, batch["mels"], batch["gate"])

    ref_loss, ref_grads, ref_after, adam_in = _torch_step(ref, loss_fn, lr=1e-3, weight_decay=1e-6, clip=1.0)
    tx, schedule = make_optimizer("tacotron2", lr=1e-3, weight_decay=1e-6, grad_clip=1.0)
    trainer = Trainer(model, tx, schedule, dropout=False, prenet_dropout=0.0)
    errs, perrs = _check("tacotron2", trainer, trainer.init_state(), _np(batch), ref_loss, ref_grads, ref_after,
                         adam_in, jax.random.key(0), lr=1e-3)
    print(f"tacotron2: worst gradient rel {max(errs.values()):.1e}, worst parameter after a step {max(perrs.values()):.1e}")


def test_waveglow_loss_grads_and_step_match_torch():
    from jtts.train.optim import make_optimizer
    from jtts.train.step import Trainer

    cfg = waveglow_small_config(n_flows=8)  # one early output; 8 flows halve the compile and torch time
    ref = live_waveglow(cfg, seed=12)
    model, _ = _to_jtts(ref, "waveglow")
    g = torch.Generator().manual_seed(13)
    mel = torch.randn(2, 80, 6, generator=g) * 0.5 - 4.0
    audio = torch.randn(2, 1024, generator=g) * 0.3
    ref_loss, ref_grads, ref_after, adam_in = _torch_step(ref, lambda: ref.loss(*ref(mel, audio)), lr=1e-4,
                                                 weight_decay=1e-6, clip=1.0)
    # the clip of 1.0 binds here (DLE's WaveGlow runs use 65504): the clipped path is the one under test
    tx, schedule = make_optimizer("waveglow", lr=1e-4, weight_decay=1e-6, grad_clip=1.0)
    trainer = Trainer(model, tx, schedule)
    errs, perrs = _check("waveglow", trainer, trainer.init_state(), dict(mels=mel.numpy(), audio=audio.numpy()),
                         ref_loss, ref_grads, ref_after, adam_in, jax.random.key(0), lr=1e-4)
    print(f"waveglow: worst gradient rel {max(errs.values()):.1e}, worst parameter after a step {max(perrs.values()):.1e}")


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
    for k, p in params.items():
        assert _norm_rel(ours[k], p.detach().numpy()) <= 1e-6, k
