"""Warm start and model configs of `jtts train`: --init-from loads every tensor whose name and shape match,
--ignore-layers re-initialises the named ones (jtts or DLE names, globs), any other mismatch is one error
listing each; --config (preset, JSON file, model directory) and --set choose the config, checked key by key."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from train_helpers import TINY_TACOTRON2


def _main(argv) -> int:
    from jtts.cli import main

    return main(argv)


def _args(argv):
    from jtts.cli import build_parser

    return build_parser().parse_args(argv)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny Tacotron 2 model directory (as `jtts train` or `jtts convert` writes one) and its tensors."""
    from jtts import models
    from jtts.checkpoint import flat_state, save_model

    model = models.build("tacotron2", TINY_TACOTRON2, seed=5)
    params = {k: np.asarray(v.get_value()) for k, v in flat_state(model).items()}
    # BatchNorm statistics that are not the fresh ones, so that loading them is visible
    params = {k: v + 0.25 if k.endswith((".mean", ".var")) else v for k, v in params.items()}
    path = save_model(tmp_path_factory.mktemp("init") / "model", "tacotron2", dataclasses.asdict(model.config), params)
    return path, params


def _built(argv):
    """(config, model) that `jtts train` would start from, without training."""
    from jtts.train import cli as tcli

    args = _args(["train", "tacotron2", "-o", "unused", "--synthetic", *argv])
    tcli._check_options(args)
    config = tcli._config(args)
    return config, tcli._model(args, config)


def _tensors(model):
    from jtts.checkpoint import flat_state

    return {k: np.asarray(v.get_value()) for k, v in flat_state(model).items()}


@pytest.mark.parametrize("pattern", ["embedding", "embedding.embedding", "embedding.weight", "embed*"])
def test_extended_symbol_set_keeps_every_other_tensor(trained, pattern, capsys):
    """n_symbols 40 -> 60: the embedding is fresh (the seed's), everything else -- BatchNorm statistics too --
    is the trained model's, bit for bit."""
    from jtts import models

    path, params = trained
    config, model = _built(["--init-from", str(path), "--set", "n_symbols=60", "--ignore-layers", pattern,
                            "--seed", "9"])
    assert config.n_symbols == 60 and config.postnet_embedding_dim == TINY_TACOTRON2["postnet_embedding_dim"]
    got = _tensors(model)
    fresh = _tensors(models.build("tacotron2", config, seed=9))
    assert set(got) == set(params)
    np.testing.assert_array_equal(got["embedding.embedding"], fresh["embedding.embedding"])
    assert got["embedding.embedding"].shape == (60, TINY_TACOTRON2["symbols_embedding_dim"])
    for name, value in params.items():
        if name != "embedding.embedding":
            np.testing.assert_array_equal(got[name], value, err_msg=name)
    assert "re-initialised: embedding.embedding" in capsys.readouterr().err


def test_same_config_loads_everything(trained):
    path, params = trained
    config, model = _built(["--init-from", str(path)])
    assert config.n_symbols == TINY_TACOTRON2["n_symbols"]
    got = _tensors(model)
    assert all(np.array_equal(got[k], v) for k, v in params.items()) and set(got) == set(params)


def test_ignored_module_is_reinitialised_with_its_statistics(trained):
    from jtts import models

    path, params = trained
    config, model = _built(["--init-from", str(path), "--ignore-layers", "postnet.convs.1", "--seed", "3"])
    got, fresh = _tensors(model), _tensors(models.build("tacotron2", config, seed=3))
    redone = sorted(k for k in got if k.startswith("postnet.convs.1."))
    assert len(redone) == 6  # conv kernel and bias, BatchNorm scale, bias, mean, var
    for k in got:
        np.testing.assert_array_equal(got[k], fresh[k] if k in redone else params[k], err_msg=k)


