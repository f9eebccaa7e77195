"""DLE's optimiser as an Optax chain, and import of an NGC checkpoint's torch Adam state.

DLE steps `torch.optim.Adam(lr, weight_decay=wd)` after `clip_grad_norm_(params, clip)`. torch's Adam adds
the weight decay to the gradient (L2, not AdamW's decoupled decay), so the equivalent chain is

    clip_by_global_norm_torch(clip) -> add_decayed_weights(wd) -> scale_by_adam(0.9, 0.999, eps=1e-8) -> -lr

Learning rate: DLE anneals Tacotron 2's rate at epoch boundaries (`--anneal-steps 500 1000 1500`, factor 0.1;
factor 0.3 alternates x0.3 and x0.1). Here the boundaries are counted in optimizer updates (= steps that were
not skipped by fp16 loss scaling, like torch's GradScaler, which skips `optimizer.step()`); `epochs_to_steps`
turns DLE's epoch boundaries into update counts given the batches per epoch.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jtts.errors import CheckpointError

def clip_by_global_norm_torch(max_norm: float) -> optax.GradientTransformation:
    """torch.nn.utils.clip_grad_norm_: scale by min(1, max_norm / (norm + 1e-6)); the 1e-6 is torch's."""

    def update(updates, state, params=None):
        del params
        norm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(updates)))
        coef = jnp.minimum(max_norm / (norm + 1e-6), 1.0)
        return jax.tree.map(lambda g: (g * coef).astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def dle_lr_schedule(lr: float, boundaries: Sequence[int] = (), factor: float = 0.1) -> optax.Schedule:
    """DLE's step annealing: lr * factor^p after p boundaries were passed (factor 0.3: 0.3, 0.1, 0.03, ...).

    `boundaries` are update counts: the update with index c (0-based) uses p = #{b : c >= b}.
    """
    bounds = jnp.asarray(sorted(int(b) for b in boundaries) or [np.iinfo(np.int32).max], jnp.int32)

    def schedule(count):
        p = jnp.sum(count >= bounds).astype(jnp.float32) if boundaries else jnp.float32(0)
        if factor == 0.3:  # DLE's special case: decades, with a x0.3 stop between them
            return lr * (0.1 ** jnp.floor(p / 2)) * jnp.where(jnp.mod(p, 2) == 1, 0.3, 1.0)
        return lr * factor ** p

    return schedule


def epochs_to_steps(epochs: Sequence[int], steps_per_epoch: int) -> list[int]:
    """DLE's epoch boundaries -> update counts (epoch e starts at update e * steps_per_epoch)."""
    return [int(e) * int(steps_per_epoch) for e in epochs]


def dle_adam(lr: float | optax.Schedule, *, weight_decay: float = 1e-6, grad_clip: float | None = 1.0,
             b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """torch.optim.Adam(lr, betas, eps, weight_decay) preceded by clip_grad_norm_(grad_clip)."""
    return optax.chain(
        clip_by_global_norm_torch(grad_clip) if grad_clip else optax.identity(),
        optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity(),
        optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
        optax.scale_by_learning_rate(lr),
    )


def make_optimizer(defaults: str | Mapping[str, Any], *, lr: float | None = None, weight_decay: float | None = None,
                   grad_clip: float | None = None, anneal_steps: Sequence[int] = (),
                   anneal_factor: float | None = None) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """DLE's optimiser, any setting overridable -> (transformation, lr schedule). `defaults`: a model kind
    (its training task's `optimizer`, DLE's training-script settings) or such a dict."""
    if isinstance(defaults, str):
        from .tasks import task_for

        defaults = task_for(defaults).optimizer
    d = defaults
    schedule = dle_lr_schedule(d["lr"] if lr is None else lr, anneal_steps,
                               d["anneal_factor"] if anneal_factor is None else anneal_factor)
    tx = dle_adam(schedule, weight_decay=d["weight_decay"] if weight_decay is None else weight_decay,
                  grad_clip=d["grad_clip"] if grad_clip is None else grad_clip)
    return tx, schedule


def learning_rate(opt_state, schedule: optax.Schedule):
    """The rate the next update will use (read off the schedule's count inside the chain's state)."""
    for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState)):
        if isinstance(s, optax.ScaleByScheduleState):
            return schedule(s.count)
    return schedule(0)


# -- torch Adam state -> Optax ----------------------------------------------------------------------------------

