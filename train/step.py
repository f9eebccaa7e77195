"""Jitted, data-parallel training and evaluation steps for Tacotron 2 and WaveGlow.

State: a plain pytree of dicts so that Orbax, Optax and the convert tables see the same thing:
    params  {"encoder.convs.0.conv.kernel": f32 array, ...}   (nnx paths joined by ".")
    stats   BatchNorm running statistics, same naming (Tacotron 2 only; {} for WaveGlow)
    opt     the Optax state over `params`
    step    batches consumed; loss_scale, good_steps: dynamic loss scaling (float16 only)

Precision: parameters, gradients and the optimiser are float32; the model is built with the compute dtype,
which rounds only matmul/conv operands (see jtts.tacotron2 / jtts.waveglow). float16 adds torch-GradScaler-
style dynamic loss scaling: the loss is multiplied by the scale, gradients divided by it; a step whose
gradients are not finite is skipped (parameters, optimiser and statistics unchanged) and halves the scale,
and the scale doubles after `growth_interval` finite steps in a row. Any dtype skips non-finite steps the
same way, so a NaN never reaches the parameters; the loop decides what a skip means.

Data parallel: one Mesh over all devices (all hosts) with a "data" axis; batches are sharded on their
leading axis, the state is replicated, and XLA inserts the gradient all-reduce. BatchNorm statistics are
taken over the global batch (DLE, under DDP, takes them per GPU).
"""
from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jtts.tacotron2 import Tacotron2
from jtts.waveglow import WaveGlow

from .losses import tacotron2_loss, waveglow_loss

SEP = "."
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
BATCH_KEYS = {"tacotron2": ("tokens", "token_lengths", "mels", "mel_lengths", "gate"),
              "waveglow": ("mels", "audio")}
BN_MOMENTUM = 0.1  # torch's convention (weight of the new batch statistic)


def global_norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def maybe_initialize_distributed() -> None:
    """jax.distributed.initialize() when launched as one of several processes (explicit JAX coordinator
    variables, SLURM or Open MPI); must run before anything touches a device."""
    env = os.environ
    multi = (env.get("JAX_COORDINATOR_ADDRESS") or int(env.get("SLURM_NTASKS", "1")) > 1
             or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1)
    if multi and not getattr(maybe_initialize_distributed, "done", False):
        jax.distributed.initialize()
        maybe_initialize_distributed.done = True


def model_kind(model) -> str:
    if isinstance(model, Tacotron2):
        return "tacotron2"
    if isinstance(model, WaveGlow):
        return "waveglow"
    raise TypeError(f"not a jtts model: {type(model).__name__}")


def with_dtype(model, dtype):
    """The same weights in a model whose compute dtype is `dtype` (parameters stay float32)."""
    dtype = jnp.dtype(DTYPES.get(dtype, dtype))
    if model.dtype == dtype:
        return model
    cls = type(model)
    new = nnx.eval_shape(lambda: cls(model.config, dtype=dtype, rngs=nnx.Rngs(0)))
    nnx.update(new, nnx.state(model))
    return new


def flatten(state) -> dict[str, jax.Array]:
    return {SEP.join(map(str, path)): (v.get_value() if isinstance(v, nnx.Variable) else v)
            for path, v in nnx.to_flat_state(state)}


def _paths(state) -> dict[str, tuple]:
    return {SEP.join(map(str, path)): tuple(path) for path, _ in nnx.to_flat_state(state)}


def _unflatten(flat, paths) -> nnx.State:
    return nnx.from_flat_state({paths[k]: v for k, v in flat.items()})


