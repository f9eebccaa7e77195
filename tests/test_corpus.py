"""`jtts corpus espeak`: real espeak-ng speech in an LJSpeech directory that the training code reads as it is."""
from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from jtts.corpus import CorpusSettings, _to_22050, espeak, make_corpus, read_texts
from jtts.errors import DataError, JttsError, UsageError

TEXTS = """\
The birch canoe slid on the smooth planks.

LJSpeech-1.1/wavs/LJ045-0096.wav|Mrs. De Mohrenschildt thought that Oswald,
Hi.
It cost 12 dollars in 1963.
{too_long}
Glue the sheet to the dark blue background.
"""


@pytest.fixture()
def texts(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text(TEXTS.format(too_long="word " * 80), encoding="utf-8")
    return path


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((folder / "wavs").glob("*.wav"))}


def test_corpus_is_an_ljspeech_directory_the_trainer_reads(texts, tmp_path):
    from jtts.train.datasets import read_ljspeech
    from jtts.text import text_to_sequence

    problems = []
    res = make_corpus(texts, tmp_path / "c", CorpusSettings(min_seconds=0.5), report=problems.append)
    # blank line 2 is no entry; "Hi." (line 4) speaks in under 0.5 s; line 6 has 400 characters
    assert [p.split(": ")[0] for p in problems] == [f"{texts}:4", f"{texts}:6"], problems
    assert "outside [0.5, 10] s" in problems[0] and "too long: 399 characters" in problems[1]
    assert res["utterances"] == 4 and res["skipped"] == 2
    rows = [r.split("|") for r in (tmp_path / "c" / "metadata.csv").read_text(encoding="utf-8").splitlines()]
    assert [r[0] for r in rows] == ["00001", "LJ045-0096", "00005", "00007"]
    # the spoken (third) column is the cleaned text: numbers spelled out as Tacotron 2 will read them
    assert rows[2] == ["00005", "It cost 12 dollars in 1963.", "it cost twelve dollars in nineteen sixty-three."]
    assert rows[1][2] == "misess de mohrenschildt thought that oswald,"
    for r in rows:
        info = sf.info(str(tmp_path / "c" / "wavs" / f"{r[0]}.wav"))
        assert (info.samplerate, info.channels, info.subtype, info.format) == (22050, 1, "PCM_16", "WAV")
        assert 0.5 <= info.duration <= 10
    ds = read_ljspeech(tmp_path / "c")
    assert [u.tokens for u in ds] == [tuple(text_to_sequence(r[2])) for r in rows]
    assert sum(u.samples for u in ds) / 22050 == pytest.approx(res["seconds"], rel=1e-9)