_BUFFER_SUFFIXES = (".running_mean", ".running_var", ".num_batches_tracked")


class TorchAdam(NamedTuple):
    step: int
    exp_avg: dict[str, np.ndarray]  # keyed by DLE state_dict names (module. stripped, legacy weight-norm names)
    exp_avg_sq: dict[str, np.ndarray]


def read_torch_adam(path) -> TorchAdam:
    """The Adam moments of a DLE training checkpoint (.pt, read with weights_only=True), by parameter name.

    torch numbers an optimizer's tensors in `model.parameters()` order; a state_dict lists each module's
    parameters, then its buffers, then its children, so its keys without the buffers are that same order.
    """
    from jtts.convert.torch_io import normalize_key, read_pt

    obj = read_pt(path)
    opt = obj.get("optimizer") if isinstance(obj, dict) else None
    if not opt or not opt.get("state"):
        raise CheckpointError(f"{path}: holds no optimizer state (a training checkpoint has one)")
    names = [normalize_key(key) for key in obj["state_dict"] if not key.endswith(_BUFFER_SUFFIXES)]
    ids = [i for g in opt["param_groups"] for i in g["params"]]
    if len(ids) != len(names):
        raise CheckpointError(f"{path}: optimizer has {len(ids)} parameters, the model {len(names)}")
    m, v, steps = {}, {}, set()
    for name, i in zip(names, ids):
        st = opt["state"].get(i)
        if st is None:
            raise CheckpointError(f"{path}: no Adam state for parameter {name}")
        m[name] = st["exp_avg"].float().numpy()
        v[name] = st["exp_avg_sq"].float().numpy()
        steps.add(int(st["step"]))
    if len(steps) != 1:
        raise CheckpointError(f"{path}: Adam step counts differ between parameters ({sorted(steps)[:4]})")
    return TorchAdam(steps.pop(), m, v)


def adam_state_from_torch(opt_state, adam: TorchAdam, table):
    """Puts torch's Adam moments and step count into a `dle_adam` state over flat {jtts name: array} params.

    `table` is the model's convert table (`jtts.convert.<kind>.table(cfg)`), the one both conversion
    directions use; moments go through the same layout transforms as the weights. The learning-rate schedule
    starts afresh (DLE's schedule is by epoch, which a fine-tune restarts).
    """
    mu, nu = {}, {}
    for rule in table:
        if rule.torch not in adam.exp_avg:
            continue  # buffers (BatchNorm statistics) have no moments
        name = rule.jtts
        mu[name] = rule.layout.to_jtts(adam.exp_avg[rule.torch])
        nu[name] = rule.layout.to_jtts(adam.exp_avg_sq[rule.torch])

    def replace(s):
        if not isinstance(s, optax.ScaleByAdamState):
            return s
        if set(mu) != set(s.mu):
            missing = sorted(set(s.mu) - set(mu))[:4]
            raise CheckpointError(f"torch Adam state does not cover the parameters (missing {missing})")
        cast = lambda src, like: {k: jnp.asarray(src[k], like[k].dtype).reshape(like[k].shape)  # noqa: E731
                                  for k in like}
        return optax.ScaleByAdamState(count=jnp.asarray(adam.step, s.count.dtype), mu=cast(mu, s.mu),
                                      nu=cast(nu, s.nu))

    return jax.tree.map(replace, opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))


def flat_params_to_torch(params: Mapping[str, Any], table) -> dict[str, np.ndarray]:
    """Flat jtts params (or gradients, or moments) -> DLE names and layouts, for comparisons and export."""
    return {r.torch: np.asarray(r.layout.to_torch(np.asarray(params[r.jtts]))) for r in table if r.jtts in params}


def load_into_torch(module, params: Mapping[str, Any], table) -> None:
    """Copies flat jtts params (and BatchNorm statistics) into a torch module with DLE's names and layouts.

    Every tensor of the module must be given except BatchNorm's step counters (`num_batches_tracked`, which
    jtts does not keep); anything else missing or left over raises, so a half-loaded model cannot go unseen."""
    import torch

    from jtts.convert import is_buffer

    weights = flat_params_to_torch(params, table)
    missing, unexpected = module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()},
                                                 strict=False)
    missing = [k for k in missing if not is_buffer(k)]
    if missing or unexpected:
        raise CheckpointError(f"jtts weights do not fit the torch module: missing {missing}, unexpected "
                              f"{unexpected}")
