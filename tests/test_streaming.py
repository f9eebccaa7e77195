"""Streaming (jtts.pipeline.iter_sentences, `jtts synthesize -o -`) gives the non-streaming audio, in order,
starting after one sentence's work; long mels are vocoded window by window (jtts.chunked) within float32
rounding of the whole-mel result."""
from __future__ import annotations

import io
import struct
import sys

import jax
import numpy as np
import pytest
import soundfile as sf

import jtts.cli as cli
import jtts.pipeline
from jtts.chunked import chunked_infer, context_frames
from jtts.pipeline import iter_sentences, synthesize
from jtts.waveglow import WaveGlowConfig
from robust_helpers import tiny

STEPS = 12
TEXTS = ["The first text has two sentences. This is the second.", "Then one more.",
         "And a last text: three short ones. Two. Three."]
KW = dict(sigma=0.6, seed=4, pause=0.15, retry=False)


@pytest.fixture(scope="module")
def models():
    from jtts import Denoiser

    vocoder = tiny("waveglow", seed=2).inference()
    return tiny("tacotron2", seed=1, max_decoder_steps=STEPS), vocoder, Denoiser(vocoder)


def test_stream_is_the_utterances_sentence_by_sentence(models):
    taco, vocoder, denoiser = models
    utts = synthesize(TEXTS, taco, vocoder, denoiser, batch_size=4, **KW)
    spoken = list(iter_sentences(TEXTS, taco, vocoder, denoiser, batch_size=2, **KW))
    assert [(s.utterance, s.index, s.last) for s in spoken] == [(0, 0, False), (0, 1, True), (1, 0, True),
                                                               (2, 0, False), (2, 1, False), (2, 2, True)]
    assert [s.text for s in spoken] == [t for u in utts for t in u.sentences]
    gap = np.zeros(round(0.15 * 22050), np.float32)
    scale = max(np.abs(u.audio).max() for u in utts)
    for u, text in enumerate(TEXTS):
        mine = [s.audio for s in spoken if s.utterance == u]
        joined = np.concatenate([p for a in mine for p in (gap, a)][1:])
        # other batches than the utterance iterator's: equal up to float rounding (measured: 0 to 2e-7)
        assert joined.shape == utts[u].audio.shape and np.abs(joined - utts[u].audio).max() <= 1e-5 * scale
        assert [s.outcome.health for s in spoken if s.utterance == u] == utts[u].health


