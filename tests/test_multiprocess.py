"""Training across processes: `jtts train` in two processes on this machine (jax.distributed over localhost, gloo
CPU collectives), two CPU devices each, gives the losses of one process with four devices, step by step; each
process reads its own block of every global batch; a signal to one process stops both after the same step with
one checkpoint, which both restore; validation across processes equals validation of the same weights in one
process."""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from test_train_data import write_ljspeech
from train_helpers import TINY_TACOTRON2

BATCH = 4
STEPS = 20
# short clips: the decoder runs few steps (each of which all-reduces gradient parts across processes)
CLIPS = [(f"MP-{i:04d}", sr, sec, 1, text, text) for i, (sr, sec, text) in enumerate([
    (22050, 0.20, "A short one."), (16000, 0.15, "Two words."), (22050, 0.25, "Somewhat longer than that."),
    (22050, 0.12, "Hi."), (16000, 0.22, "Sixteen kilohertz."), (22050, 0.18, "Five of eight."),
    (22050, 0.10, "Six."), (22050, 0.24, "The last of the eight clips.")])]
# The same global batches in the same order, so one step's numbers differ only by the order in which the gradient
# and loss all-reduces add the devices' parts (XLA's in-process reduction vs gloo's ring): the losses of the two
# runs differ by at most a few float32 ulps of the loss (measured: 1.3e-7 of it, about 1 ulp, at every step: the
# difference does not grow). MSE + MSE + BCE are non-negative terms, so the loss is their scale; 1e-6 of it is
# 8 to 17 ulps.
LOSS_RTOL = 1e-6


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Mel caches: training, and validation of 7 clips, batches of 4 and 3, the last not divisible by the 4 devices
    (it runs replicated); and the tiny model all runs start from (--init-from: loading it compiles nothing, while
    a fresh model's initialisers compile one program per tensor shape in every process)."""
    from jtts import models
    from jtts.checkpoint import flat_state, save_model
    from jtts.train.preprocess import preprocess

    root = tmp_path_factory.mktemp("mp")
    model = models.build("tacotron2", {**TINY_TACOTRON2, "n_symbols": 148}, seed=7)
    save_model(root / "init", "tacotron2", dataclasses.asdict(model.config),
               {k: np.asarray(v.get_value()) for k, v in flat_state(model).items()})
    lj = write_ljspeech(root / "LJSpeech-1.1", CLIPS)
    (root / "val.txt").write_text("".join(f"{lj / 'wavs' / c[0]}.wav|{c[5]}\n" for c in CLIPS[:7]))
    preprocess(lj, root / "train", frame_step=32)
    preprocess(root / "val.txt", root / "val", frame_step=32)
    return root


def _take(it, n):
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("kind", ["tacotron2", "waveglow"])
def test_each_process_reads_its_own_block_of_every_global_batch(data, kind):
    """Shards (0, 2) and (1, 2) read disjoint rows whose concatenation is the global batch of one process, in
    its row order and bucket; their loader states are interchangeable (process 0's is what a checkpoint holds)."""
    from jtts.train.data import tacotron2_batches, waveglow_batches

    def make(shard):
        if kind == "tacotron2":
            return tacotron2_batches(data / "train", BATCH, seed=3, buckets=2, shard=shard)
        return waveglow_batches(data / "LJSpeech-1.1", BATCH, seed=3, segment_length=2048, shard=shard)

    whole, first, second = make((0, 1)), make((0, 2)), make((1, 2))
    for w, a, b in zip(_take(whole, 5), _take(first, 5), _take(second, 5)):
        assert set(w) == set(a) == set(b)
        for k in w:
            assert len(a[k]) == len(b[k]) == BATCH // 2
            np.testing.assert_array_equal(np.concatenate([a[k], b[k]]), w[k], err_msg=k)
        rows = "tokens" if kind == "tacotron2" else "audio"
        assert not {r.tobytes() for r in a[rows]} & {r.tobytes() for r in b[rows]}
    assert first.get_state() == second.get_state()
    resumed = make((1, 2))
    resumed.set_state(first.get_state())
    np.testing.assert_array_equal(next(resumed)["mels"], next(second)["mels"])


_TWO_RUNS = textwrap.dedent("""
    import json, os, signal, sys, threading, time
    from pathlib import Path
    from jtts.cli import main

    out, val, argv = sys.argv[1], sys.argv[2], sys.argv[3:]

    def interrupt_after_step_5():
        log = Path(out) / "train_log.jsonl"
        while True:
            try:
                if any(json.loads(line).get("step", 0) >= 5 for line in log.read_text().splitlines()):
                    break
            except (OSError, ValueError):
                pass  # not written yet, or a line being written
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    # SIGTERM to process 1 only: both processes must stop after the same step and save one checkpoint together
    if os.environ["JAX_PROCESS_ID"] == "1":
        threading.Thread(target=interrupt_after_step_5, daemon=True).start()
    rc = main(argv + ["-o", out, "--steps", "20"])
    print(f"first run: exit status {rc}", file=sys.stderr)
    if rc != 128 + signal.SIGTERM:
        sys.exit(1)
    # then both resume from it, in the same processes, and validate at the end
    sys.exit(main(argv + ["-o", out, "--steps", "20", "--resume", "--val", val, "--val-every", "10"]))
""")

_REFERENCE = textwrap.dedent("""
    import json, sys
    import jax
    from jtts import models
    from jtts.cli import main
    from jtts.train.data import load_dataset, tacotron2_batches
    from jtts.train.loop import VAL_KEY, validate
    from jtts.train.optim import make_optimizer
    from jtts.train.step import Trainer

    # one process, 4 devices: the same training run, then validation of the two processes' final weights
    out, model_dir, train_data, val_data, batch, seed, argv = *sys.argv[1:7], sys.argv[7:]
    if main(argv + ["-o", out]) != 0:
        sys.exit(1)
    model = models.load(model_dir)
    trainer = Trainer(model, make_optimizer("tacotron2")[0])
    buckets = tacotron2_batches(train_data, int(batch), buckets=1).buckets  # the run's (--buckets 1)
    val = trainer.task.val_batches(load_dataset(val_data), int(batch), buckets=buckets)
    out = validate(trainer, trainer.init_state(), val, jax.random.fold_in(jax.random.key(int(seed)), VAL_KEY))
    print("VAL " + json.dumps(out))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
    # No persistent compilation cache: JAX writes it from process 0 only, so with one the processes would not
    # compile side by side, and the one that did not compile would wait for the other in a collective, spinning.
    tests = Path(__file__).parent
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    return {**env, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": str(devices),
            "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests), os.environ.get("PYTHONPATH", "")]),
            **{k: str(v) for k, v in extra.items()}}


def _wait(procs, timeout=600):
    """Exit codes; when one process fails, the others are killed (they would wait for it in a collective)."""
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [p.returncode for p in procs]


def _events(run, event):
    return [e for e in (json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines())
            if e["event"] == event]


def test_two_processes_give_one_process_s_losses_and_validation(data, tmp_path):
    common = ["train", "tacotron2", "--data", str(data / "train"), "--init-from", str(data / "init"),
              "--batch-size", str(BATCH), "--buckets", "1", "--log-every", "1", "--ckpt-every", "10", "--seed", "7",
              "--no-progress"]
    mp, one = tmp_path / "mp", tmp_path / "ref"
    (tmp_path / "two_runs.py").write_text(_TWO_RUNS)
    (tmp_path / "reference.py").write_text(_REFERENCE)
    port = _free_port()
    # the pair first, with both cores (a process waiting in a collective for a descheduled peer burns time)
    pair = [subprocess.Popen([sys.executable, str(tmp_path / "two_runs.py"), str(mp), str(data / "val"), *common],
                             env=_env(2, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=2,
                                      JAX_PROCESS_ID=i),
                             stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"err{i}.txt", "w"))
            for i in (0, 1)]
    codes = _wait(pair)
    errs = {name: (tmp_path / f"{name}.txt").read_text()[-3000:] for name in ("err0", "err1")}
    assert codes == [0, 0], errs
    check = subprocess.run([sys.executable, str(tmp_path / "reference.py"), str(one), str(mp / "model"),
                            str(data / "train"), str(data / "val"), str(BATCH), "7", *common, "--steps", str(STEPS)],
                           env=_env(4), capture_output=True, text=True, timeout=900)
    assert check.returncode == 0, check.stderr[-3000:]

    # the signal stopped both processes at one step, after 5; both saved that checkpoint and resumed from it;
    # process 0 wrote one log line per step across the interruption
    assert all("first run: exit status 143" in e and "Traceback" not in e for e in errs.values()), errs
    [stopped] = [e["step"] for e in _events(mp, "interrupted")]
    assert 5 <= stopped < STEPS and [e["step"] for e in _events(mp, "resume")] == [stopped]
    assert {stopped, STEPS} <= {int(p.name) for p in (mp / "checkpoints").iterdir() if p.name.isdigit()}
    assert [e["step"] for e in _events(mp, "train")] == list(range(1, STEPS + 1))
    rows = []
    for a, b in zip(_events(mp, "train"), _events(one, "train")):
        assert a["step"] == b["step"]
        worst = max(abs(a[k] - b[k]) for k in ("loss", "mel", "postnet", "gate")) / b["loss"]
        rows.append(worst)
    print(f"largest loss difference over {STEPS} steps: {max(rows):.1e} of the loss")
    assert len(rows) == STEPS and max(rows) <= LOSS_RTOL, rows

    # validation of the two processes (batches of 4 sharded, then 3 replicated) against one process validating
    # the same final weights with the same prenet dropout keys (the runs' weights themselves differ: a conv bias
    # that feeds BatchNorm has a null gradient, and Adam turns the rounding noise it gets into full steps, which
    # the running means follow -- see test_train_precision)
    alone = json.loads(next(line for line in check.stdout.splitlines() if line.startswith("VAL "))[4:])
    logged = _events(mp, "val")[-1]
    assert logged["step"] == STEPS
    diff = max(abs(logged[k] - alone[k]) for k in ("loss", "mel", "postnet", "gate")) / alone["loss"]
    print(f"validation: {logged['loss']:.6f} in two processes, {alone['loss']:.6f} in one ({diff:.1e} of it)")
    assert diff <= LOSS_RTOL, (logged, alone)
