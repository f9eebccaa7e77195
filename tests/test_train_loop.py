"""The training loop on tiny models and synthetic data: learning, exact resume, NaN stop, checkpoints, logs."""
from __future__ import annotations

import json
import time

import jax
import numpy as np
import pytest

from train_helpers import ListIterator, tacotron2_batches, tiny_tacotron2


@pytest.fixture(scope="module")
def trainer():
    """One Tacotron 2 trainer for the module: its compiled step is reused by every run (runs share nothing else)."""
    from jtts.train.optim import make_optimizer
    from jtts.train.step import Trainer

    tx, schedule = make_optimizer("tacotron2", lr=2e-3)
    return Trainer(tiny_tacotron2(), tx, schedule)


def _cfg(tmp_path, **kw):
    from jtts.train.loop import LoopConfig

    return LoopConfig(output=tmp_path, **{**dict(steps=6, ckpt_every=3, log_every=1, progress=False), **kw})


def test_tiny_tacotron2_overfits(trainer, tmp_path):
    """DLE's dropouts on (prenet 0.5 included); 4 utterances: the loss must fall by >= 80%."""
    from jtts.train.loop import train

    data = ListIterator(tacotron2_batches(n_batches=1))
    t0 = time.perf_counter()
    res = train(trainer, data, _cfg(tmp_path, steps=300, ckpt_every=1000, log_every=50, tensorboard=False))
    took = time.perf_counter() - t0
    first, last = np.mean(res["losses"][:5]), np.mean(res["losses"][-10:])
    drop = 1 - last / first
    assert drop >= 0.8, f"loss {first:.3f} -> {last:.3f} ({drop:.0%} drop) in 300 steps, {took:.1f} s"
    print(f"overfit: loss {first:.3f} -> {last:.3f} ({drop:.0%} drop) in 300 steps, {took:.1f} s")
    assert (tmp_path / "model" / "model.json").is_file()


def test_resume_gives_the_same_losses(trainer, tmp_path):
    from jtts.train.loop import read_log, train

    batches = tacotron2_batches(n_batches=3, seed=1)
    full = train(trainer, ListIterator(batches), _cfg(tmp_path / "a"))["losses"]
    first = train(trainer, ListIterator(batches), _cfg(tmp_path / "b", steps=3))["losses"]
    # a new process would build a new iterator at position 0; the checkpoint moves it on
    rest = train(trainer, ListIterator(batches), _cfg(tmp_path / "b"), resume=True)["losses"]
    assert len(full) == 6 and len(first) == 3 and len(rest) == 3
    # the same compiled step on the same state and batches: equal here; rtol allows the restore a few ulps
    np.testing.assert_allclose(first + rest, full, rtol=1e-6)
    events = [e["event"] for e in read_log(tmp_path / "b")]
    assert events.count("resume") == 1 and "checkpoint" in events
    with pytest.raises(Exception, match="already holds checkpoints"):
        train(trainer, ListIterator(batches), _cfg(tmp_path / "b"))


def test_nan_stops_with_step_and_keeps_last_good_checkpoint(trainer, tmp_path):
    import orbax.checkpoint as ocp

    from jtts.train.loop import NonFiniteLoss, train

    batches = tacotron2_batches(n_batches=5, seed=2)
    batches[4]["mels"][0, 3, 5] = np.nan  # the 5th step's batch
    with pytest.raises(NonFiniteLoss) as err:
        train(trainer, ListIterator(batches), _cfg(tmp_path, steps=8, ckpt_every=2))
    assert err.value.step == 5 and err.value.last_checkpoint == 4, str(err.value)
    assert "step 5" in str(err.value) and "step 4" in str(err.value)
    mngr = ocp.CheckpointManager((tmp_path / "checkpoints").absolute())
    assert mngr.latest_step() == 4
    restored = mngr.restore(4, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                       data=ocp.args.JsonRestore()))
    params = restored["state"]["train"]["params"]
    assert all(np.all(np.isfinite(np.asarray(v))) for v in params.values())
    assert restored["data"] == {"position": 4}
    stop = [json.loads(s) for s in (tmp_path / "train_log.jsonl").read_text().splitlines()][-1]
    assert stop["event"] == "stop" and stop["step"] == 5


def test_validation_writes_pictures_and_logs(trainer, tmp_path):
    from jtts.train.loop import read_log, train

    batches = tacotron2_batches(n_batches=2, seed=3)
    res = train(trainer, ListIterator(batches), _cfg(tmp_path, steps=2, val_every=2), val_batches=batches[:1])
    assert np.isfinite(res["val"]["loss"])
    assert (tmp_path / "val" / "step_0000002.png").stat().st_size > 1000
    log = read_log(tmp_path)
    train_events = [e for e in log if e["event"] == "train"]
    assert {"loss", "lr", "grad_norm", "steps_per_s", "mels_per_s"} <= set(train_events[-1])
    assert [e["step"] for e in log if e["event"] == "val"] == [2]
    # tensorboardX is in the test extra, so the TensorBoard path runs in CI
    assert list((tmp_path / "tb").glob("events.out.tfevents.*")), "TensorBoard event files expected"


def test_trained_model_directory_loads(trainer, tmp_path):
    from jtts import Tacotron2
    from jtts.train.loop import train

    from jtts.checkpoint import read_meta

    res = train(trainer, ListIterator(tacotron2_batches(n_batches=1)), _cfg(tmp_path, steps=1),
                meta={"data": "/data/cache", "batch_size": 4})
    model = Tacotron2.from_checkpoint(res["model"])
    source = read_meta(res["model"])["source"]  # what `jtts info` shows as the model's source
    assert source["trained_by"] == "jtts train" and source["run"] == str(tmp_path.absolute())
    assert source["step"] == 1 and source["checkpoint"] == str(tmp_path.absolute() / "checkpoints" / "1")
    assert source["data"] == "/data/cache" and source["batch_size"] == 4 and source["dtype"] == "float32"
    assert source["parameters"] == sum(np.size(v) for v in res["state"]["params"].values())
    ours = jax.device_get(res["state"]["params"]["embedding.embedding"])
    np.testing.assert_array_equal(np.asarray(model.embedding.embedding.get_value()), ours)