class Trainer:
    """Holds the jitted steps for one model, compute dtype and mesh.

    dropout: DLE's training-mode dropouts (encoder/postnet 0.5, attention/decoder per config); prenet_dropout
    is separate because DLE keeps it on everywhere (0 turns it off, e.g. for parity checks). BatchNorm always
    uses batch statistics in training and updates the running ones with torch's unbiased variance.
    """

    def __init__(self, model, tx: optax.GradientTransformation, schedule: Callable | None = None, *,
                 dtype="float32", dropout: bool = True, prenet_dropout: float = 0.5, mesh: Mesh | None = None,
                 loss_scaling: bool | None = None, init_scale: float = 2.0 ** 16, growth_interval: int = 2000):
        self.kind = model_kind(model)
        self.dtype = str(jnp.dtype(DTYPES.get(dtype, dtype)))
        self.tx, self.schedule = tx, schedule
        self.prenet_dropout = float(prenet_dropout)
        self.loss_scaling = self.dtype == "float16" if loss_scaling is None else bool(loss_scaling)
        self.init_scale, self.growth_interval = float(init_scale), int(growth_interval)
        model = with_dtype(model, self.dtype)
        self.config = model.config
        model.train()
        if not dropout:
            model.set_attributes(deterministic=True, raise_if_not_found=False)
        # two-pass variance, as torch computes it (the one-pass form loses digits when |mean| >> std)
        model.set_attributes(use_fast_variance=False, raise_if_not_found=False)
        self._train_def, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
        if jax.tree.leaves(rest):
            raise TypeError(f"unexpected non-parameter state in the model: {list(flatten(rest))[:4]}")
        model.eval()
        self._eval_def = nnx.graphdef(model)
        self._params0, self._stats0 = flatten(params), flatten(stats)
        self._ppaths, self._spaths = _paths(params), _paths(stats)
        self.mesh = mesh if mesh is not None else Mesh(np.asarray(jax.devices()), ("data",))
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = NamedSharding(self.mesh, P("data"))
        self._train = jax.jit(self._train_step, in_shardings=(self.replicated, self.batch_sharding, self.replicated),
                              out_shardings=(self.replicated, self.replicated), donate_argnums=0)
        # no input shardings: validation's last batch may not split evenly and then runs replicated
        self._eval = jax.jit(self._eval_step, out_shardings=self.replicated)

    # -- state ----------------------------------------------------------------------------------------------

    def init_state(self, opt_state=None) -> dict[str, Any]:
        """Fresh training state from the model's weights (opt_state: e.g. converted from torch's Adam)."""
        fresh = lambda tree: jax.tree.map(lambda x: jnp.array(x, copy=True), tree)  # noqa: E731  (steps donate)
        params = fresh(self._params0)
        state = dict(params=params, stats=fresh(self._stats0),
                     opt=self.tx.init(params) if opt_state is None else opt_state,
                     step=jnp.int32(0), loss_scale=jnp.float32(self.init_scale if self.loss_scaling else 1.0),
                     good_steps=jnp.int32(0))
        return jax.device_put(state, self.replicated)

    def abstract_state(self) -> dict[str, Any]:
        """Shapes, dtypes and shardings of the state (Orbax's restore target)."""
        def spec(x):
            return jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x), sharding=self.replicated)
        return jax.tree.map(spec, jax.eval_shape(self.init_state))

    def model(self, state, *, train: bool = False):
        """An NNX model (compute dtype as trained) holding the state's weights and statistics."""
        gd = self._train_def if train else self._eval_def
        return nnx.merge(gd, _unflatten(state["params"], self._ppaths), _unflatten(state["stats"], self._spaths))

    def export_params(self, state) -> dict[str, np.ndarray]:
        """{"a/b/c": array}: the naming of jtts model directories (jtts.checkpoint.save_model)."""
        out = {k.replace(SEP, "/"): np.asarray(v) for k, v in state["params"].items()}
        out.update({k.replace(SEP, "/"): np.asarray(v) for k, v in state["stats"].items()})
        return out

    def shard_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Host batch (this process's part on multi-host) -> global arrays sharded on the data axis."""
        n = self.mesh.devices.size // jax.process_count()
        out = {}
        for k in BATCH_KEYS[self.kind]:
            if k not in batch:
                raise KeyError(f"{self.kind} batch lacks {k!r} (has {sorted(batch)})")
            a = np.asarray(batch[k])
            if a.shape[0] % n:
                raise ValueError(f"batch size {a.shape[0]} is not a multiple of the {n} local devices")
            out[k] = jax.make_array_from_process_local_data(self.batch_sharding, a)
        return out

    # -- steps ----------------------------------------------------------------------------------------------

    def train_step(self, state, batch, key):
        """-> (new state, metrics). `batch` from `shard_batch` (numpy dicts are sharded here)."""
        if isinstance(next(iter(batch.values())), np.ndarray):
            batch = self.shard_batch(batch)
        return self._train(state, batch, key)

    def eval_step(self, state, batch, key):
        """-> dict(loss, parts, and for Tacotron 2 mel_postnet and alignments) with the model in eval mode."""
        if isinstance(next(iter(batch.values())), np.ndarray):
            n = self.mesh.devices.size // jax.process_count()
            if len(next(iter(batch.values()))) % n == 0:
                batch = self.shard_batch(batch)
            else:
                batch = jax.device_put({k: np.asarray(batch[k]) for k in BATCH_KEYS[self.kind]}, self.replicated)
        return self._eval(state, batch, key)

    def _forward(self, model, batch, key):
        if self.kind == "tacotron2":
            out = model(batch["tokens"], batch["token_lengths"], batch["mels"], batch["mel_lengths"],
                        prenet_dropout=self.prenet_dropout, key=key)
            loss, parts = tacotron2_loss(out, batch["mels"], batch["gate"])
            return loss, parts, out
        out = model(batch["mels"], batch["audio"])
        loss, parts = waveglow_loss(out)
        return loss, parts, out

    def _unbiased_running_var(self, old, new, batch):
        """flax moves running_var toward the biased batch variance, torch toward the unbiased one."""
        if self.kind != "tacotron2":
            return new
        b = batch["tokens"].shape[0]
        counts = {"encoder": b * batch["tokens"].shape[1], "postnet": b * batch["mels"].shape[2]}
        out = dict(new)
        for k, v in new.items():
            if k.endswith(SEP + "var"):
                n = counts[k.split(SEP)[0]]
                out[k] = v + (v - (1.0 - BN_MOMENTUM) * old[k]) / max(n - 1, 1)
        return out

    def loss_and_grads(self, state, batch, key):
        """-> (loss, parts, float32 gradients by parameter name), unscaled; for checks and debugging."""
        if isinstance(next(iter(batch.values())), np.ndarray):
            batch = self.shard_batch(batch)
        return jax.jit(self._grads)(state, batch, key)[:3]

    def _grads(self, state, batch, key):
        params, scale = state["params"], state["loss_scale"]

        def loss_fn(p):
            model = nnx.merge(self._train_def, _unflatten(p, self._ppaths), _unflatten(state["stats"], self._spaths))
            loss, parts, _ = self._forward(model, batch, key)
            stats = flatten(nnx.state(model, nnx.BatchStat))
            return (loss * scale if self.loss_scaling else loss), (loss, parts, stats)

        grads, (loss, parts, stats) = jax.grad(loss_fn, has_aux=True)(params)
        if self.loss_scaling:
            grads = jax.tree.map(lambda g: g / scale, grads)
        return loss, parts, grads, stats

    def _train_step(self, state, batch, key):
        params, scale = state["params"], state["loss_scale"]
        loss, parts, grads, stats = self._grads(state, batch, key)
        # Keeps XLA from fusing the backward pass into the optimizer's elementwise loops: on CPU that fusion
        # recomputes gradient producers per consumer (WaveGlow's step ran 2.5x slower with it).
        grads = jax.lax.optimization_barrier(grads)
        stats = self._unbiased_running_var(state["stats"], stats, batch)
        grad_norm = global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def apply(_):
            updates, opt = self.tx.update(grads, state["opt"], params)
            return optax.apply_updates(params, updates), opt, stats

        # a branch, not jnp.where over the state: that would read and write the whole state (3x the
        # parameters with Adam's moments) once more every step
        new_params, opt, stats = jax.lax.cond(finite, apply, lambda _: (params, state["opt"], state["stats"]), None)
        new_state = dict(params=new_params, stats=stats, opt=opt, step=state["step"] + 1, loss_scale=scale,
                         good_steps=state["good_steps"])
        if self.loss_scaling:
            good = jnp.where(finite, state["good_steps"] + 1, 0)
            grow = good >= self.growth_interval
            new_state["loss_scale"] = jnp.where(finite, jnp.where(grow, scale * 2.0, scale), scale * 0.5)
            new_state["good_steps"] = jnp.where(grow, 0, good)
        metrics = dict(loss=loss, grad_norm=grad_norm, finite=finite, loss_scale=scale, **parts)
        return new_state, metrics

    def _eval_step(self, state, batch, key):
        model = nnx.merge(self._eval_def, _unflatten(state["params"], self._ppaths),
                          _unflatten(state["stats"], self._spaths))
        loss, parts, out = self._forward(model, batch, key)
        res = dict(loss=loss, **parts)
        if self.kind == "tacotron2":
            res.update(mel_postnet=out[1], alignments=out[3])
        return res

    def lr(self, state) -> float | None:
        """The learning rate of the next update."""
        if self.schedule is None:
            return None
        from .optim import learning_rate

        return float(learning_rate(state["opt"], self.schedule))

    # -- throughput -----------------------------------------------------------------------------------------

    def items(self, batch) -> int:
        """DLE's throughput unit: mel frames (sum of lengths) for Tacotron 2, audio samples for WaveGlow."""
        if self.kind == "tacotron2":
            return int(np.sum(np.asarray(batch["mel_lengths"])))
        return int(np.prod(np.shape(batch["audio"])))
