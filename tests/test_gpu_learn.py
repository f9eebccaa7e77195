"""benchmarks/gpu_learn.py, the path of a lent GPU's training call, run here on the CPU: packed mel caches come back
as the trainer reads them (float16 rounding only); `device` trains from the packed payload with `jtts train
--init-from`, slims every checkpoint to its weights and keeps at most six, evenly spaced; the unpacked files are a
run directory that benchmarks/learn_speech.py reads, holding exactly the trainer's weights. No speed is judged."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_train_data import write_ljspeech
from train_helpers import TINY_TACOTRON2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_learn  # noqa: E402
import learn_speech  # noqa: E402


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    from jtts.train import preprocess as P

    lj = write_ljspeech(tmp_path_factory.mktemp("data") / "LJSpeech-1.1")
    out = tmp_path_factory.mktemp("cache") / "c"
    P.preprocess(lj, out, frame_step=16, report=print)
    return out


def test_packed_cache_reads_back_within_float16_rounding(cache, tmp_path):
    from jtts.train.datasets import load_cache

    packed = tmp_path / "train.mels"
    size = gpu_learn.pack_cache(cache, packed)
    assert size == packed.stat().st_size and [p.name for p in tmp_path.iterdir()] == ["train.mels"]  # no temporary
    n = gpu_learn.unpack_cache(packed, tmp_path / "back")
    manifest = json.loads((cache / "manifest.json").read_text())
    assert n == len(manifest["utterances"]) == 8
    assert json.loads((tmp_path / "back" / "manifest.json").read_text()) == manifest
    for u in manifest["utterances"]:
        x, y = np.load(cache / u["mel"]), np.load(tmp_path / "back" / u["mel"])
        assert y.dtype == np.float32 and y.shape == x.shape
        # float16 keeps 11 significant bits: relative rounding 2^-11 of each value, 2^-25 below its normal range
        assert np.all(np.abs(y - x) <= 2.0**-11 * np.abs(x) + 2.0**-25), u["mel"]
        assert np.abs(y - x).max() > 0  # the rounding did happen: this is not a copy of the file
    back = load_cache(tmp_path / "back")
    assert [u.frames for u in back] == [u["frames"] for u in manifest["utterances"]]
    (tmp_path / "junk").write_bytes(b"not a pack")
    with pytest.raises(SystemExit, match="junk: not a packed mel cache"):
        gpu_learn.unpack_cache(tmp_path / "junk", tmp_path / "x")


def test_thin_keeps_six_evenly_spaced_with_the_first_and_the_newest(tmp_path):
    steps = list(range(50, 1051, 50)) + [1089]  # what the first device run wrote, one at a time
    for s in steps:
        (tmp_path / f"step_{s}.tar").write_bytes(b"")
        gpu_learn.thin(tmp_path)
        kept = [gpu_learn.tar_step(p) for p in gpu_learn.tars(tmp_path)]
        assert len(kept) == min(gpu_learn.MAX_MODELS, steps.index(s) + 1)
        assert kept[0] == 50 and kept[-1] == s
    gaps = np.diff(kept)
    assert gaps.max() <= 2 * (kept[-1] - kept[0]) / (gpu_learn.MAX_MODELS - 1), kept


def test_device_trains_from_the_payload_and_returns_the_trainers_weights(cache, tmp_path):
    from jtts import models
    from jtts.checkpoint import flat_state, save_model

    payload = tmp_path / "payload"
    model = models.build("tacotron2", dict(TINY_TACOTRON2, n_symbols=148), seed=3)
    params = {k: np.asarray(v.get_value()) for k, v in flat_state(model).items()}
    save_model(payload / "init", "tacotron2", dataclasses.asdict(model.config), params)
    for name in ("train", "val"):
        gpu_learn.pack_cache(cache, payload / f"{name}.mels")
    out, work = tmp_path / "out", tmp_path / "work"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_learn.py"), "device", "--minutes", "10",
                        "--out", str(out), "--payload", str(payload), "--work", str(work),
                        "--trainer-platform", "cpu", "--", "--batch-size", "2", "--buckets", "1", "--steps", "7",
                        "--ckpt-every", "1", "--val-every", "0", "--log-every", "1"],
                       capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr + (out / "train.log").read_text())[-4000:]
    # 7 checkpoints written, 6 kept: the first, the newest and four between
    tars = [gpu_learn.tar_step(p) for p in gpu_learn.tars(out)]
    assert len(tars) == gpu_learn.MAX_MODELS and tars[0] == 1 and tars[-1] == 7
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if e["event"] == "train"] == list(range(1, 8))
    assert log[0]["init_from"] == str(payload / "init") and log[0]["batch_size"] == 2

    run = tmp_path / "run"
    assert gpu_learn.main(["unpack", str(out), "-o", str(run)]) == 0
    assert learn_speech.checkpoint_steps(run) == tars
    for step in (tars[0], tars[-1]):
        config, slim = learn_speech.load_params(run, step)
        _, full = learn_speech.load_params(work / "run", step)  # the trainer's own, Adam moments and all
        assert config["n_symbols"] == 148 and slim.keys() == full.keys() == params.keys()
        for k in full:
            np.testing.assert_array_equal(slim[k], full[k], err_msg=k)
    moved = max(np.abs(slim[k] - params[k]).max() for k in params)
    assert moved > 0  # trained: the last checkpoint is not the initial weights
    model = learn_speech.load_step(run, tars[-1])  # what learn_speech evaluates
    assert model.config.n_symbols == 148


def test_refuses_what_it_did_not_make_and_files_that_are_not_a_calls(cache, tmp_path):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "keep.txt").write_text("a user's file")
    with pytest.raises(SystemExit, match="notes: exists and is not this script's"):
        gpu_learn.fresh_dir(mine, ".gpu_learn_payload")
    assert (mine / "keep.txt").read_text() == "a user's file"
    gpu_learn.fresh_dir(tmp_path / "new", ".gpu_learn_payload")
    gpu_learn.fresh_dir(tmp_path / "new", ".gpu_learn_payload")  # its own: emptied again
    assert [p.name for p in (tmp_path / "new").iterdir()] == [".gpu_learn_payload"]
    with pytest.raises(SystemExit, match="run: no checkpoint 5"):
        gpu_learn.main(["pack", str(tmp_path / "run"), "--step", "5", "--train", str(cache), "--val", str(cache)])
    (tmp_path / "run" / "checkpoints" / "5" / "state").mkdir(parents=True)
    with pytest.raises(SystemExit, match="notes: not a mel cache"):
        gpu_learn.main(["pack", str(tmp_path / "run"), "--step", "5", "--train", str(mine), "--val", str(cache),
                        "--out", str(tmp_path / "payload")])
    assert not (tmp_path / "payload").exists()
    with pytest.raises(SystemExit, match="notes: no step_"):
        gpu_learn.main(["unpack", str(mine), "-o", str(tmp_path / "back")])
    assert not (tmp_path / "back").exists()
