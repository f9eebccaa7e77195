"""`jtts train` (through `jtts.cli.main`, exit codes included) and NGC Adam-state import."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from reference.tacotron2_torch import tacotron2_small_config
from reference.weights import live_tacotron2, save_dle_checkpoint


def _main(argv) -> int:
    from jtts.cli import main

    return main(argv)


@pytest.fixture(scope="module")
def ngc(tmp_path_factory):
    """A small Tacotron 2 saved as a DLE training checkpoint (with Adam state) and converted."""
    from jtts.convert import convert

    tmp = tmp_path_factory.mktemp("ngc")
    cfg = tacotron2_small_config()
    ref = live_tacotron2(cfg, seed=31)
    ckpt = tmp / "tacotron2.pt"
    save_dle_checkpoint(ckpt, ref, cfg, module_prefix=True, with_optimizer=True)
    return ckpt, convert(ckpt, tmp / "model"), cfg


def test_torch_adam_state_lands_on_the_right_parameters(ngc):
    from jtts.convert import tacotron2 as table
    from jtts.tacotron2 import Tacotron2Config
    from jtts.train.optim import adam_state_from_torch, make_optimizer, read_torch_adam

    ckpt, _, cfg = ngc
    adam = read_torch_adam(ckpt)
    raw = torch.load(ckpt, weights_only=True)
    assert adam.step == 1
    names = [k[len("module."):] for k in raw["state_dict"] if not k.endswith(("running_mean", "running_var",
                                                                              "num_batches_tracked"))]
    assert list(adam.exp_avg) == names
    # torch numbers parameters in model order: state i belongs to the i-th parameter
    for i, name in enumerate(names):
        np.testing.assert_array_equal(adam.exp_avg[name], raw["optimizer"]["state"][i]["exp_avg"].numpy())

    rules = table.table(Tacotron2Config.from_dle(cfg))
    shapes = {r.jtts: r.layout.to_jtts(np.zeros(raw["state_dict"]["module." + r.torch].shape,
                                                                  np.float32)).shape
              for r in rules if r.torch in adam.exp_avg}
    params = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    tx, _ = make_optimizer("tacotron2")
    state = adam_state_from_torch(tx.init(params), adam, rules)
    adam_state = state[2]
    assert int(adam_state.count) == 1
    w = "decoder.prenet.layers.0.linear_layer.weight"
    np.testing.assert_array_equal(np.asarray(adam_state.mu["decoder.prenet.0.kernel"]), adam.exp_avg[w].T)
    np.testing.assert_array_equal(np.asarray(adam_state.nu["decoder.prenet.0.kernel"]), adam.exp_avg_sq[w].T)


def test_fine_tune_from_converted_ngc_checkpoint(ngc, tmp_path, capsys):
    from jtts import Tacotron2

    ckpt, model_dir, _ = ngc
    out = tmp_path / "run"
    argv = ["train", "tacotron2", "--synthetic", "-o", str(out), "--steps", "2", "--batch-size", "2",
            "--init-from", str(model_dir), "--init-optimizer", str(ckpt), "--no-progress", "--ckpt-every", "1"]
    assert _main(argv) == 0, capsys.readouterr().err
    assert "trained to step 2" in capsys.readouterr().out
    trained = Tacotron2.from_checkpoint(out / "model")
    before = Tacotron2.from_checkpoint(model_dir)
    a, b = (np.asarray(m.decoder.prenet[0].kernel.get_value()) for m in (trained, before))
    assert a.shape == b.shape and not np.array_equal(a, b)
    # resuming at the end is a no-op run that still succeeds; starting over in the same directory is refused
    assert _main(argv + ["--resume"]) == 0
    assert _main(argv) == 2
    assert "already holds checkpoints" in capsys.readouterr().err


@pytest.mark.parametrize("extra, needle, code", [
    (["--init-from", "/nonexistent/model"], "/nonexistent/model", 2),
    (["--data", "/nonexistent/filelist.txt"], "/nonexistent/filelist.txt", 1),
    (["--init-optimizer", "x.pt"], "--init-optimizer needs --init-from", 2),
])
def test_errors_are_one_line(tmp_path, capsys, extra, needle, code):
    argv = ["train", "waveglow", "-o", str(tmp_path / "r"), "--steps", "1", "--no-progress", *extra]
    got = _main(argv if "--data" in extra else argv + ["--synthetic"])
    err = capsys.readouterr().err.strip()
    assert got == code and len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "r").exists()  # a failed start leaves no run directory


@pytest.mark.parametrize("option, value, allowed", [
    ("--batch-size", "0", "an integer >= 1"), ("--steps", "0", "an integer >= 1"), ("--lr", "-1", "a number > 0"),
    ("--lr", "0", "a number > 0"), ("--lr", "inf", "a number > 0"), ("--weight-decay", "-1e-6", "a number >= 0"),
    ("--grad-clip", "0", "a number > 0"), ("--anneal-epochs", "0", "an integer >= 1"),
    ("--anneal-factor", "1.5", "a number > 0 and <= 1"), ("--keep", "0", "an integer >= 1"),
    ("--ckpt-every", "0", "an integer >= 1"), ("--val-every", "-1", "an integer >= 0"),
    ("--log-every", "0", "an integer >= 1"), ("--seed", "-1", "an integer >= 0 and <= 4294967295"),
    ("--segment-length", "100", "an integer >= 256"), ("--buckets", "0", "an integer >= 1"),
    ("--workers", "-1", "an integer >= 0"), ("--prenet-dropout", "1", "a number >= 0 and < 1"),
    ("--guided-attention", "-0.5", "a number >= 0"), ("--batch-size", "four", "an integer >= 1"),
    ("--gate-pos-weight", "0", "a number > 0"),
])
def test_numeric_options_are_checked_when_parsed(tmp_path, capsys, option, value, allowed):
    with pytest.raises(SystemExit) as e:
        _main(["train", "tacotron2", "--synthetic", "-o", str(tmp_path / "r"), f"{option}={value}"])  # = : "-1e-6"
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    assert f"argument {option}: expected {allowed}, got " in err and value in err, err


def test_preprocess_max_seconds_is_checked_when_parsed(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        _main(["preprocess", str(tmp_path), "-o", str(tmp_path / "c"), "--max-seconds", "0"])
    assert e.value.code == 2 and "argument --max-seconds: expected a number > 0, got 0" in capsys.readouterr().err


def _fake_run(out, kind="tacotron2", step=None, **meta):
    """A run directory as a run of `kind` leaves it: its log, and optionally one checkpoint's meta."""
    out.mkdir(parents=True)
    (out / "train_log.jsonl").write_text(json.dumps({"event": "start", "step": 0, "kind": kind}) + "\n")
    if step is not None:
        (out / "checkpoints" / str(step) / "meta").mkdir(parents=True)
        (out / "checkpoints" / str(step) / "meta" / "metadata").write_text(json.dumps({"kind": kind, **meta}))
    return out


