"""The audio front end is a property of the model: it lives in the config that convert and train write (DLE's
22050/1024/256/1024/80/0/8000 by default, also for model.json files written before it existed), `jtts preprocess`
and `jtts train` read data with it, a mel cache of another front end is refused, and a 16 kHz model trains and
synthesizes end to end."""
from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
import soundfile as sf

from helpers import ulps
from test_train_data import CLIPS, MEL_ULPS, write_ljspeech
from train_helpers import TINY_TACOTRON2

TINY_WAVEGLOW = dict(n_flows=4, n_early_every=2, n_layers=2, n_channels=16)
SR16 = {"sample_rate": 16000}


def _main(argv) -> int:
    from jtts.cli import main

    return main(argv)


def _save(tmp_path, kind, values, drop_audio=False):
    from jtts import models
    from jtts.checkpoint import flat_state, save_model

    model = models.build(kind, values, seed=1)
    config = dataclasses.asdict(model.config)
    if drop_audio:
        del config["audio"]
    params = {k: np.asarray(v.get_value()) for k, v in flat_state(model).items()}
    return save_model(tmp_path / kind, kind, config, params)


@pytest.mark.parametrize("kind, values", [("tacotron2", TINY_TACOTRON2), ("waveglow", TINY_WAVEGLOW),
                                          ("tacotron2", dict(TINY_TACOTRON2, n_mel_channels=40))])
def test_model_json_without_a_front_end_loads_with_dle_s(tmp_path, kind, values):
    from jtts import models
    from jtts.frontend import AudioConfig, frontend_of

    path = _save(tmp_path, kind, values, drop_audio=True)
    assert "audio" not in json.loads((path / "model.json").read_text())["config"]
    model = models.load(path)
    n_mels = values.get("n_mel_channels", 80)
    assert frontend_of(model) == AudioConfig(n_mels=n_mels) == AudioConfig(22050, 1024, 256, 1024, n_mels, 0.0, 8000.0)


def test_convert_and_the_config_carry_the_front_end(tmp_path):
    """`jtts convert` writes the front end into model.json (DLE's checkpoints hold none: its defaults); DLE's
    constructor arguments (export) never include it."""
    from jtts.convert import convert, export
    from jtts.tacotron2 import Tacotron2Config
    from jtts.waveglow import WaveGlowConfig

    pt = export(_save(tmp_path, "tacotron2", dict(TINY_TACOTRON2, audio=SR16)), tmp_path / "t.pt")
    import torch

    assert "audio" not in torch.load(pt, weights_only=True)["config"]
    meta = json.loads((convert(pt, tmp_path / "converted") / "model.json").read_text())
    assert meta["config"]["audio"] == {"sample_rate": 22050, "n_fft": 1024, "hop": 256, "win": 1024, "n_mels": 80,
                                       "fmin": 0.0, "fmax": 8000.0}
    assert Tacotron2Config(audio=SR16).audio.sample_rate == 16000
    with pytest.raises(ValueError, match="audio.hop must be the upsampling stride 256"):
        WaveGlowConfig(audio={"hop": 200})
    with pytest.raises(ValueError, match=r"unknown audio setting\(s\) rate"):
        Tacotron2Config(audio={"rate": 16000})


def test_shared_frontend_refuses_a_mismatched_pair():
    from jtts.errors import JttsError
    from jtts.frontend import shared_frontend
    from jtts.tacotron2 import Tacotron2Config
    from jtts.waveglow import WaveGlowConfig

    assert shared_frontend(Tacotron2Config(audio=SR16), WaveGlowConfig(audio=SR16)).sample_rate == 16000
    with pytest.raises(JttsError, match="different audio front ends .sample_rate 16000 vs 22050"):
        shared_frontend(Tacotron2Config(audio=SR16), WaveGlowConfig())


@pytest.mark.parametrize("audio", [dict(sample_rate=16000), dict(sample_rate=16000, n_fft=800, hop=160, win=640,
                                                                   fmin=50.0, fmax=7600.0, n_mels=64)])
def test_batched_mels_equal_each_clip_s_for_any_front_end(audio):
    """The padding that lets clips of many lengths share one compiled shape holds for any front end, also for a
    hop that does not divide n_fft / 2 (160 of 400: the clip sits 80 samples into the buffer, 3 frames dropped)."""
    from jtts.audio import mel_spectrogram
    from jtts.frontend import AudioConfig
    from jtts.train.datasets import mels_from_audio

    fe = AudioConfig(**audio)
    rng = np.random.default_rng(0)
    clips = [0.3 * rng.standard_normal(n).astype(np.float32) for n in (4000, 2345, 6100)]
    batch = mels_from_audio(clips, fe=fe)
    for clip, mel in zip(clips, batch):
        ref = np.asarray(mel_spectrogram(clip, **fe.mel_kwargs()))
        frames = ref.shape[1]
        assert frames == fe.frames(len(clip)) and ref.shape[0] == fe.n_mels
        assert ulps(mel[:, :frames], ref, 1 + np.abs(ref)) <= MEL_ULPS
        assert not mel[:, frames:].any()


@pytest.fixture(scope="module")
def lj(tmp_path_factory):
    return write_ljspeech(tmp_path_factory.mktemp("data") / "LJSpeech-1.1")


