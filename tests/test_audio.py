"""jtts.audio against a PyTorch conv-based STFT that follows NVIDIA's numerics (tests/reference/stft_torch.py,
itself checked bit-for-bit against DeepLearningExamples' STFT/TacotronSTFT), plus WAV I/O."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import EPS32, rel, ulps
from jtts import audio as A
from reference.stft_torch import ConvSTFT, log_mel

SR = 22050
# Spectra, audio and log-mels against the reference: relative L2 error. By Parseval a spectrum's norm is its
# frame's (nothing cancels), and the log-mel's norm is dominated by its large values. Measured here: <= 6e-7.
BOUND = 1e-5
# Elementwise, in float32 ulps: audio against max |x| (measured 2.5), log-mels against 1 + |mel| (measured 0.95):
# a log-mel's rounding is the mel power's relative rounding plus the log's own, eps * |mel|.
AUDIO_ULPS, MEL_ULPS = 64, 16


def chirp_noise(seconds=2.5, seed=0):
    """Two rows with different content: a rising chirp plus Gaussian noise, and a decaying tone plus
    uniform noise. Length deliberately not a multiple of the hop."""
    n = int(seconds * SR) + 77
    t = np.arange(n) / SR
    rng = np.random.default_rng(seed)
    a = 0.5 * np.sin(2 * np.pi * (100 * t + 800 * t ** 2)) + 0.05 * rng.standard_normal(n)
    b = 0.3 * np.sin(2 * np.pi * 440 * t) * np.exp(-t) + 0.2 * rng.uniform(-1, 1, n)
    return np.clip(np.stack([a, b]), -1, 1).astype(np.float32)


@pytest.fixture(scope="module")
def x():
    return chirp_noise()


@pytest.fixture(scope="module")
def ref():
    return ConvSTFT(A.N_FFT, A.HOP, A.WIN)


def test_stft_matches_reference(x, ref):
    mag, phase = A.stft(x)
    rmag, rphase = ref.transform(torch.from_numpy(x))
    assert mag.shape == phase.shape == (2, 513, 1 + x.shape[1] // 256) == tuple(rmag.shape)
    assert mag.dtype == phase.dtype == jnp.float32
    assert rel(mag, rmag) <= BOUND
    # phase is ill-defined where the magnitude is ~0: compare the complex spectra instead
    z = np.asarray(mag) * np.exp(1j * np.asarray(phase))
    rz = rmag.numpy() * np.exp(1j * rphase.numpy())
    assert rel(np.stack([z.real, z.imag]), np.stack([rz.real, rz.imag])) <= BOUND


def test_istft_matches_reference(x, ref):
    rmag, rphase = ref.transform(torch.from_numpy(x))
    g = torch.Generator().manual_seed(0)
    spectra = {
        "consistent": (rmag, rphase),
        "denoised": (torch.clamp(rmag - 0.05, min=0), rphase),  # what the denoiser feeds it
        "random phase": (rmag, torch.rand(rphase.shape, generator=g) * 2 * np.pi - np.pi),
    }
    for name, (m, p) in spectra.items():
        y = A.istft(m.numpy(), p.numpy())
        assert y.shape == (2, (m.shape[-1] - 1) * 256), name
        assert rel(y, ref.inverse(m, p)) <= BOUND, name


def test_round_trip(x):
    y = np.asarray(A.istft(*A.stft(x)))
    n = x.shape[1] // 256 * 256
    assert y.shape == (2, n)
    assert ulps(y, x[:, :n], np.abs(x).max()) <= AUDIO_ULPS  # edges included: the reflect padding is inverted too
    odd = x[:, :5000]  # a window shorter than the frame, still invertible
    y = np.asarray(A.istft(*A.stft(odd, win=800), win=800))
    assert ulps(y, odd[:, :y.shape[1]], np.abs(odd).max()) <= AUDIO_ULPS


def test_mel_matches_reference(x):
    mel = A.mel_spectrogram(x)
    assert mel.shape == (2, A.N_MELS, 1 + x.shape[1] // A.HOP) and mel.dtype == jnp.float32
    expected = log_mel(torch.from_numpy(x), A.mel_filterbank())
    assert rel(mel, expected) <= BOUND
    assert float(mel.min()) >= np.log(1e-5) * (1 + 4 * EPS32)  # the clamp, to a few ulps of log's rounding


def test_mel_shapes_and_single(x):
    for n in (513, 1000, 1024, 22050):
        assert A.mel_spectrogram(x[0, :n]).shape == (80, 1 + n // 256)
        assert A.stft(x[:, :n])[0].shape == (2, 513, 1 + n // 256)
    single, batched = A.mel_spectrogram(x[1]), np.asarray(A.mel_spectrogram(x)[1])
    assert ulps(single, batched, 1 + np.abs(batched)) <= MEL_ULPS
    with pytest.raises(ValueError, match="too short"):
        A.stft(x[:, :512])
    with pytest.raises(ValueError, match="dimensions"):
        A.mel_spectrogram(x[None])


def test_mel_fmax_and_filterbank(x):
    fb = A.mel_filterbank()
    assert fb.shape == (80, 513) and fb.dtype == np.float32 and fb is A.mel_filterbank()
    assert not fb.flags.writeable
    assert not np.any(fb[:, 372:]) and np.all(fb.any(axis=1))  # bin 372 is 8010 Hz, above fmax
    low = A.mel_spectrogram(x, fmax=4000.0)
    assert low.shape == (2, 80, 1 + x.shape[1] // 256)
    assert not np.allclose(low, A.mel_spectrogram(x))


def test_jit(x):
    f = jax.jit(lambda w: A.istft(*A.stft(w)) + A.mel_spectrogram(w).sum())
    assert f(x).shape == (2, x.shape[1] // 256 * 256)
    g = jax.jit(lambda w: A.mel_spectrogram(w, fmax=7600.0))
    eager = np.asarray(A.mel_spectrogram(x, fmax=7600.0))
    assert ulps(g(x), eager, 1 + np.abs(eager)) <= MEL_ULPS


# --- WAV I/O ---

def test_save_load_pcm16(tmp_path, x):
    path = tmp_path / "a.wav"
    A.save_wav(path, x[0])
    assert sf.info(str(path)).subtype == "PCM_16"
    y, sr = A.load_wav(path)
    assert sr == SR and y.dtype == np.float32 and y.shape == x[0].shape
    # quantisation, not rounding: libsndfile scales by 32768 and truncates, so below one step (0.99994 here)
    assert np.abs(y - x[0]).max() <= 1 / 32768
    ints, _ = sf.read(str(path), dtype="int16")
    np.testing.assert_array_equal(y, ints / np.float32(32768))  # int16 / 32768 exactly


def test_save_load_float_exact_and_clipped(tmp_path, x):
    path = tmp_path / "f.wav"
    A.save_wav(path, x[1], subtype="FLOAT")
    y, _ = A.load_wav(path)
    np.testing.assert_array_equal(y, x[1])
    A.save_wav(path, np.array([1.5, -2.0, 0.25], np.float32), subtype="FLOAT")
    np.testing.assert_array_equal(A.load_wav(path)[0], [1.0, -1.0, 0.25])
    assert sorted(os.listdir(tmp_path)) == ["f.wav"]  # no temporary files left behind


def test_resample_keeps_frequency(tmp_path):
    t = np.arange(16000) / 16000
    sf.write(str(tmp_path / "s.wav"), (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), 16000,
             subtype="FLOAT")
    y, sr = A.load_wav(tmp_path / "s.wav")
    assert sr == SR and abs(len(y) - SR) <= 1
    spectrum = np.abs(np.fft.rfft(y[1000:-1000] * np.hanning(len(y) - 2000)))
    peak_hz = np.argmax(spectrum) * SR / (len(y) - 2000)
    assert abs(peak_hz - 1000) < 2
    # the peak is found on the FFT's 1.1 Hz bin grid (999.67 Hz here); the amplitude is soxr's passband (0.499997)
    assert np.abs(y[1000:-1000]).max() == pytest.approx(0.5, abs=0.01)
    native, native_sr = A.load_wav(tmp_path / "s.wav", sample_rate=None)
    assert native_sr == 16000 and len(native) == 16000


def test_multichannel_to_mono(tmp_path, x):
    sf.write(str(tmp_path / "st.wav"), x.T, SR, subtype="FLOAT")
    y, _ = A.load_wav(tmp_path / "st.wav")
    assert y.shape == (x.shape[1],)
    assert ulps(y, x.mean(axis=0), np.abs(x).sum(axis=0)) <= 4  # (a + b) / 2 rounds once or twice


def test_load_errors(tmp_path):
    missing = tmp_path / "nope.wav"
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        A.load_wav(missing)
    junk = tmp_path / "junk.wav"
    junk.write_text("not audio")
    with pytest.raises(ValueError, match="junk.wav"):
        A.load_wav(junk)


def test_save_failures_leave_no_file(tmp_path, x):
    target = tmp_path / "missing_dir" / "out.wav"
    with pytest.raises(FileNotFoundError):
        A.save_wav(target, x[0])
    assert not target.parent.exists()
    # a write that fails midway leaves neither a partial target nor a temporary file,
    # and an existing file at the target is untouched
    good = tmp_path / "keep.wav"
    A.save_wav(good, x[0])
    before = good.read_bytes()
    with pytest.raises(Exception):
        A.save_wav(good, x[0], subtype="NOT_A_SUBTYPE")
    with pytest.raises(ValueError, match="NaN"):
        A.save_wav(good, np.array([0.0, np.nan], np.float32))
    assert good.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["keep.wav"]
