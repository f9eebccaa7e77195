"""Training runs that meet faults: damaged, partial or mismatched checkpoints, leftovers of killed saves, signals,
logs after a resume, failed starts. Tiny models and synthetic batches; one compiled train step for the module."""
from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from train_helpers import ListIterator, tacotron2_batches, tiny_tacotron2

BATCHES = tacotron2_batches(n_batches=3, seed=7)


@pytest.fixture(scope="module")
def trainer():
    from jtts.train.optim import make_optimizer
    from jtts.train.step import Trainer

    tx, schedule = make_optimizer("tacotron2", lr=2e-3)
    return Trainer(tiny_tacotron2(), tx, schedule)


def _cfg(out, **kw):
    from jtts.train.loop import LoopConfig

    return LoopConfig(output=out, **{**dict(steps=6, ckpt_every=2, log_every=1, progress=False, tensorboard=False,
                                            plots=False), **kw})


@pytest.fixture(scope="module")
def runs(trainer, tmp_path_factory):
    """(losses of 6 uninterrupted steps, a run stopped after step 4 with checkpoints at steps 2 and 4)."""
    from jtts.train.loop import train

    tmp = tmp_path_factory.mktemp("runs")
    full = train(trainer, ListIterator(BATCHES), _cfg(tmp / "full"))["losses"]
    train(trainer, ListIterator(BATCHES), _cfg(tmp / "base", steps=4))
    return full, tmp / "base"


