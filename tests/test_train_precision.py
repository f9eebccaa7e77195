"""Data parallelism (4 simulated CPU devices) and reduced-precision steps: bfloat16, float16 loss scaling."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from train_helpers import tacotron2_batches, tiny_tacotron2

_DP_SCRIPT = textwrap.dedent("""
    import jax, numpy as np, optax
    from jax.sharding import Mesh
    from helpers import step_error, tensor_errors
    from train_helpers import tacotron2_batches, tiny_tacotron2
    from jtts.train.optim import make_optimizer
    from jtts.train.step import Trainer

    LR = 1e-3  # make_optimizer("tacotron2")'s
    assert jax.device_count() == 4, jax.devices()
    batch = tacotron2_batches(n_batches=1, batch=4, seed=5)[0]
    out = {}
    for n in (1, 4):
        tx, schedule = make_optimizer("tacotron2")
        trainer = Trainer(tiny_tacotron2(seed=3), tx, schedule, mesh=Mesh(np.array(jax.devices()[:n]), ("data",)))
        sharded = trainer.shard_batch(batch)
        assert len(sharded["mels"].sharding.device_set) == n
        state = trainer.init_state()
        before = {k: np.array(v) for k, v in state["params"].items()}  # copies: the step donates the state
        state, m = trainer.train_step(state, sharded, jax.random.key(1))
        h = {k: v / 0.1 for k, v in jax.device_get(optax.tree_utils.tree_get(state["opt"], "mu")).items()}
        out[n] = (float(m["loss"]), before, h, jax.device_get(state["params"]), jax.device_get(state["stats"]))
    (l1, p0, h1, p1, s1), (l4, _, h4, p4, s4) = out[1], out[4]
    # the sharded batch sums its gradients in another order: Adam's input differs by rounding, and Adam's first
    # step (lr * h / (|h| + eps)) turns that into up to 2 lr where |h| is near eps (a conv bias feeding BatchNorm
    # has a null gradient); step_error measures what is left beyond that, against 1e-5 lr + 16 ulps
    h_err = tensor_errors(h4, h1)
    p_err = {k: step_error(p4[k], p1[k], h4[k], h1[k], p0[k], LR, 1e-5, 16) for k in p1}
    # a running mean blends batch means of signed activations (which cancel): its scale is |mean| + std
    s_err = {}
    for k in s1:
        scale = np.abs(s1[k]) + (np.sqrt(s1[k[:-4] + "var"]) if k.endswith(".mean") else 0.0)
        s_err[k] = float(np.linalg.norm(s4[k] - s1[k]) / np.linalg.norm(scale))
    worst = lambda e: "%.1e (%s)" % max((v, k) for k, v in e.items())
    print(f"RESULT loss {abs(l4 - l1) / l1:.1e}; Adam input {worst(h_err)}; parameters {worst(p_err)} of the "
          f"allowance; statistics {worst(s_err)}")
    assert abs(l1 - l4) <= 1e-5 * l1, (l1, l4)  # MSE + MSE + BCE: non-negative terms, the loss is their scale
    assert max(h_err.values()) <= 1e-4 and max(p_err.values()) <= 1.0 and max(s_err.values()) <= 1e-5
""")


def test_one_step_on_4_devices_equals_1_device(tmp_path):
    """Batch sharded over 4 devices (dropout on, same key) vs one device: same loss, parameters, statistics."""
    tests = Path(__file__).parent
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")])}
    script = tmp_path / "dp.py"
    script.write_text(_DP_SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    print(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT")))


@pytest.fixture(scope="module")
def batch():
    return tacotron2_batches(n_batches=1, batch=2, seed=7)[0]


def _trainer(dtype, **kw):
    from jtts.train.optim import make_optimizer
    from jtts.train.step import Trainer

    tx, schedule = make_optimizer("tacotron2")
    return Trainer(tiny_tacotron2(seed=4), tx, schedule, dtype=dtype, dropout=False, prenet_dropout=0.0, **kw)


def test_bfloat16_step_runs_close_to_float32(batch):
    key = jax.random.key(0)
    f32 = _trainer("float32")
    bf16 = _trainer("bfloat16")
    _, m32 = f32.train_step(f32.init_state(), batch, key)
    state, m16 = bf16.train_step(bf16.init_state(), batch, key)
    assert bool(m16["finite"])
    assert all(v.dtype == np.float32 for v in jax.tree.leaves(state["params"])), "master weights stay float32"
    # MSE + MSE + BCE: non-negative terms, the loss is their scale; u = 2^-8 is bfloat16's unit roundoff
    err = abs(float(m16["loss"]) - float(m32["loss"])) / float(m32["loss"])
    print(f"bfloat16 step: loss {err:.1e} = {err / 2.0 ** -8:.2f} u")
    assert err <= 8 * 2.0 ** -8, err


def test_float16_loss_scaling_skips_overflow_then_grows(batch):
    key = jax.random.key(0)
    # a scale this large overflows float32 in the backward pass: the step must be skipped
    trainer = _trainer("float16", init_scale=2.0 ** 120, growth_interval=2)
    state = trainer.init_state()
    before = jax.device_get(state["params"])
    count0 = int(jax.device_get(state["opt"][2].count))
    state, m = trainer.train_step(state, batch, key)
    assert not bool(m["finite"]) and np.isfinite(float(m["loss"]))
    assert float(state["loss_scale"]) == 2.0 ** 119
    after = jax.device_get(state["params"])
    assert all(np.array_equal(before[k], after[k]) for k in before), "a skipped step must not move the weights"
    assert int(jax.device_get(state["opt"][2].count)) == count0, "nor advance Adam"

    state = trainer.init_state()
    state["loss_scale"] = jax.numpy.float32(2.0 ** 10)  # the same compiled step, a workable scale
    for i in range(2):
        state, m = trainer.train_step(state, batch, jax.random.fold_in(key, i))
        assert bool(m["finite"]), i
    assert float(state["loss_scale"]) == 2.0 ** 11 and int(state["good_steps"]) == 0
    assert int(jax.device_get(state["opt"][2].count)) == 2