def test_speech_is_speech(tmp_path):
    """Not silence or noise: a voiced frame every 10 ms over most of the clip, energy well above espeak's floor."""
    (tmp_path / "t.txt").write_text("A large size in stockings is hard to sell.\n", encoding="utf-8")
    make_corpus(tmp_path / "t.txt", tmp_path / "c", CorpusSettings(jitter=0.0))
    audio, sr = sf.read(str(tmp_path / "c" / "wavs" / "00001.wav"), dtype="float32")
    frames = audio[: len(audio) // 220 * 220].reshape(-1, 220)
    rms_db = 20 * np.log10(np.sqrt(np.mean(frames ** 2, axis=1)) + 1e-9)
    assert 1.5 < len(audio) / sr < 4.0
    assert np.mean(rms_db > -40) > 0.6 and np.max(np.abs(audio)) > 0.2


def test_same_seed_same_bytes_whatever_else_is_spoken(texts, tmp_path):
    s = CorpusSettings(seed=3)
    make_corpus(texts, tmp_path / "a", s, report=lambda _: None)
    # the same lines alone, after other speech: espeak's state carries over unless reset per utterance
    espeak().synth("Something else first, to move the engine's state on.", voice="en-gb")
    only = [line for line in read_texts(texts) if line.uid == "00007"]
    make_corpus(only, tmp_path / "b", s)
    a, b = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert b == {"00007.wav": a["00007.wav"]}
    make_corpus(texts, tmp_path / "c", CorpusSettings(seed=4), report=lambda _: None)
    c = _digest(tmp_path / "c")
    assert c.keys() == a.keys() and all(c[k] != a[k] for k in a)  # another seed: other rate and pitch
    make_corpus(texts, tmp_path / "d", CorpusSettings(seed=3, limit=2), report=lambda _: None)
    assert _digest(tmp_path / "d") == {k: a[k] for k in ("00001.wav", "LJ045-0096.wav")}


def test_prosody_jitter_stays_in_bounds():
    s = CorpusSettings(rate=200, pitch=40, jitter=0.1, seed=1)
    drawn = np.array([s.prosody(i) for i in range(1, 400)])
    assert drawn[:, 0].min() >= 180 and drawn[:, 0].max() <= 220 and len(set(drawn[:, 0])) > 20
    assert drawn[:, 1].min() >= 36 and drawn[:, 1].max() <= 44
    assert CorpusSettings(jitter=0.0).prosody(7) == (175, 50)


def test_voices_and_variants(tmp_path):
    engine = espeak()
    us = engine.synth("Hello there.", voice="en-us", rate=175, pitch=50)
    gb = engine.synth("Hello there.", voice="en-gb", rate=175, pitch=50)  # a language code, voice "gmw/en"
    f3 = engine.synth("Hello there.", voice="en-us+f3", rate=175, pitch=50)
    assert len({us.tobytes(), gb.tobytes(), f3.tobytes()}) == 3
    assert engine.languages()["en-gb"] == "gmw/en"
    with pytest.raises(UsageError, match="no voice 'xx-nowhere'.*en-us"):
        make_corpus([], tmp_path / "c", CorpusSettings(voice="xx-nowhere"))


def test_resampling_keeps_length_and_pitch():
    sr = 16000
    t = np.arange(sr) / sr
    tone = np.round(8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    out = _to_22050(tone, sr)
    assert out.dtype == np.int16 and abs(len(out) - 22050) <= 1
    peak = np.argmax(np.abs(np.fft.rfft(out.astype(np.float64))))
    assert abs(peak * 22050 / len(out) - 440) < 2
    assert _to_22050(tone, 22050) is tone


def test_a_failed_run_leaves_no_metadata(texts, tmp_path, monkeypatch):
    import jtts.corpus as corpus

    out = tmp_path / "c"
    make_corpus(texts, out, report=lambda _: None)
    calls = []
    real = corpus._write_wav

    def failing(path, audio):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        real(path, audio)

    monkeypatch.setattr(corpus, "_write_wav", failing)
    with pytest.raises(OSError, match="disk full"):
        make_corpus(texts, out, overwrite=True, report=lambda _: None)
    assert not (out / "metadata.csv").exists()  # the old list went before the first WAV was replaced
    assert not list((out / "wavs").glob(".*.tmp"))


def test_errors_name_the_input(tmp_path):
    with pytest.raises(DataError, match="no such text file: .*missing.txt"):
        make_corpus(tmp_path / "missing.txt", tmp_path / "c")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9\n")
    with pytest.raises(DataError, match="bad.txt is not UTF-8"):
        make_corpus(bad, tmp_path / "c")
    only_junk = tmp_path / "junk.txt"
    only_junk.write_text("?\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"no usable line in .*junk.txt \(1 skipped\)"):
        make_corpus(only_junk, tmp_path / "c", report=lambda _: None)
    with pytest.raises(UsageError, match="--rate 20 is outside"):
        make_corpus(only_junk, tmp_path / "c", CorpusSettings(rate=20))
    (tmp_path / "a_file").write_text("", encoding="utf-8")
    with pytest.raises(JttsError, match="cannot make the corpus directory .*a_file/wavs: Not a directory"):
        make_corpus(only_junk, tmp_path / "a_file")


def test_command_line(texts, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "jtts.corpus", "espeak", *map(str, args)], capture_output=True,
                              text=True, timeout=300)

    out = tmp_path / "c"
    r = run(texts, "-o", out, "--voice", "en-us+f3", "--limit", "2", "--seed", "5")
    assert r.returncode == 0, r.stderr
    assert "wrote 2 utterances" in r.stdout and len((out / "metadata.csv").read_text().splitlines()) == 2
    r = run(texts, "-o", out)
    assert r.returncode == 2 and r.stderr.strip().startswith("jtts corpus: error:") and "already holds" in r.stderr
    r = run(tmp_path / "nope.txt", "-o", tmp_path / "d")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "nope.txt" in r.stderr
    r = run(texts, "-o", tmp_path / "e", "--voice", "xx-nowhere")
    assert r.returncode == 2 and "no voice 'xx-nowhere'" in r.stderr


def test_preprocess_reads_the_corpus(texts, tmp_path):
    from jtts.train.preprocess import preprocess

    make_corpus(texts, tmp_path / "c", CorpusSettings(limit=2), report=lambda _: None)
    cache = preprocess(tmp_path / "c", tmp_path / "cache", report=lambda _: None)
    assert len(cache) == 2 and cache.cached