def _output_case(tmp_path, case):
    out = tmp_path / "run"
    if case == "file":
        out.write_text("not a directory")
    elif case == "under-a-file":
        out.write_text("x")
        out = out / "sub"
    elif case == "not-a-run":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif case == "other-kind":
        _fake_run(out, "waveglow")
    elif case == "other-config":
        _fake_run(out, step=5, config={"attention_dim": 128}, dtype="float32", batch_size=2)
    return out


@pytest.mark.parametrize("case, extra, needle", [
    ("file", [], "is a file, not a run directory"),
    ("under-a-file", [], "is a file"),
    ("not-a-run", [], "is not empty and holds no jtts run (notes.txt)"),
    ("other-kind", [], "holds a waveglow run, not tacotron2"),
    ("missing", ["--resume"], "no checkpoint to resume from; drop --resume"),
    ("other-kind", ["--resume"], "holds a waveglow run, not tacotron2"),
    ("other-config", [], "already holds checkpoints (steps up to 5); pass --resume"),
    ("other-config", ["--resume"],
     "it was saved with other settings: config (--config/--set/--init-from): attention_dim 128 (this command: 24)"),
])
def test_output_is_checked_before_any_data_loads(tmp_path, capsys, case, extra, needle):
    """The data set named does not exist: reaching it would be exit 1 naming it, not exit 2 naming the output."""
    out = _output_case(tmp_path, case)
    before = sorted(map(str, tmp_path.rglob("*")))
    argv = ["train", "tacotron2", "--data", str(tmp_path / "no-such-data"), "-o", str(out), "--config", "small",
            "--batch-size", "2", *extra]
    assert _main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "no-such-data" not in err, err
    assert sorted(map(str, tmp_path.rglob("*"))) == before  # nothing created


def test_batch_larger_than_the_data_set_suggests_the_largest(tmp_path, capsys):
    from test_train_data import write_ljspeech

    lj = write_ljspeech(tmp_path / "LJSpeech-1.1")
    assert _main(["train", "tacotron2", "--data", str(lj), "-o", str(tmp_path / "r")]) == 2  # default batch, 48
    err = capsys.readouterr().err.strip()
    assert "--batch-size 48 is larger than the training set" in err and "8 utterances" in err, err
    assert "the largest that fits is --batch-size 8" in err and not (tmp_path / "r").exists()