def test_overlap_changes_nothing(models):
    taco, vocoder, denoiser = models
    a = [s.audio for s in iter_sentences(TEXTS, taco, vocoder, denoiser, overlap=True, **KW)]
    b = [s.audio for s in iter_sentences(TEXTS, taco, vocoder, denoiser, overlap=False, **KW)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_first_sentence_comes_before_the_rest_is_decoded(models, monkeypatch):
    taco, vocoder, denoiser = models
    real, batches = jtts.pipeline._decode_batch, []

    def counting(batch, *args):
        batches.append(list(batch))
        return real(batch, *args)

    monkeypatch.setattr(jtts.pipeline, "_decode_batch", counting)
    text = " ".join(f"Sentence number {w}." for w in ("one", "two", "three", "four", "five", "six", "seven"))
    it = iter_sentences([text], taco, vocoder, denoiser, batch_size=2, **KW)
    first = next(it)
    assert first.index == 0 and batches[0] == [(0, 0)]
    assert len(batches) <= 2  # the first sentence alone, and at most the next batch, decoding ahead
    assert [s.index for s in it] == [1, 2, 3, 4, 5, 6] and len(batches) == 4


# -- chunked WaveGlow ------------------------------------------------------------------------------------------

def test_context_is_the_receptive_field():
    assert context_frames(WaveGlowConfig()) == 8  # 255 groups of 8 samples on each side: 7.97 frames
    assert context_frames(WaveGlowConfig(n_layers=4, n_channels=16)) == 1


@pytest.fixture(scope="module")
def wn4():
    return tiny("waveglow", seed=5, n_layers=4, n_flows=6, n_early_every=3).inference()


def test_chunked_vocoding_equals_the_whole_mel(wn4):
    mel = (np.random.default_rng(0).standard_normal((1, 80, 61)) - 4.0).astype(np.float32)
    key = jax.random.key(9)
    whole = np.asarray(wn4.infer(mel, sigma=0.8, key=key))
    scale = np.linalg.norm(whole)
    errors = {}
    for chunk in (4, 8, 16):
        out = np.asarray(chunked_infer(wn4, mel, sigma=0.8, key=key, chunk=chunk))
        assert out.shape == whole.shape
        errors[chunk] = np.linalg.norm(out - whole) / scale
    # float32 rounding only (measured: about 1.5e-7 on each chunk size)
    assert max(errors.values()) < 2e-6, errors
    # a window without the receptive field's context is wrong at every seam: the check above can fail
    assert np.linalg.norm(np.asarray(chunked_infer(wn4, mel, sigma=0.8, key=key, chunk=8, context=0)) - whole) \
        > 1e-2 * scale
    # short mels go to infer whole; z given instead of a key gives the same audio
    z = np.asarray(jax.random.normal(key, (1, 8, 61 * 32)))
    assert np.array_equal(np.asarray(chunked_infer(wn4, mel[:, :, :16], sigma=0.8, key=key, chunk=8)),
                          np.asarray(wn4.infer(mel[:, :, :16], sigma=0.8, key=key)))
    assert np.linalg.norm(np.asarray(chunked_infer(wn4, mel, sigma=0.8, z=z, chunk=8)) - whole) < 2e-6 * scale


# -- jtts synthesize -o - ----------------------------------------------------------------------------------------

class _Pipe(io.TextIOWrapper):
    def isatty(self):
        return False


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    import dataclasses

    from jtts.checkpoint import flat_state, save_model

    root = tmp_path_factory.mktemp("stream_models")
    out = {}
    for kind, model in (("tacotron2", tiny("tacotron2", seed=1, max_decoder_steps=STEPS)),
                        ("waveglow", tiny("waveglow", seed=2))):
        params = {k: np.asarray(v[...]) for k, v in flat_state(model).items()}
        out[kind] = str(save_model(root / kind, kind, dataclasses.asdict(model.config), params))
    return out


def _synth(model_dirs, *argv):
    return cli.main(["synthesize", *argv, "--tacotron2", model_dirs["tacotron2"], "--waveglow",
                     model_dirs["waveglow"], "--seed", "4", "--pause", "0.15", "-q"])


def _stdout(monkeypatch) -> io.BytesIO:
    buf = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", _Pipe(buf))
    return buf


@pytest.mark.parametrize("fmt", [[], ["--float", "--raw"]])
def test_cli_stream_equals_the_files(fmt, model_dirs, tmp_path, monkeypatch):
    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n")
    assert _synth(model_dirs, "-i", str(tmp_path / "in.txt"), "-o", f"{tmp_path}/files/", *fmt[:1]) == 0
    buf = _stdout(monkeypatch)
    assert _synth(model_dirs, "-i", str(tmp_path / "in.txt"), "-o", "-", "--stream", *fmt) == 0
    data = buf.getvalue()
    if "--raw" in fmt:
        samples = np.frombuffer(data, "<f4")
    else:
        riff, size, wave, _, fmt_size, tag, channels, rate, byte_rate, align, bits = struct.unpack(
            "<4sI4s4sIHHIIHH", data[:36])
        assert (riff, size, wave, fmt_size, tag, channels, rate, byte_rate, align, bits) == (
            b"RIFF", 0xFFFFFFFF, b"WAVE", 16, 1, 1, 22050, 44100, 2, 16)
        assert data[36:44] == b"data" + struct.pack("<I", 0xFFFFFFFF)
        samples = np.frombuffer(data[44:], "<i2")
    files = [sf.read(tmp_path / "files" / f"000{i}.wav", dtype="float32" if "--raw" in fmt else "int16")[0]
             for i in (1, 2, 3)]
    gap = np.zeros(round(0.15 * 22050), files[0].dtype)
    want = np.concatenate([files[0], gap, files[1], gap, files[2]])
    # the stream decodes other batches than the files: equal up to float rounding, which can move an int16
    # sample by one step
    assert samples.shape == want.shape and np.abs(samples.astype(np.float64) - want).max() <= (
        1e-5 * np.abs(want).max() if "--raw" in fmt else 1)


def test_cli_stream_usage_errors(model_dirs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_load", lambda *a: pytest.fail("models loaded"))
    for argv, needle in ((["-o", str(tmp_path / "x.wav"), "--stream"], "--stream writes to stdout: give -o -"),
                         (["-o", "-", "--plot"], "-o - streams audio to stdout; --plot need"),
                         (["-o", str(tmp_path / "x.wav"), "--raw"], "--raw writes to stdout")):
        _stdout(monkeypatch)
        assert _synth(model_dirs, "Hello.", *argv) == 2
        assert needle in capsys.readouterr().err
    monkeypatch.setattr(_Pipe, "isatty", lambda self: True)
    assert _synth(model_dirs, "Hello.", "-o", "-") == 2
    assert "stdout is a terminal" in capsys.readouterr().err


def test_cli_decoder_options_reach_the_decoder(model_dirs, tmp_path):
    from jtts.pipeline import synthesize as speak_api
    from jtts.tacotron2 import Tacotron2

    runs = {"plain": [], "window": ["--attention-window", "1", "--gate-threshold", "0.9", "--max-decoder-steps", "10"]}
    for name, extra in runs.items():
        assert _synth(model_dirs, "Look around you.", "-o", f"{tmp_path}/{name}/", "--save-mel", "--no-retry",
                      *extra) == 0
    plain, window = (np.load(tmp_path / n / "0001.npy") for n in runs)
    assert plain.shape == (80, STEPS) and window.shape == (80, 10)
    api = speak_api(["Look around you."], Tacotron2.from_checkpoint(model_dirs["tacotron2"]),
                    tiny("waveglow", seed=2).inference(), seed=4, retry=False, attention_window=1,
                    gate_threshold=0.9, max_decoder_steps=10)[0]
    assert np.abs(api.mel - window).max() <= 1e-5 * np.abs(window).max()
    assert np.abs(plain[:, :10] - window).max() > 1e-2 * np.abs(window).max()
    rows = [r.split("\t") for r in (tmp_path / "window" / "manifest.tsv").read_text().splitlines()]
    assert dict(zip(rows[0], rows[1]))["frames"] == "10"