def _copy(base: Path, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(base, out)
    return out


def _train_steps(out):
    from jtts.train.loop import read_log

    return [e["step"] for e in read_log(out) if e["event"] == "train"]


def _largest(step_dir: Path) -> Path:
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _truncate(d):
    f = _largest(d)
    os.truncate(f, f.stat().st_size // 2)


def _delete(d):
    _largest(d).unlink()


def _flip(d):
    """Bytes changed inside an array file: Orbax reads it back without complaint; the checksum does not."""
    f = _largest(d)
    with open(f, "r+b") as fh:
        fh.seek(f.stat().st_size // 2)
        b = fh.read(4)
        fh.seek(-4, os.SEEK_CUR)
        fh.write(bytes(x ^ 0x10 for x in b))


def _bad_meta(d):
    (d / "meta" / "metadata").write_text('{"kind": "tacotr')


def _no_state(d):
    shutil.rmtree(d / "state")


def _emptied(d):
    for p in d.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()


@pytest.mark.parametrize("damage", [_truncate, _delete, _flip, _bad_meta, _no_state, _emptied],
                         ids=["truncated", "deleted", "flipped", "bad-meta", "no-state", "emptied"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(trainer, runs, tmp_path, capsys, damage):
    from jtts.train.loop import train

    full, base = runs
    out = _copy(base, tmp_path)
    damage(out / "checkpoints" / "4")
    with open(out / "train_log.jsonl", "a") as f:
        f.write('{"event": "train", "st')  # a line cut short by the kill
    res = train(trainer, ListIterator(BATCHES), _cfg(out), resume=True)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "checkpoint step 4" in err[0] and "resuming from step 2" in err[0], err
    assert "TensorStore" not in err[0] and "Traceback" not in err[0]
    assert (out / "checkpoints-damaged" / "4").is_dir() and not (out / "checkpoints" / "4.damaged").exists()
    # restored from step 2, so steps 3..6 are those of the run that never stopped
    np.testing.assert_allclose(res["losses"], full[2:], rtol=1e-6)
    assert _train_steps(out) == [1, 2, 3, 4, 5, 6]  # each step once


def test_no_readable_checkpoint_is_one_error_and_moves_nothing(trainer, runs, tmp_path):
    from jtts.errors import JttsError
    from jtts.train.loop import train

    out = _copy(runs[1], tmp_path)
    _bad_meta(out / "checkpoints" / "4")
    _truncate(out / "checkpoints" / "2")
    with pytest.raises(JttsError, match=r"no readable checkpoint .*step 4: .*step 2: a file is truncated") as e:
        train(trainer, ListIterator(BATCHES), _cfg(out), resume=True)
    assert "\n" not in str(e.value) and len(str(e.value)) < 600
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["2", "4"]


@pytest.mark.parametrize("change, needle", [
    (dict(config=dict(attention_dim=8)), "config (--config/--set/--init-from): attention_dim 16 (this command: 8)"),
    (dict(dtype="bfloat16"), "dtype 'float32' (this command: 'bfloat16') (--dtype)"),
    (dict(meta=dict(batch_size=8)), "batch_size"),
    (dict(task=dict(prenet_dropout=0.0)), "prenet_dropout 0.5 (this command: 0.0) (--prenet-dropout)"),
], ids=["config", "dtype", "batch-size", "task"])
def test_resume_with_other_settings_is_refused_before_restoring(trainer, runs, tmp_path, change, needle):
    """Nothing is restored (no Orbax/TensorStore error pages): the stored meta is compared first."""
    from jtts.errors import UsageError
    from jtts.train.loop import train
    from jtts.train.optim import make_optimizer
    from jtts.train.step import Trainer

    out = _copy(runs[1], tmp_path)
    (out / "checkpoints" / "4" / "meta" / "metadata").write_text(  # stored before batch_size was a fact
        json.dumps({**json.loads((out / "checkpoints" / "4" / "meta" / "metadata").read_text()), "batch_size": 4}))
    other = trainer
    if "config" in change or "dtype" in change or "task" in change:
        tx, schedule = make_optimizer("tacotron2", lr=2e-3)
        other = Trainer(tiny_tacotron2(**change.get("config", {})), tx, schedule, dtype=change.get("dtype", "float32"),
                        **change.get("task", {}))
    with pytest.raises(UsageError) as e:
        train(other, ListIterator(BATCHES), _cfg(out), resume=True, meta=change.get("meta", {"batch_size": 4}))
    msg = str(e.value)
    assert needle in msg and "checkpoints/4" in msg and "\n" not in msg, msg
    assert "TensorStore" not in msg and "orbax" not in msg.lower()
    assert (out / "checkpoints" / "4").is_dir() and not (out / "checkpoints-damaged").exists()


def test_leftovers_of_killed_saves_are_removed(trainer, runs, tmp_path):
    from jtts.train.loop import read_log, train

    out = _copy(runs[1], tmp_path)
    tmp = out / "checkpoints" / "6.orbax-checkpoint-tmp-1795932951"
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "half-written").write_bytes(b"\0" * 100)
    (out / ".model.partial-abc123" / "params").mkdir(parents=True)
    res = train(trainer, ListIterator(BATCHES), _cfg(out, steps=5), resume=True)
    assert res["step"] == 5 and not tmp.exists() and not (out / ".model.partial-abc123").exists()
    resume = [e for e in read_log(out) if e["event"] == "resume"][-1]
    assert sorted(resume["removed"]) == [".model.partial-abc123", tmp.name]


def test_checkpoints_past_keep_are_moved_out_then_deleted(trainer, tmp_path):
    """Orbax renames an old checkpoint out of the step names before deleting it: a kill while deleting leaves
    nothing under a step's name that is half gone."""
    from jtts.train.loop import train
    from jtts.train.rundir import TRASH

    out = tmp_path / "run"
    train(trainer, ListIterator(BATCHES), _cfg(out, steps=4, ckpt_every=1, keep=2))
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name != TRASH) == ["3", "4"]
    assert not list((out / "checkpoints" / TRASH).iterdir())


def test_resume_needs_a_checkpoint_and_resume_if_any_starts_fresh(trainer, runs, tmp_path):
    from jtts.train.loop import OutputDirError, train

    out = tmp_path / "new"
    with pytest.raises(OutputDirError, match=f"{out}: no checkpoint to resume from.*--resume-if-any"):
        train(trainer, ListIterator(BATCHES), _cfg(out, steps=1), resume=True)
    assert not out.exists()
    res = train(trainer, ListIterator(BATCHES), _cfg(out, steps=2), resume="if-any")
    np.testing.assert_allclose(res["losses"], runs[0][:2], rtol=1e-6)
    res = train(trainer, ListIterator(BATCHES), _cfg(out, steps=3), resume="if-any")  # now there is one
    np.testing.assert_allclose(res["losses"], runs[0][2:3], rtol=1e-6)


def test_a_run_directory_in_use_is_refused(trainer, tmp_path):
    from jtts.train.loop import OutputDirError, train
    from jtts.train.rundir import lock

    out = tmp_path / "run"
    out.mkdir()
    held = lock(out)  # as another `jtts train` holds it
    try:
        with pytest.raises(OutputDirError, match=f"{out} is in use by another jtts train \\(pid {os.getpid()} on "):
            train(trainer, ListIterator(BATCHES), _cfg(out))
    finally:
        held.close()
    assert [p.name for p in out.iterdir()] == [".lock"]


class _SignalAt(ListIterator):
    """Sends `signum` to this process while the batch of step `at` is being fetched."""

    def __init__(self, batches, at, signum):
        super().__init__(batches)
        self.at, self.signum = at, signum

    def __next__(self):
        if self.position + 1 == self.at:
            os.kill(os.getpid(), self.signum)
        return super().__next__()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_finishes_the_step_saves_and_resumes_exactly(trainer, runs, tmp_path, capsys, signum):
    from jtts.train.loop import Interrupted, read_log, train

    out = tmp_path / "run"
    before = signal.getsignal(signum)
    with pytest.raises(Interrupted) as e:  # checkpoints every 100 steps: only the signal saves one
        train(trainer, _SignalAt(BATCHES, 3, signum), _cfg(out, ckpt_every=100, resume_command="jtts train again"))
    assert signal.getsignal(signum) is before  # the loop's handler is gone again
    name = signal.Signals(signum).name
    assert e.value.exit_code == 128 + signum == (130 if signum == signal.SIGINT else 143)
    assert e.value.step == 3
    where = out / "checkpoints" / "3"
    assert str(e.value) == f"stopped by {name} at step 3; checkpoint {where}; resume with: jtts train again"
    assert f"{name}: finishing this step and saving a checkpoint" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["3"] and not (out / "model").exists()
    assert read_log(out)[-1]["event"] == "interrupted"
    res = train(trainer, ListIterator(BATCHES), _cfg(out, ckpt_every=100), resume=True)
    np.testing.assert_allclose(res["losses"], runs[0][3:], rtol=1e-6)
    assert _train_steps(out) == [1, 2, 3, 4, 5, 6]


class _FailsAt(ListIterator):
    def __next__(self):
        from jtts.errors import DataError

        raise DataError("clip.wav: unreadable")


def test_failed_start_leaves_no_run_directory(trainer, runs, tmp_path):
    from jtts.errors import DataError
    from jtts.train.loop import train

    out = tmp_path / "a" / "run"
    with pytest.raises(DataError):
        train(trainer, _FailsAt(BATCHES), _cfg(out))
    assert not (tmp_path / "a").exists()  # nor the parent it made
    out.mkdir(parents=True)  # a directory the user made is kept, empty as it was
    with pytest.raises(DataError):
        train(trainer, _FailsAt(BATCHES), _cfg(out))
    assert out.is_dir() and not list(out.iterdir())
    run = _copy(runs[1], tmp_path)  # a run that fails to resume is left as it was
    listing = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.name != ".lock")
    with pytest.raises(DataError):
        train(trainer, _FailsAt(BATCHES), _cfg(run), resume=True)
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.name != ".lock") == listing


def test_checkpoint_checksum_detects_changed_arrays(trainer):
    from jtts.train.rundir import checksum

    state = trainer.init_state()
    a = checksum(state)
    assert a == checksum(trainer.init_state())
    params = dict(state["params"])
    k = sorted(params)[0]
    x = np.asarray(params[k]).copy()
    x.reshape(-1)[0] = np.nextafter(x.reshape(-1)[0], np.float32(1))  # one ulp
    assert checksum({**state, "params": {**params, k: x}}) != a


def test_kill_9_while_a_checkpoint_is_written(tmp_path):
    """A real SIGKILL while Orbax writes a checkpoint (its temporary directory exists): every checkpoint left
    that looks complete restores and matches its checksum, and `--resume-if-any` removes the temporary,
    continues from the newest checkpoint and logs each step once."""
    import subprocess
    import sys
    import time

    from jtts import models
    from jtts.cli import main
    from jtts.train.loop import read_log
    from jtts.train.optim import make_optimizer
    from jtts.train.rundir import TMP_MARK, steps, verify_checkpoints
    from jtts.train.step import Trainer
    from jtts.train.tasks import Tacotron2Task

    out = tmp_path / "run"
    argv = ["train", "tacotron2", "--synthetic", "--config", "small", "--batch-size", "2", "--ckpt-every", "1",
            "--log-every", "1", "--no-progress", "-o", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "jtts", *argv, "--steps", "500"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    deadline, caught = time.monotonic() + 600, False
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            ckpts = out / "checkpoints"
            if ckpts.is_dir() and len(steps(ckpts)) >= 2 and any(TMP_MARK in p.name for p in ckpts.iterdir()):
                proc.kill()
                caught = True
                break
            time.sleep(0.002)
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert caught and proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    left = steps(out / "checkpoints")
    trainer = Trainer(models.build("tacotron2", Tacotron2Task.small), *make_optimizer("tacotron2"))
    assert verify_checkpoints(out / "checkpoints", trainer) == {s: None for s in left}
    last = left[-1] + 2
    assert main([*argv, "--steps", str(last), "--resume-if-any"]) == 0
    assert not [p for p in (out / "checkpoints").iterdir() if TMP_MARK in p.name]
    assert [e["step"] for e in read_log(out) if e["event"] == "train"] == list(range(1, last + 1))
    resumed = [e for e in read_log(out) if e["event"] == "resume"]
    assert [e["step"] for e in resumed] == [left[-1]] and resumed[0]["removed"], resumed


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (two tiny checkpoints fit, the third does not); skipped where mounting is not allowed."""
    import subprocess

    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_stops_with_one_line_then_resumes_exactly(trainer, runs, small_disk):
    import subprocess

    from jtts.train.loop import train
    from jtts.train.rundir import WriteError, steps

    out = small_disk / "run"
    with pytest.raises(WriteError) as e:
        train(trainer, ListIterator(BATCHES), _cfg(out, ckpt_every=1))
    msg, done = str(e.value), steps(out / "checkpoints")
    assert "No space left on device" in msg and f"the newest complete checkpoint is step {done[-1]}" in msg, msg
    assert "\n" not in msg and "TensorStore" not in msg and "orbax" not in msg.lower()
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # space freed
    res = train(trainer, ListIterator(BATCHES), _cfg(out, ckpt_every=1), resume=True)
    np.testing.assert_allclose(res["losses"], runs[0][done[-1]:], rtol=1e-6)
    assert _train_steps(out) == [1, 2, 3, 4, 5, 6]
