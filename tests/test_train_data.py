"""Training data: LJSpeech and DLE filelist reading, bad-data reports, the mel cache, bucketed Tacotron 2
batches, WaveGlow segments, determinism and exact resume. Small synthetic WAVs written to tmp dirs."""
import argparse
import contextlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from helpers import ulps
from jtts.audio import load_wav, mel_spectrogram
from jtts.text import text_to_sequence
from jtts.train import preprocess as P
from jtts.train.data import (DataError, load_cache, load_dataset, read_filelist, read_ljspeech,
                             tacotron2_batches, tacotron2_val_batches, waveglow_batches, waveglow_val_batches)

SR = 22050
# Log-mels computed twice (cache vs on the fly, a batch vs one clip): float32 ulps of 1 + |mel|, the scale of a
# log-mel's rounding (the mel power's relative rounding plus the log's own). Measured here: docs/testing.md.
MEL_ULPS = 16
# (id, sample rate, seconds, channels, raw text, normalized text)
CLIPS = [
    ("LJ001-0001", 22050, 0.30, 1, "Printing, in the only sense", "Printing, in the only sense"),
    ("LJ001-0002", 16000, 0.25, 1, "It cost 5 dollars.", "It cost five dollars."),
    ("LJ001-0003", 22050, 0.20, 2, "Stereo becomes mono.", "Stereo becomes mono."),
    ("LJ001-0004", 22050, 0.55, 1, "A longer clip with a much longer transcript than the rest of them.",
     "A longer clip with a much longer transcript than the rest of them."),
    ("LJ001-0005", 16000, 0.42, 1, "Resampled from sixteen kilohertz.", "Resampled from sixteen kilohertz."),
    ("LJ001-0006", 22050, 0.12, 1, "Short.", "Short."),
    ("LJ001-0007", 16000, 0.37, 2, "Stereo at 16 kHz.", "Stereo at sixteen kHz."),
    ("LJ001-0008", 22050, 0.48, 1, "Eight clips in all, of several lengths.",
     "Eight clips in all, of several lengths."),
]


def _signal(i, sr, seconds, channels):
    n = int(round(sr * seconds))
    t = np.arange(n) / sr
    rng = np.random.default_rng(i)
    x = 0.4 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.05 * rng.standard_normal(n)
    if channels == 2:
        x = np.stack([x, 0.5 * np.sin(2 * np.pi * 300 * t)], axis=1)
    return x.astype(np.float32)