def test_waveglow_on_a_cache_whose_audio_is_gone(tmp_path, capsys):
    from test_train_data import write_ljspeech

    from jtts.train.preprocess import preprocess

    lj = write_ljspeech(tmp_path / "LJSpeech-1.1")
    preprocess(lj, tmp_path / "cache", frame_step=16)
    shutil.rmtree(lj)
    assert _main(["train", "waveglow", "--data", str(tmp_path / "cache"), "-o", str(tmp_path / "r"),
                  "--config", "small", "--batch-size", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "8 of 8 audio files not found" in err, err
    assert "move the dataset along with the cache" in err and not (tmp_path / "r").exists()


def test_signal_through_the_command_saves_and_prints_how_to_resume(tmp_path, capsys, monkeypatch):
    """SIGTERM while step 2 runs: step 2 is finished and saved, exit 143, and the command printed resumes."""
    import shlex
    import signal

    from jtts.train import cli as train_cli
    from jtts.train.loop import read_log

    real_next, sent = train_cli.SyntheticBatches.__next__, []

    def next_and_signal(self):
        if self.position == 1 and not sent:
            sent.append(os.kill(os.getpid(), signal.SIGTERM))
        return real_next(self)

    monkeypatch.setattr(train_cli.SyntheticBatches, "__next__", next_and_signal)
    out = tmp_path / "run dir"  # a space: the printed command must quote it
    argv = ["train", "tacotron2", "--synthetic", "--config", "small", "--batch-size", "2", "--steps", "3",
            "--log-every", "1", "--ckpt-every", "100", "--no-progress", "-o", str(out)]
    assert _main(argv) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("SIGTERM: finishing this step and saving a checkpoint"), err
    assert err[-1].startswith(f"jtts train: stopped by SIGTERM at step 2; checkpoint {out / 'checkpoints' / '2'}; "
                              f"resume with: jtts train tacotron2 "), err
    command = shlex.split(err[-1].split("resume with: ")[1])
    assert command[-1] == "--resume" and str(out) in command and "--synthetic" in command
    assert _main(command[1:]) == 0, capsys.readouterr().err
    assert "trained to step 3" in capsys.readouterr().out
    assert [e["step"] for e in read_log(out) if e["event"] == "train"] == [1, 2, 3]


def test_batch_not_divisible_by_devices(tmp_path):
    """With 4 (forced host) devices a batch of 3 cannot be split evenly: a usage error before any step."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-m", "jtts", "train", "waveglow", "--synthetic", "--batch-size", "3",
                          "--config", "small", "--steps", "1", "--no-progress", "-o", str(tmp_path / "r")],
                         env=env, capture_output=True, text=True, timeout=300)
    err = res.stderr.strip()
    assert res.returncode == 2 and len(err.splitlines()) == 1 and "multiple" in err and "4" in err, err


def test_train_on_ljspeech_with_validation_and_exact_resume(tmp_path, capsys):
    """Real data through train.data (Grain iterator state in the checkpoint): 3 steps in one go, or 2 then
    resumed to 3, log the same losses; validation writes its picture."""
    from test_train_data import write_ljspeech

    from jtts.train.loop import read_log

    lj = write_ljspeech(tmp_path / "LJSpeech-1.1")
    common = ["train", "tacotron2", "--data", str(lj), "--config", "small", "--batch-size", "2",
              "--buckets", "1", "--log-every", "1", "--ckpt-every", "1", "--no-progress"]
    validation = ["--val", str(lj), "--val-every", "2"]  # one run validates: it does not change training

    def losses(out):
        return [e["loss"] for e in read_log(out) if e["event"] == "train"]

    assert _main(common + validation + ["-o", str(tmp_path / "a"), "--steps", "3"]) == 0, capsys.readouterr().err
    assert _main(common + ["-o", str(tmp_path / "b"), "--steps", "2"]) == 0, capsys.readouterr().err
    assert _main(common + ["-o", str(tmp_path / "b"), "--steps", "3", "--resume"]) == 0, capsys.readouterr().err
    full, resumed = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert len(full) == 3 and len(resumed) == 3
    np.testing.assert_allclose(resumed, full, rtol=1e-6)
    assert (tmp_path / "a" / "val" / "step_0000002.png").is_file()
    val = [e for e in read_log(tmp_path / "a") if e["event"] == "val"]
    assert [e["step"] for e in val] == [2, 3] and all(np.isfinite(e["loss"]) for e in val)