def test_unnamed_mismatches_are_one_error_listing_each(trained, tmp_path, capsys):
    path, _ = trained
    argv = ["train", "tacotron2", "--synthetic", "-o", str(tmp_path / "r"), "--steps", "1", "--no-progress",
            "--init-from", str(path), "--set", "n_symbols=60", "postnet_n_convolutions=2"]
    assert _main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    # the embedding; the second postnet conv, now the last, which outputs mels (6 tensors); the third conv, which
    # the smaller model has no place for (6)
    assert "13 tensor(s) do not fit" in err and "--ignore-layers" in err, err
    assert "embedding.embedding (40, 32) vs (60, 32); postnet.convs.1.bn.{bias,mean,scale,var} (32,) vs (80,); " \
           "postnet.convs.1.conv.bias (32,) vs (80,); postnet.convs.1.conv.kernel (5, 32, 32) vs (5, 32, 80); " \
           "postnet.convs.2.bn.{bias,mean,scale,var} (80,) vs -; postnet.convs.2.conv.bias (80,) vs -; " \
           "postnet.convs.2.conv.kernel (5, 32, 80) vs -" in err, err
    assert not (tmp_path / "r").exists()
    # naming both lets the run start, and train
    assert _main(argv + ["--ignore-layers", "embedding", "postnet.convs.[12]"]) == 0, capsys.readouterr().err
    from jtts import Tacotron2

    trained_cfg = Tacotron2.from_checkpoint(tmp_path / "r" / "model").config
    assert trained_cfg.n_symbols == 60 and trained_cfg.postnet_n_convolutions == 2


@pytest.mark.parametrize("extra, needle", [
    (["--ignore-layers", "embeding"], "--ignore-layers embeding: names no tensor of the model"),
    (["--set", "n_symbol=60"], "--set n_symbol=60: tacotron2 configs have no key n_symbol (did you mean n_symbols?)"),
    (["--set", "n_symbols=6.5"], "--set n_symbols=6.5: tacotron2 config key n_symbols takes int values"),
    (["--set", "mask_padding=1"], "config key mask_padding takes true/false values"),
    (["--set", "n_symbols"], "expected KEY=VALUE"),
    (["--set", "audio.sample_rate=12000"], "need 0 <= fmin < fmax <= sample_rate / 2 = 6000"),
    (["--set", "n_mel_channels=40"], "audio.n_mels 80 differs from n_mel_channels 40 (set both)"),
    (["--config", "nowhere.json"], "--config nowhere.json: no such file or model directory"),
])
def test_config_and_pattern_errors_are_one_line(trained, tmp_path, capsys, monkeypatch, extra, needle):
    monkeypatch.chdir(tmp_path)
    path, _ = trained
    argv = ["train", "tacotron2", "--synthetic", "-o", str(tmp_path / "r"), "--steps", "1", "--no-progress",
            "--init-from", str(path), *extra]
    try:
        code = _main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "r").exists()


def test_ignore_layers_needs_init_from(tmp_path, capsys):
    argv = ["train", "tacotron2", "--synthetic", "-o", str(tmp_path / "r"), "--ignore-layers", "embedding"]
    assert _main(argv) == 2 and "--ignore-layers needs --init-from" in capsys.readouterr().err


def test_config_file_directory_and_sets(trained, tmp_path):
    """--config JSON: partial (the rest DLE's defaults) or a model.json; a model directory; --set over it."""
    from jtts.tacotron2 import Tacotron2Config
    from jtts.train.configs import resolve

    path, _ = trained
    partial = tmp_path / "c.json"
    partial.write_text(json.dumps({"n_symbols": 70, "audio": {"sample_rate": 16000}}))
    cfg = resolve("tacotron2", str(partial), ["audio.fmax=7600", "prenet_dim=64"])
    assert cfg == Tacotron2Config(n_symbols=70, prenet_dim=64, audio={"sample_rate": 16000, "fmax": 7600.0})
    assert resolve("tacotron2", str(path)) == resolve("tacotron2", str(path / "model.json")) == \
        resolve("tacotron2", None, (), path) == Tacotron2Config(**TINY_TACOTRON2)
    assert resolve("tacotron2", "small").symbols_embedding_dim == 64
    assert resolve("tacotron2", None) == Tacotron2Config()
    with pytest.raises(Exception, match="holds a tacotron2 config, not waveglow"):
        resolve("waveglow", str(path / "model.json"))


def test_resume_compares_the_resolved_config(trained, tmp_path, capsys):
    """A run started with --set n_symbols=60 resumes with the same options, and is refused with others."""
    path, _ = trained
    argv = ["train", "tacotron2", "--synthetic", "-o", str(tmp_path / "r"), "--no-progress", "--batch-size", "2",
            "--init-from", str(path), "--set", "n_symbols=60", "--ignore-layers", "embedding"]
    assert _main(argv + ["--steps", "1"]) == 0, capsys.readouterr().err
    assert _main(argv + ["--steps", "2", "--resume"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert _main(argv[:-4] + ["--set", "n_symbols=61", "--ignore-layers", "embedding", "--steps", "3",
                              "--resume"]) == 2
    err = capsys.readouterr().err
    assert "n_symbols 60 (this command: 61)" in err and "--config/--set/--init-from" in err, err
