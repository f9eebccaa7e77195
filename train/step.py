"""Jitted, data-parallel training and evaluation steps for any registered model (its `jtts.train.tasks` task
says what a batch holds and what the loss is).

State: a plain pytree of dicts so that Orbax, Optax and the convert tables see the same thing:
    params  {"encoder.convs.0.conv.kernel": f32 array, ...}   (nnx paths joined by ".")
    stats   BatchNorm running statistics, same naming (Tacotron 2 only; {} for WaveGlow)
    opt     the Optax state over `params`
    step    batches consumed; skipped: steps whose non-finite gradients were not applied (total, and
            in_a_row: the current streak); loss_scale, good_steps: dynamic loss scaling (float16 only)

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

from jtts import models
from jtts.checkpoint import SEP
from jtts.errors import UsageError

from .tasks import Task, task_for

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def global_norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def maybe_initialize_distributed() -> None:
    """jax.distributed.initialize() when launched as one of several processes: JAX_COORDINATOR_ADDRESS=HOST:PORT
    (process 0's), JAX_NUM_PROCESSES and JAX_PROCESS_ID, or SLURM / Open MPI, which JAX detects itself. Must run
    before anything touches a device. Cross-process collectives on CPU use gloo (JAX's default)."""
    env = os.environ
    managed = int(env.get("SLURM_NTASKS", "1")) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    if not (managed or env.get("JAX_COORDINATOR_ADDRESS")) or getattr(maybe_initialize_distributed, "done", False):
        return
    kw = {}
    for key, name in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID")):
        if env.get(name):
            try:
                kw[key] = int(env[name])
            except ValueError:
                raise UsageError(f"{name}={env[name]!r} is not an integer") from None
    if not managed and len(kw) < 2:
        raise UsageError("JAX_COORDINATOR_ADDRESS is set: set JAX_NUM_PROCESSES and JAX_PROCESS_ID too "
                         "(or unset it to train in one process)")
    jax.distributed.initialize(**kw)
    maybe_initialize_distributed.done = True


def with_dtype(model, dtype):
    """The same weights in a model whose compute dtype is `dtype` (parameters stay float32)."""
    dtype = jnp.dtype(DTYPES.get(dtype, dtype))
    if model.dtype == dtype:
        return model
    new = models.build(models.kind_of(model), model.config, dtype=dtype, abstract=True)
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

    task: the model kind's training task (batch layout, loss; `jtts.train.tasks`), by default the registered
    one with `task_options` (e.g. prenet_dropout=0.0 or guided_attention=1.0 for Tacotron 2).
    dropout: DLE's training-mode dropouts (encoder/postnet 0.5, attention/decoder per config); Tacotron 2's
    prenet dropout is a task option because DLE keeps it on everywhere. BatchNorm always uses batch
    statistics in training and updates the running ones as torch does (the task's `update_stats`).
    """

    def __init__(self, model, tx: optax.GradientTransformation, schedule: Callable | None = None, *,
                 dtype="float32", dropout: bool = True, task: Task | None = None, mesh: Mesh | None = None,
                 loss_scaling: bool | None = None, init_scale: float = 2.0 ** 16, growth_interval: int = 2000,
                 **task_options):
        self.task = task if task is not None else task_for(model, **task_options)
        self.kind = self.task.kind
        self.dtype = str(jnp.dtype(DTYPES.get(dtype, dtype)))
        self.tx, self.schedule = tx, schedule
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
                     good_steps=jnp.int32(0), skipped=jnp.int32(0), in_a_row=jnp.int32(0))
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
        """{"a.b.c": array} of weights and statistics, as jtts model directories hold them (save_model)."""
        return {k: np.asarray(v) for k, v in {**state["params"], **state["stats"]}.items()}

    def shard_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Host batch (this process's rows of the global batch, in process order) -> global arrays sharded on
        the data axis."""
        n = self.mesh.devices.size // jax.process_count()
        out = {}
        for k in self.task.batch_keys:
            if k not in batch:
                raise KeyError(f"{self.kind} batch lacks {k!r} (has {sorted(batch)})")
            a = np.asarray(batch[k])
            if a.shape[0] % n:
                raise UsageError(f"batch size {a.shape[0]} is not a multiple of the {n} local devices")
            out[k] = jax.make_array_from_process_local_data(self.batch_sharding, a)
        return out

    def global_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """A batch every process holds whole (validation's) -> global arrays, sharded on the data axis when its
        size divides the device count, else replicated (a last, smaller batch); each device gets its rows."""
        keys = self.task.batch_keys
        n = len(batch[keys[0]])
        sharding = self.batch_sharding if n % self.mesh.devices.size == 0 else self.replicated
        out = {}
        for k in keys:
            a = np.asarray(batch[k])
            out[k] = jax.make_array_from_callback(a.shape, sharding, lambda index, a=a: a[index])
        return out

    # -- steps ----------------------------------------------------------------------------------------------

    def train_step(self, state, batch, key):
        """-> (new state, metrics). `batch` from `shard_batch` (numpy dicts are sharded here)."""
        if isinstance(next(iter(batch.values())), np.ndarray):
            batch = self.shard_batch(batch)
        return self._train(state, batch, key)

    def eval_step(self, state, batch, key):
        """-> dict(loss, parts, and for Tacotron 2 mel_postnet and alignments) with the model in eval mode.
        A numpy batch is the whole batch, on every process (`global_batch`); outputs are replicated."""
        if isinstance(next(iter(batch.values())), np.ndarray):
            batch = self.global_batch(batch)
        return self._eval(state, batch, key)

    def loss_and_grads(self, state, batch, key):
        """-> (loss, parts, float32 gradients by parameter name), unscaled; for checks and debugging."""
        if isinstance(next(iter(batch.values())), np.ndarray):
            batch = self.shard_batch(batch)
        return jax.jit(self._grads)(state, batch, key)[:3]

    def _grads(self, state, batch, key):
        params, scale = state["params"], state["loss_scale"]

        def loss_fn(p):
            model = nnx.merge(self._train_def, _unflatten(p, self._ppaths), _unflatten(state["stats"], self._spaths))
            loss, parts, _ = self.task.forward(model, batch, key)
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
        stats = self.task.update_stats(state["stats"], stats, batch)
        grad_norm = global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def apply(_):
            updates, opt = self.tx.update(grads, state["opt"], params)
            return optax.apply_updates(params, updates), opt, stats

        # a branch, not jnp.where over the state: that would read and write the whole state (3x the
        # parameters with Adam's moments) once more every step
        new_params, opt, stats = jax.lax.cond(finite, apply, lambda _: (params, state["opt"], state["stats"]), None)
        new_state = dict(params=new_params, stats=stats, opt=opt, step=state["step"] + 1, loss_scale=scale,
                         good_steps=state["good_steps"], skipped=state["skipped"] + jnp.where(finite, 0, 1),
                         in_a_row=jnp.where(finite, 0, state["in_a_row"] + 1))
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
        loss, parts, out = self.task.forward(model, batch, key)
        return dict(loss=loss, **parts, **self.task.eval_outputs(out))

    def lr(self, state) -> float | None:
        """The learning rate of the next update."""
        if self.schedule is None:
            return None
        from .optim import learning_rate

        return float(learning_rate(state["opt"], self.schedule))

    # -- throughput -----------------------------------------------------------------------------------------

    def items(self, batch) -> int:
        """Throughput in the task's unit (DLE's: mel frames for Tacotron 2, audio samples for WaveGlow)."""
        return self.task.items(batch)