@pytest.fixture(scope="module")
def runs16(lj, tmp_path_factory):
    """16 kHz: a mel cache (preprocess --set), a tiny Tacotron 2 trained on it and a tiny WaveGlow trained on the
    audio itself, both from a JSON config file; (cache, tacotron2 run, waveglow run, stderr of each)."""
    tmp = tmp_path_factory.mktemp("r16")
    (tmp / "taco.json").write_text(json.dumps({**TINY_TACOTRON2, "n_symbols": 148, "max_decoder_steps": 12,
                                               "audio": SR16}))
    (tmp / "wg.json").write_text(json.dumps({**TINY_WAVEGLOW, "audio": SR16}))
    assert _main(["preprocess", str(lj), "-o", str(tmp / "cache16"), "--set", "audio.sample_rate=16000", "-q"]) == 0
    common = ["--steps", "2", "--batch-size", "2", "--no-progress", "--log-every", "1"]
    assert _main(["train", "tacotron2", "--config", str(tmp / "taco.json"), "--data", str(tmp / "cache16"),
                  "--buckets", "1", "-o", str(tmp / "taco"), *common]) == 0
    assert _main(["train", "waveglow", "--config", str(tmp / "wg.json"), "--data", str(lj),
                  "--segment-length", "2048", "-o", str(tmp / "wg"), *common]) == 0
    return tmp


def test_preprocess_uses_the_given_front_end(runs16, lj):
    from jtts.audio import load_wav, mel_spectrogram
    from jtts.train.datasets import load_cache

    cache = load_cache(runs16 / "cache16")
    manifest = json.loads((runs16 / "cache16" / "manifest.json").read_text())
    assert manifest["mel"]["sample_rate"] == 16000 and cache.audio.sample_rate == 16000
    for u, clip in zip(cache, CLIPS):
        audio, sr = load_wav(u.audio, 16000)
        assert sr == 16000 and u.samples == len(audio)
        # a 16 kHz clip is read as it is; a 22050 Hz one resampled: ~len * 16000 / 22050 samples
        assert u.samples == (round(clip[2] * 16000) if clip[1] == 16000 else
                             np.floor(round(clip[2] * 22050) * 16000 / 22050 + 0.5))
        ref = np.asarray(mel_spectrogram(audio, sample_rate=16000))
        mel = np.load(u.mel)
        assert mel.shape == ref.shape == (80, 1 + len(audio) // 256)
        assert ulps(mel, ref, 1 + np.abs(ref)) <= MEL_ULPS


def test_trained_models_record_the_front_end(runs16):
    from jtts import Tacotron2, WaveGlow
    from jtts.frontend import frontend_of

    for model in (Tacotron2.from_checkpoint(runs16 / "taco" / "model"),
                  WaveGlow.from_checkpoint(runs16 / "wg" / "model")):
        assert frontend_of(model).sample_rate == 16000


def test_a_cache_of_another_front_end_is_refused(runs16, lj, tmp_path, capsys):
    """The default (22050 Hz) model on the 16 kHz cache: one line naming both rates, before any step."""
    code = _main(["train", "tacotron2", "--config", "small", "--data", str(runs16 / "cache16"), "--steps", "1",
                  "--batch-size", "2", "--no-progress", "-o", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert "another audio front end than the model's (sample_rate 16000 vs 22050: cache vs model)" in err, err
    assert not (tmp_path / "r").exists()
    # preprocess takes the model's front end from its directory
    assert _main(["preprocess", str(lj), "-o", str(tmp_path / "c"), "--config", str(runs16 / "taco" / "model"),
                  "-q"]) == 0
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["mel"]["sample_rate"] == 16000


def test_16khz_model_synthesizes_at_16khz(runs16, tmp_path, capsys, monkeypatch):
    """`jtts synthesize` writes the models' rate, to files and to a pipe; a 16 kHz Tacotron 2 with a 22050 Hz
    WaveGlow is refused."""
    out = tmp_path / "a.wav"
    argv = ["synthesize", "Hello there.", "--tacotron2", str(runs16 / "taco" / "model"), "--offline", "-q",
            "--denoise", "0", "--max-decoder-steps", "12", "--gate-threshold", "1", "--no-retry"]
    wg16 = ["--waveglow", str(runs16 / "wg" / "model")]
    assert _main(argv + wg16 + ["-o", str(out)]) == 0, capsys.readouterr().err
    info = sf.info(out)
    assert info.samplerate == 16000 and info.frames == 12 * 256, info
    # --sample-rate resamples from the models' rate: 12 frames of 16 kHz audio at 8 kHz
    assert _main(argv + wg16 + ["-o", str(tmp_path / "r.wav"), "--sample-rate", "8000"]) == 0
    info = sf.info(tmp_path / "r.wav")
    assert info.samplerate == 8000 and info.frames == 12 * 256 // 2, info
    pipe = io.BytesIO()
    with monkeypatch.context() as m:
        m.setattr("sys.stdout", io.TextIOWrapper(pipe, write_through=True))
        assert _main(argv + wg16 + ["-o", "-"]) == 0
        streamed = pipe.getvalue()  # before the wrapper goes, closing the buffer
    assert streamed[:4] == b"RIFF" and int.from_bytes(streamed[24:28], "little") == 16000
    assert len(streamed) == 44 + 2 * 12 * 256
    other = _save(tmp_path, "waveglow", TINY_WAVEGLOW)
    assert _main(argv + ["--waveglow", str(other), "-o", str(tmp_path / "b.wav")]) == 1
    err = capsys.readouterr().err
    assert "different audio front ends (sample_rate 16000 vs 22050)" in err, err