def write_ljspeech(root, clips=CLIPS):
    (root / "wavs").mkdir(parents=True)
    for i, (uid, sr, sec, ch, _, _) in enumerate(clips):
        sf.write(root / "wavs" / f"{uid}.wav", _signal(i, sr, sec, ch), sr, subtype="PCM_16")
    (root / "metadata.csv").write_text("".join(f"{c[0]}|{c[4]}|{c[5]}\n" for c in clips), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def lj(tmp_path_factory):
    return write_ljspeech(tmp_path_factory.mktemp("data") / "LJSpeech-1.1")


@pytest.fixture(scope="module")
def cache(lj, tmp_path_factory):
    return P.preprocess(lj, tmp_path_factory.mktemp("cache") / "c", frame_step=16, report=_fail_on_report)


def _fail_on_report(line):
    raise AssertionError(f"unexpected bad-data report: {line}")


def _expected_samples(sr, sec):
    n = int(round(sr * sec))
    return n if sr == SR else math.floor(n * SR / sr + 0.5)


def test_ljspeech_layout_and_resampling(lj):
    ds = read_ljspeech(lj, report=_fail_on_report)
    assert len(ds) == len(CLIPS) and not ds.problems
    for u, (uid, sr, sec, ch, raw, norm) in zip(ds, CLIPS):
        assert u.audio == str((lj / "wavs" / f"{uid}.wav").resolve())
        assert u.text == norm and u.tokens == tuple(text_to_sequence(norm))  # normalized column
        assert u.samples == _expected_samples(sr, sec) and u.frames == 1 + u.samples // 256
        audio, rate = load_wav(u.audio)
        assert rate == SR and audio.ndim == 1 and len(audio) == u.samples
    # A 16 kHz tone resampled to 22050 Hz is the same tone: compare against the 22050 Hz rendering.
    audio, _ = load_wav(ds[1].audio)
    t = np.arange(len(audio)) / SR
    ref = 0.4 * np.sin(2 * np.pi * 190 * t)
    mid = slice(200, -200)
    assert np.corrcoef(audio[mid], ref[mid])[0, 1] > 0.95  # noise limits it to ~0.985
    # stereo -> mean of the channels
    st, _ = load_wav(ds[2].audio)
    raw, _ = sf.read(lj / "wavs" / "LJ001-0003.wav", dtype="float32")
    assert ulps(st, raw.mean(axis=1), np.abs(raw).sum(axis=1)) <= 4  # (a + b) / 2 rounds once or twice


def test_filelist_layout(lj, tmp_path):
    fl = tmp_path / "train.txt"
    fl.write_text("\n".join(f"LJSpeech-1.1/wavs/{c[0]}.wav|{c[5]}" for c in CLIPS) + "\n\n", encoding="utf-8")
    a = read_filelist(fl, root=lj.parent, report=_fail_on_report)
    b = read_ljspeech(lj, report=_fail_on_report)
    assert [(u.audio, u.text, u.samples) for u in a] == [(u.audio, u.text, u.samples) for u in b]
    assert a[3].source == f"{fl}:4"
    assert load_dataset(fl, root=lj.parent).utterances == a.utterances  # told apart by what is on disk
    assert load_dataset(lj).utterances == b.utterances


def _bad_dataset(tmp_path):
    root = write_ljspeech(tmp_path / "bad", CLIPS[:2])
    (root / "wavs" / "garbage.wav").write_bytes(b"this is not a wav file at all" * 10)
    sf.write(root / "wavs" / "long.wav", np.zeros(3 * SR, np.float32), SR)
    lines = [f"{CLIPS[0][0]}|{CLIPS[0][4]}|{CLIPS[0][5]}",  # 1 good
             "missing|Hello there.|Hello there.",              # 2 no wav
             "garbage|Hello there.|Hello there.",              # 3 unreadable
             f"{CLIPS[1][0]}|###|~~~",                         # 4 nothing speakable
             "long|A long one.|A long one.",                   # 5 over the limit
             "just-one-field",                                 # 6 malformed
             f"{CLIPS[1][0]}|... !|... !",                      # 7 punctuation only: ids, but nothing to say
             ]
    (root / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_bad_data_reported_and_skipped(tmp_path):
    root = _bad_dataset(tmp_path)
    reported = []
    ds = read_ljspeech(root, max_seconds=2.0, report=reported.append)
    assert [u.source for u in ds] == [f"{root / 'metadata.csv'}:1"]
    assert reported == ds.problems and len(reported) == 6
    meta = root / "metadata.csv"
    for line, lineno, words in zip(reported, [2, 3, 4, 5, 6, 7],
                                   ["missing audio", "unreadable audio", "no speakable symbol",
                                    "longer than the 2 s limit", "expected 'id|text|normalized text'",
                                    "no speakable symbol"]):
        assert line.startswith(f"{meta}:{lineno}: ") and words in line and "\n" not in line


def test_non_utf8_line_is_reported_by_its_line_and_skipped(tmp_path):
    root = write_ljspeech(tmp_path / "lj", CLIPS[:3])
    meta = root / "metadata.csv"
    lines = meta.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"It cost", b"It co\xfft")  # a Latin-1 byte on line 2
    meta.write_bytes(b"\n".join(lines))
    reported = []
    ds = read_ljspeech(root, report=reported.append)
    assert [u.source for u in ds] == [f"{meta}:1", f"{meta}:3"]
    col = lines[1].index(b"\xff") + 1
    assert reported == [f"{meta}:2: not UTF-8 text (byte 0xff at column {col})"]


def test_bad_data_fatal(tmp_path):
    root = _bad_dataset(tmp_path)
    with pytest.raises(DataError) as e:
        read_ljspeech(root, on_error="fail", max_seconds=2.0, report=lambda line: None)
    assert len(e.value.problems) == 6 and f"{root / 'metadata.csv'}:3: unreadable" in str(e.value)
    assert isinstance(e.value, ValueError)


def test_empty_dataset_is_an_error(tmp_path):
    root = _bad_dataset(tmp_path)
    meta = root / "metadata.csv"
    meta.write_text("\n".join(meta.read_text().splitlines()[1:]) + "\n")
    with pytest.raises(DataError, match="no usable utterances.*6 bad entries skipped"):
        read_ljspeech(root, max_seconds=2.0, report=lambda line: None)
    meta.write_text("")
    with pytest.raises(DataError, match="no usable utterances"):
        load_dataset(root)


@pytest.mark.parametrize("array", [np.arange(80 * 7, dtype=np.float32).reshape(80, 7), np.zeros((0, 3), np.int64),
                                   np.asfortranarray(np.arange(12.0).reshape(3, 4)), np.ones(5, ">f8"), np.float32(2)])
def test_mels_are_read_without_the_ast_module(array, tmp_path, monkeypatch):
    """The loader reads mels in threads; np.load parses .npy headers with ast, which CPython 3.11 cannot do in
    two threads at once (SystemError "AST constructor recursion depth mismatch", seen in CI)."""
    import ast

    from jtts.train.datasets import read_npy

    np.save(tmp_path / "a.npy", array)

    def refuse(*a, **k):
        raise AssertionError("ast used")

    with monkeypatch.context() as m:
        m.setattr(ast, "literal_eval", refuse)
        m.setattr(ast, "parse", refuse)
        got = read_npy(tmp_path / "a.npy")
    want = np.load(tmp_path / "a.npy")
    assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
    raw = (tmp_path / "a.npy").read_bytes()
    if array.size:
        (tmp_path / "a.npy").write_bytes(raw[:-1])
        with pytest.raises(ValueError, match="truncated .npy file"):
            read_npy(tmp_path / "a.npy")


def test_cache_matches_on_the_fly_mels(cache, lj):
    assert cache.cached and len(cache) == len(CLIPS)
    root = Path(cache.origin)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["version"] == 1 and len(manifest["utterances"]) == len(CLIPS)
    for u in cache:
        mel = np.load(u.mel)
        ref = np.asarray(mel_spectrogram(load_wav(u.audio)[0]))
        assert mel.shape == ref.shape == (80, u.frames) and mel.dtype == np.float32
        assert ulps(mel, ref, 1 + np.abs(ref)) <= MEL_ULPS
    assert load_dataset(root).utterances == cache.utterances


def test_cache_moves_with_its_dataset(lj, tmp_path):
    """Audio paths are stored relative to the cache: a cache moved together with its dataset still feeds
    WaveGlow; without the dataset it still feeds Tacotron 2, and WaveGlow names what it cannot find."""
    import shutil

    base = tmp_path / "a"
    shutil.copytree(lj, base / "LJSpeech-1.1")
    P.preprocess(base / "LJSpeech-1.1", base / "cache", frame_step=16, report=_fail_on_report)
    stored = json.loads((base / "cache" / "manifest.json").read_text())["utterances"]
    assert all(e["audio"].startswith("../LJSpeech-1.1/wavs/") for e in stored)
    want = _take(waveglow_batches(base / "cache", 4, seed=2), 3)
    moved = tmp_path / "b"
    base.rename(moved)
    cache = load_cache(moved / "cache")
    assert all(Path(u.audio).is_file() and str(u.audio).startswith(str(moved.resolve())) for u in cache)
    assert _same(_take(waveglow_batches(cache, 4, seed=2), 3), want)
    shutil.rmtree(moved / "LJSpeech-1.1")
    assert next(tacotron2_batches(moved / "cache", 2, buckets=1))["mels"].shape[0] == 2  # mels are in the cache
    with pytest.raises(DataError, match=r"8 of 8 audio files not found, first .*LJSpeech-1.1/wavs/LJ001-0001.wav "
                                        r"\(for .*metadata.csv:1\).*move the dataset along with the cache") as e:
        waveglow_batches(moved / "cache", 4)
    assert len(e.value.problems) == 8


def test_preprocess_output_checked_before_reading_data(lj, tmp_path):
    from jtts.errors import UsageError

    (tmp_path / "file").write_text("x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    for out, needle in [(tmp_path / "file", "is a file"), (tmp_path / "file" / "c", "is a file"),
                        (tmp_path / "mine", "is not empty and is not a mel cache (notes.txt)")]:
        with pytest.raises(UsageError, match=re.escape(needle)):
            P.preprocess(tmp_path / "no-such-data", out)
    with pytest.raises(DataError, match="no-such-data"):  # the data's error only once the output is fine
        P.preprocess(tmp_path / "no-such-data", tmp_path / "new" / "c")
    assert not (tmp_path / "new").exists()  # a failed run leaves no directory behind


@pytest.mark.parametrize("over_old_cache", [False, True])
def test_killed_preprocess_is_not_a_cache(lj, tmp_path, monkeypatch, over_old_cache):
    out = tmp_path / "cache"
    if over_old_cache:
        P.preprocess(lj, out, frame_step=16, report=_fail_on_report)
    calls = []
    real = P.atomic_write

    @contextlib.contextmanager
    def dies_after_three(path, mode="wb"):
        calls.append(path)
        if len(calls) > 3:
            raise KeyboardInterrupt  # as if killed mid-run
        with real(path, mode) as f:
            yield f

    monkeypatch.setattr(P, "atomic_write", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        P.preprocess(lj, out, frame_step=16, report=_fail_on_report)
    assert len(list((out / "mels").glob("*.npy"))) == (len(CLIPS) if over_old_cache else 3)  # mels are there...
    assert not list((out / "mels").glob(".*.tmp"))
    for load in (load_cache, load_dataset, lambda p: tacotron2_batches(p, 2)):
        with pytest.raises(DataError, match="not a complete mel cache"):  # ...but no manifest
            load(out)


def _rows(ds):
    return {u.tokens: u for u in ds}


def test_tacotron2_batches_shapes_gate_and_content(cache):
    it = tacotron2_batches(cache, 3, seed=5, buckets=3)
    buckets = set(it.buckets)
    assert it.batches_per_epoch == len(CLIPS) // 3 and len(buckets) <= 3
    assert max(m for _, m in buckets) >= max(u.frames for u in cache)
    by_tokens = _rows(cache)
    seen = []
    for _ in range(2 * it.batches_per_epoch):
        b = next(it)
        assert set(b) == {"tokens", "token_lengths", "mels", "mel_lengths", "gate"}
        n, t_in = b["tokens"].shape
        t = b["mels"].shape[2]
        assert n == 3 and (t_in, t) in buckets and b["gate"].shape == (3, t) and b["mels"].shape[1] == 80
        assert b["tokens"].dtype == np.int32 and b["token_lengths"].dtype == np.int32
        assert b["mel_lengths"].dtype == np.int32 and b["mels"].dtype == b["gate"].dtype == np.float32
        assert list(b["token_lengths"]) == sorted(b["token_lengths"], reverse=True)  # DLE's collate order
        for r in range(n):
            k, f = int(b["token_lengths"][r]), int(b["mel_lengths"][r])
            u = by_tokens[tuple(b["tokens"][r, :k])]
            assert not b["tokens"][r, k:].any() and f == u.frames
            np.testing.assert_array_equal(b["mels"][r, :, :f], np.load(u.mel))
            assert not b["mels"][r, :, f:].any()
            np.testing.assert_array_equal(b["gate"][r], (np.arange(t) >= f - 1).astype(np.float32))
            seen.append(u.tokens)
    assert it.position == 2 * it.batches_per_epoch and it.epoch == 2
    assert len(set(seen[:6])) == 6  # no repeats within an epoch


def test_tacotron2_on_the_fly_equals_cache(cache, lj):
    a = tacotron2_batches(cache, 2, seed=3, buckets=2)
    b = tacotron2_batches(lj, 2, seed=3, buckets=2)
    assert a.buckets == b.buckets
    for _ in range(3):
        x, y = next(a), next(b)
        for k in ("tokens", "token_lengths", "mel_lengths", "gate"):
            np.testing.assert_array_equal(x[k], y[k])
        assert ulps(x["mels"], y["mels"], 1 + np.abs(y["mels"])) <= MEL_ULPS


def _take(it, k):
    return [next(it) for _ in range(k)]


def _same(xs, ys):
    return len(xs) == len(ys) and all(x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
                                      for x, y in zip(xs, ys))


def test_seed_determinism_and_explicit_buckets(cache):
    kw = dict(buckets=[(72, 48), (32, 24)], sort_pool=1)
    first = _take(tacotron2_batches(cache, 2, seed=1, **kw), 8)
    assert _same(first, _take(tacotron2_batches(cache, 2, seed=1, **kw), 8))
    assert not _same(first, _take(tacotron2_batches(cache, 2, seed=2, **kw), 8))
    assert tacotron2_batches(cache, 2, **kw).buckets == ((32, 24), (72, 48))
    with pytest.raises(DataError, match="exceed the largest bucket"):
        tacotron2_batches(cache, 2, buckets=[(64, 16)])
    with pytest.raises(DataError, match="fewer than one batch"):
        tacotron2_batches(cache, 100)


@pytest.mark.parametrize("make", [lambda c: tacotron2_batches(c, 2, seed=7, buckets=2),
                                  lambda c: waveglow_batches(c, 3, seed=7, segment_length=4000)],
                         ids=["tacotron2", "waveglow"])
def test_state_round_trip(cache, make):
    k, more = 5, 6  # crosses epoch boundaries (4 and 2 batches per epoch)
    whole = _take(make(cache), k + more)
    it = make(cache)
    assert _same(_take(it, k), whole[:k])
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
    fresh = make(cache)
    fresh.set_state(state)
    assert fresh.position == k and _same(_take(fresh, more), whole[k:])
    other = waveglow_batches(cache, 3, seed=8, segment_length=4000)
    with pytest.raises(DataError, match="another dataset or other batch settings"):
        other.set_state(state)


def test_state_round_trip_with_worker_processes(cache):
    it = tacotron2_batches(cache, 2, seed=4, buckets=2, worker_count=1)
    try:
        first = _take(it, 3)
        state = it.get_state()
        rest = _take(it, 4)
    finally:
        it.close()
    assert _same(first + rest, _take(tacotron2_batches(cache, 2, seed=4, buckets=2), 7))
    again = tacotron2_batches(cache, 2, seed=4, buckets=2, worker_count=1)
    try:
        again.set_state(json.loads(json.dumps(state)))
        assert _same(_take(again, 4), rest)
    finally:
        again.close()


def test_waveglow_segments(cache):
    seg = 8000
    it = waveglow_batches(cache, 4, seed=11)
    clips = {u.audio: load_wav(u.audio)[0] for u in cache}
    epochs = []
    for _ in range(2):
        found = []
        for _ in range(it.batches_per_epoch):
            b = next(it)
            assert b["audio"].shape == (4, seg) and b["mels"].shape == (4, 80, 1 + seg // 256) == (4, 80, 32)
            ref = np.asarray(mel_spectrogram(b["audio"]))
            assert ulps(b["mels"], ref, 1 + np.abs(ref)) <= MEL_ULPS
            for row in b["audio"]:
                for path, clip in clips.items():
                    if len(clip) < seg:  # zero-padded at the end, as DLE
                        if np.array_equal(row[:len(clip)], clip) and not row[len(clip):].any():
                            found.append((path, 0))
                            break
                    else:
                        starts = [s for s in range(len(clip) - seg + 1) if clip[s] == row[0]
                                  and np.array_equal(clip[s:s + seg], row)]
                        if starts:
                            found.append((path, starts[0]))
                            break
                else:
                    raise AssertionError("a segment that is no window of any clip")
        assert len({p for p, _ in found}) == len(found) == 8
        epochs.append(dict(found))
    long = [u.audio for u in cache if u.samples > seg + 100]
    assert any(epochs[0][p] != epochs[1][p] for p in long)  # new windows each epoch


def test_validation_iterators(cache):
    it = tacotron2_val_batches(cache, 3, buckets=2)
    batches = list(it)
    assert [b["tokens"].shape[0] for b in batches] == [3, 3, 2]
    order = [tuple(b["tokens"][r, :b["token_lengths"][r]]) for b in batches for r in range(len(b["tokens"]))]
    assert sorted(order) == sorted(u.tokens for u in cache)
    wg = list(waveglow_val_batches(cache, 3, segment_length=2048))
    assert [b["audio"].shape for b in wg] == [(3, 2048), (3, 2048), (2, 2048)]
    assert [b["mels"].shape[2] for b in wg] == [9, 9, 9]


def test_preprocess_command(lj, tmp_path, capsys):
    from jtts.train.cli import add_preprocess_parser

    parser = argparse.ArgumentParser(prog="jtts")
    add_preprocess_parser(parser.add_subparsers(dest="command", required=True))
    fl = tmp_path / "list.txt"
    fl.write_text(f"LJSpeech-1.1/wavs/{CLIPS[0][0]}.wav|Hi.\nLJSpeech-1.1/wavs/nothing.wav|Hello.\n")
    args = parser.parse_args(["preprocess", str(fl), "-o", str(tmp_path / "c"), "--dataset-path", str(lj.parent)])
    assert args.func(args) == 0
    err = capsys.readouterr().err
    assert f"{fl}:2: missing audio file" in err
    assert len(load_cache(tmp_path / "c")) == 1
    args = parser.parse_args(["preprocess", str(fl), "-o", str(tmp_path / "d"), "--dataset-path", str(lj.parent),
                              "--on-error", "fail", "-q"])
    assert args.func(args) == 1
    assert "1 bad entry" in capsys.readouterr().err and not (tmp_path / "d" / "manifest.json").exists()
