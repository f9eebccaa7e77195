"""`jtts train` (through its own parser: jtts.cli wires it in) and NGC Adam-state import."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from reference.tacotron2_torch import tacotron2_small_config
from reference.weights import live_tacotron2, save_dle_checkpoint


def _main(argv) -> int:
    from jtts.train.cli import add_parser

    parser = argparse.ArgumentParser(prog="jtts")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


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
    shapes = {r.jtts.replace("/", "."): r.layout.to_jtts(np.zeros(raw["state_dict"]["module." + r.torch].shape,
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
    (["--init-from", "/nonexistent/model"], "/nonexistent/model", 1),
    (["--data", "/nonexistent/filelist.txt"], "/nonexistent/filelist.txt", 1),
    (["--init-optimizer", "x.pt"], "--init-optimizer needs --init-from", 2),
])
def test_errors_are_one_line(tmp_path, capsys, extra, needle, code):
    argv = ["train", "waveglow", "-o", str(tmp_path / "r"), "--steps", "1", "--no-progress", *extra]
    got = _main(argv if "--data" in extra else argv + ["--synthetic"])
    err = capsys.readouterr().err.strip()
    assert got == code and len(err.splitlines()) == 1 and needle in err, err


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
