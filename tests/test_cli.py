"""`jtts synthesize` end to end with small models, the other subcommands' new options, and every kind of bad
input: each error is one line naming its cause, with the documented exit status, and leaves no partial file."""
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import jtts.cli as cli
from jtts.convert import convert
from small_tts import small_checkpoints

STEPS = 16  # the test Tacotron 2 never stops by itself: every sentence is exactly STEPS frames
HOP = 256


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    taco_pt, wg_pt = small_checkpoints(root)
    return dict(taco=str(convert(taco_pt, root / "tacotron2")), wg=str(convert(wg_pt, root / "waveglow")),
                taco_pt=str(taco_pt), wg_pt=str(wg_pt), root=root)


def run(models, *args, steps=STEPS):
    return cli.main(["synthesize", *args, "--tacotron2", models["taco"], "--waveglow", models["wg"],
                     "--max-decoder-steps", str(steps)])


def error_line(capsys, command: str = "synthesize") -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"jtts {command}: error: "), err
    return lines[0]


def assert_nothing_partial(folder: Path, wavs=()):
    """Only the complete files named in `wavs`: no temporaries, no other WAV."""
    names = sorted(p.name for p in folder.rglob("*") if p.is_file())
    assert not [n for n in names if n.endswith(".tmp") or n.startswith(".")], names
    assert sorted(n for n in names if n.endswith(".wav")) == sorted(wavs), names


# -- the main job ------------------------------------------------------------------------------------------

def test_wav_mel_plot_and_seed(models, tmp_path, capsys):
    assert run(models, "Speak this one sentence.", "-o", str(tmp_path / "a.wav"), "--seed", "1", "--save-mel",
               "--plot") == 0
    err = capsys.readouterr().err
    # every try babbles (the gate never fires): 3 decodes, then each half 3: the first decode is kept
    assert f"the text: sentence 1 of 1 still fails after 9 decodes: babble (reached --max-decoder-steps {STEPS}" \
        in err and "in 'Speak this one sentence.'; kept as decoded" in err
    summary = err.strip().splitlines()[-1]
    for part in ("1 utterance(s), 1 sentence(s)", "real-time factor", "Tacotron 2", "WaveGlow", "denoiser"):
        assert part in summary, summary
    info = sf.info(tmp_path / "a.wav")
    assert (info.samplerate, info.subtype, info.frames, info.channels) == (22050, "PCM_16", STEPS * HOP, 1)
    mel = np.load(tmp_path / "a.npy")
    assert mel.shape == (80, STEPS) and mel.dtype == np.float32 and np.isfinite(mel).all() and mel.std() > 0.1
    import matplotlib.image

    png = matplotlib.image.imread(tmp_path / "a.png")
    assert png.ndim == 3 and png.shape[0] >= 400 and png.shape[1] >= 500 and png[..., :3].std() > 0.05

    assert run(models, "Speak this one sentence.", "-o", str(tmp_path / "b.wav"), "--seed", "1", "-q") == 0
    assert run(models, "Speak this one sentence.", "-o", str(tmp_path / "c.wav"), "--seed", "2", "-q") == 0
    a, b, c = (sf.read(tmp_path / f"{n}.wav", dtype="int16")[0] for n in "abc")
    assert np.array_equal(a, b) and np.abs(a).max() > 100
    assert len(c) == len(a) and np.mean(a != c) > 0.5
    assert_nothing_partial(tmp_path, ["a.wav", "b.wav", "c.wav"])


def test_float_wav_and_resampling(models, tmp_path):
    # sigma 0: the random test vocoder is loud, and with noise nearly half its samples clip at +-1
    opts = ["--float", "--sigma", "0", "-q"]
    assert run(models, "Resample me please.", "-o", str(tmp_path / "f.wav"), *opts) == 0
    assert run(models, "Resample me please.", "-o", str(tmp_path / "r.wav"), "--sample-rate", "16000", *opts) == 0
    f, sr_f = sf.read(tmp_path / "f.wav", dtype="float32")
    r, sr_r = sf.read(tmp_path / "r.wav", dtype="float32")
    assert sf.info(tmp_path / "f.wav").subtype == "FLOAT" and (sr_f, sr_r) == (22050, 16000)
    assert len(f) == STEPS * HOP and len(r) == round(STEPS * HOP * 16000 / 22050)
    import soxr

    ref = soxr.resample(f, 22050, 16000)  # f was clipped before resampling, r after: equal but near clips
    assert np.median(np.abs(r - ref)) < 1e-5 and np.corrcoef(r, ref)[0, 1] > 0.999


def test_long_text_is_split_and_joined_with_pauses(models, tmp_path):
    text = "Mr. Smith paid $3.50 for the first sentence. The second one follows it!"
    assert run(models, text, "-o", str(tmp_path / "s.wav"), "--float", "--denoise", "0", "--pause", "0.25",
               "--save-mel", "-q") == 0
    audio, _ = sf.read(tmp_path / "s.wav", dtype="float32")
    gap = round(0.25 * 22050)
    assert len(audio) == 2 * STEPS * HOP + gap  # "Mr." and "3.50" did not split the first sentence
    assert not audio[STEPS * HOP:STEPS * HOP + gap].any()
    assert np.abs(audio[:STEPS * HOP]).max() > 0.01 and np.abs(audio[-STEPS * HOP:]).max() > 0.01
    assert np.load(tmp_path / "s.npy").shape == (80, 2 * STEPS)


def test_directory_output_manifest_and_batch_independence(models, tmp_path, capsys):
    lines = tmp_path / "lines.txt"
    lines.write_text("The first line.\n\nThe second line is longer than the first.\nThird.\n")
    assert run(models, "-i", str(lines), "-o", str(tmp_path / "b3/"), "--batch-size", "3", "--float", "-q") == 0
    err = capsys.readouterr().err
    assert err.count("warning") == 3 and "0002.wav (" + str(lines) + ", line 3)" in err
    assert run(models, "-i", str(lines), "-o", str(tmp_path / "b1"), "--batch-size", "1", "--float", "-q") == 0
    rows = [r.split("\t") for r in (tmp_path / "b3" / "manifest.tsv").read_text().splitlines()]
    assert rows[0] == ["file", "source", "sentence", "start", "seconds", "status", "tries", "pieces", "frames", "stop",
                       "focus", "backtrack", "end_gap", "skip", "dwell", "problems", "text"]
    assert [r[:3] for r in rows[1:]] == [["0001.wav", f"{lines}, line 1", "1"], ["0002.wav", f"{lines}, line 3", "1"],
                                         ["0003.wav", f"{lines}, line 4", "1"]]
    third = dict(zip(rows[0], rows[3]))
    assert (third["start"], third["seconds"], third["frames"], third["stop"]) == ("0.000", f"{STEPS * HOP / 22050:.3f}",
                                                                                 str(STEPS), "max_steps")
    # a single word cannot be split: 3 tries, then it is kept as first decoded and reported
    assert (third["status"], third["tries"], third["pieces"], third["text"]) == ("failed", "3", "1", "Third.")
    assert third["problems"].startswith("max_steps") and 0 < float(third["focus"]) <= 1
    for name in ("0001.wav", "0002.wav", "0003.wav"):
        a, _ = sf.read(tmp_path / "b3" / name, dtype="float32")
        b, _ = sf.read(tmp_path / "b1" / name, dtype="float32")
        assert len(a) == STEPS * HOP
        # an utterance's audio does not depend on what shares its batch (up to float rounding)
        assert np.abs(a - b).max() < 1e-4, name
    assert_nothing_partial(tmp_path / "b3", ["0001.wav", "0002.wav", "0003.wav"])


def test_text_from_stdin(models, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("One from stdin.\nTwo from stdin.\n"))
    assert run(models, "-o", str(tmp_path / "out"), "-q") == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0001.wav", "0002.wav", "manifest.tsv"]
    assert "stdin, line 2" in (tmp_path / "out" / "manifest.tsv").read_text()


def test_pt_checkpoints_and_a_decoder_that_stops(models, tmp_path, capsys):
    # gate bias +10: the decoder stops at its first step (one frame, shorter than the denoiser's STFT frame),
    # long before its attention reached the end of the text
    taco_pt, _ = small_checkpoints(tmp_path / "stop", gate_bias=10.0, waveglow=False)
    code = cli.main(["synthesize", "Stop right away.", "-o", str(tmp_path / "x.wav"), "--tacotron2", str(taco_pt),
                     "--waveglow", models["wg_pt"], "--max-decoder-steps", str(STEPS), "-q"])
    err = capsys.readouterr().err
    assert code == 0 and "the text: sentence 1 of 1 still fails after 9 decodes: early stop (" in err, err
    assert sf.info(tmp_path / "x.wav").frames == HOP


# -- bad input ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, cause", [
    ("", "the text: the text is empty"),
    ("  \t  ", "the text: the text is only whitespace"),
    ("\U0001F600\U0001F389\U0001F600", "nothing to speak in '\U0001F600\U0001F389\U0001F600' (no letters, digits"),
    ("\u4e2d\u6587\u5b57\u3002", "nothing to speak in '\u4e2d\u6587\u5b57\u3002' (CJK script is not supported"),
    ("\x00\x07\x1b", "nothing to speak in '\\x00\\x07\\x1b'"),
    ("... !!! ---", "nothing to speak in '... !!! ---'"),
])
def test_unspeakable_text(text, cause, models, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_load", _must_not_run)
    assert run(models, text, "-o", str(tmp_path / "x.wav")) == 1
    assert cause in error_line(capsys)
    assert_nothing_partial(tmp_path)


def _must_not_run(*args, **kwargs):
    raise AssertionError("models were loaded although the input was already known to be bad")


def test_bad_line_in_file_is_named_before_any_model_loads(models, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_load", _must_not_run)
    (tmp_path / "in.txt").write_text("Fine line.\n\nStill fine.\n\U0001F600\n")
    assert run(models, "-i", str(tmp_path / "in.txt"), "-o", str(tmp_path / "out/")) == 1
    assert f"{tmp_path / 'in.txt'}, line 4: nothing to speak" in error_line(capsys)
    (tmp_path / "bin.txt").write_bytes(b"ok\nbad \xff byte\n")
    assert run(models, "-i", str(tmp_path / "bin.txt"), "-o", str(tmp_path / "out/")) == 1
    assert f"{tmp_path / 'bin.txt'}, line 2: not UTF-8 text (byte 0xff)" in error_line(capsys)
    assert run(models, "-i", str(tmp_path / "nope.txt"), "-o", str(tmp_path / "out/")) == 1
    assert f"{tmp_path / 'nope.txt'}: cannot read (No such file or directory)" in error_line(capsys)
    assert_nothing_partial(tmp_path)


def test_control_characters_are_left_out(models, tmp_path, capsys):
    assert run(models, "Hello\x00 there,\x07 friend\x1b.", "-o", str(tmp_path / "c.wav")) == 0
    assert "left out 3 character(s) that cannot be spoken" in capsys.readouterr().err
    assert sf.info(tmp_path / "c.wav").frames == STEPS * HOP


def test_100k_characters(models, tmp_path, capsys):
    # 100,000 characters in 50 clause-separated stretches without a full stop; --max-chars 2000 keeps the
    # piece count (and the test) small. The default 200-character split is checked in test_sentences.py.
    clause = "the forms of printed letters should be beautiful and their arrangement on the page reasonable, "
    text = (clause * (100_000 // len(clause) + 1))[:100_000]
    assert run(models, text, "-o", str(tmp_path / "big.wav"), "--max-chars", "2000", "--denoise", "0",
               "--batch-size", "64", "--no-retry", steps=2) == 0
    err = capsys.readouterr().err
    n = len(text) // 2000 + (len(text) % 2000 > 0)
    assert f"1 utterance(s), {n} sentence(s)" in err or f"1 utterance(s), {n + 1} sentence(s)" in err
    frames = sf.info(tmp_path / "big.wav").frames
    pieces = (frames + round(0.2 * 22050)) // (2 * HOP + round(0.2 * 22050))
    assert frames == pieces * 2 * HOP + (pieces - 1) * round(0.2 * 22050) and pieces in (n, n + 1)
    assert f"sentences 1, 2, 3, 4, 5 and {pieces - 5} more of {pieces} still fail after 1 decode: babble (reached " \
           f"--max-decoder-steps 2" in err


def test_unknown_dtype_is_a_usage_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "jtts", "synthesize", "Hello.", "-o", str(tmp_path / "x.wav"),
                           "--dtype", "float64"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "argument --dtype: invalid choice: 'float64'" in lines[0], proc.stderr
    assert not (tmp_path / "x.wav").exists()


@pytest.mark.parametrize("option, value, allowed", [
    ("--batch-size", "0", "an integer from 1 to 1,024"),
    ("--batch-size", "5000", "an integer from 1 to 1,024"),
    ("--seed", "-1", "an integer from 0 to 4,294,967,295"),
    ("--seed", "4294967296", "an integer from 0 to 4,294,967,295"),  # JAX would fold it to seed 0
    ("--sigma", "-0.5", "a number from 0 to 10"),
    ("--sigma", "nan", "a number from 0 to 10"),
    ("--denoise", "2", "a number from 0 to 1"),
    ("--pause", "inf", "a number from 0 to 60"),
    ("--max-decoder-steps", "0", "an integer from 1 to 100,000"),
    ("--max-chars", "19", "an integer from 20 to 10,000"),
    ("--sample-rate", "200000", "an integer from 1,000 to 192,000"),
    ("--sample-rate", "22050.5", "an integer from 1,000 to 192,000"),
    ("--gate-threshold", "1.5", "a number from 0 to 1"),
    ("--attention-window", "0", "an integer from 1 to 1,000"),
    ("--tries", "21", "an integer from 1 to 20"),
])
def test_numeric_options_are_checked_with_their_range(option, value, allowed, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["synthesize", "Hi.", "-o", str(tmp_path / "x.wav"), option, value])
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"argument {option}: '{value}' is not {allowed}" in lines[0], lines
    assert not any(tmp_path.iterdir())


def test_other_usage_errors_exit_2(models, tmp_path, capsys):
    (tmp_path / "two.txt").write_text("One.\nTwo.\n")
    assert run(models, "-i", str(tmp_path / "two.txt"), "-o", str(tmp_path / "one.wav")) == 2
    assert "2 utterances need a directory (-o DIR/)" in error_line(capsys)
    assert run(models, "Text.", "-i", str(tmp_path / "two.txt"), "-o", str(tmp_path / "d/")) == 2
    assert "not both" in error_line(capsys)
    assert_nothing_partial(tmp_path)


def test_unwritable_output_is_found_before_any_compute(models, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_load", _must_not_run)
    (tmp_path / "afile").write_text("not a directory")
    target = tmp_path / "afile" / "sub" / "x.wav"
    assert run(models, "Hello there.", "-o", str(target)) == 1
    line = error_line(capsys)
    assert f"{target}: cannot write there" in line and "Not a directory" in line
    assert run(models, "One.\nTwo.", "-o", str(tmp_path / "afile" / "out/")) == 1
    assert "cannot write there" in error_line(capsys)
    assert_nothing_partial(tmp_path)


def test_missing_corrupt_and_wrong_kind_model_files(models, tmp_path, capsys):
    out = ["-o", str(tmp_path / "x.wav")]
    missing = tmp_path / "nope.pt"
    assert cli.main(["synthesize", "Hi there.", *out, "--tacotron2", str(missing), "--waveglow", models["wg"]]) == 1
    assert f"--tacotron2 {missing}: no such file or directory" in error_line(capsys)

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"PK\x03\x04 definitely not a checkpoint" * 10)
    assert cli.main(["synthesize", "Hi there.", *out, "--tacotron2", models["taco"], "--waveglow", str(junk)]) == 1
    assert f"{junk}: not a readable PyTorch checkpoint" in error_line(capsys)

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text('{"format": 1, "kind": "tacotron2", ')
    assert cli.main(["synthesize", "Hi there.", *out, "--tacotron2", str(broken), "--waveglow", models["wg"]]) == 1
    assert f"{broken / 'model.json'}: corrupt" in error_line(capsys)

    assert cli.main(["synthesize", "Hi there.", *out, "--tacotron2", models["wg"], "--waveglow", models["wg"]]) == 1
    assert f"{models['wg']}: holds a waveglow model, not tacotron2" in error_line(capsys)
    assert cli.main(["synthesize", "Hi there.", *out, "--tacotron2", models["taco"],
                     "--waveglow", models["taco_pt"]]) == 1
    assert f"{models['taco_pt']}: is a tacotron2 checkpoint, not waveglow" in error_line(capsys)
    assert_nothing_partial(tmp_path)


def test_failure_midway_leaves_only_complete_files(models, tmp_path, capsys, monkeypatch):
    import jtts.pipeline

    real, calls = jtts.pipeline._decode_batch, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")  # the environment failing midway, not a bug
        return real(*args, **kwargs)

    monkeypatch.setattr(jtts.pipeline, "_decode_batch", flaky)
    # equal lengths, so the batches run in input order: two utterances finish before the failure
    (tmp_path / "in.txt").write_text("One.\nTwo.\nSix.\nTen.\n")
    assert run(models, "-i", str(tmp_path / "in.txt"), "-o", str(tmp_path / "out/"), "--batch-size", "1") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert [ln for ln in err if "error" in ln] == [err[-1]] and err[-1].startswith("jtts synthesize: error: ")
    assert "No space left on device" in err[-1]
    assert_nothing_partial(tmp_path / "out", ["0001.wav", "0002.wav"])
    assert not (tmp_path / "out" / "manifest.tsv").exists()  # the manifest is written last, only on success
    for name in ("0001.wav", "0002.wav"):
        assert sf.info(tmp_path / "out" / name).frames == STEPS * HOP


# -- convert --dtype and info ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_convert_half_precision_storage_and_info(dtype, models, tmp_path, capsys):
    from jtts import Tacotron2
    from jtts.checkpoint import load_model

    out = tmp_path / dtype
    assert cli.main(["convert", models["taco_pt"], "-o", str(out), "--dtype", dtype, "-q"]) == 0
    assert cli.main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    _, full = load_model(models["taco"])
    n = sum(v.size for k, v in full.items() if "batch_stats" not in k and "mean" not in k and "var" not in k)
    assert f"tacotron2, {n:,} parameters, stored as {dtype}" in text
    assert "source: tacotron2.pt (training checkpoint, epoch 1500)" in text and '"prenet_dim": 32' in text
    _, half = load_model(out)
    import ml_dtypes

    np_dtype = np.float16 if dtype == "float16" else ml_dtypes.bfloat16
    for k, v in full.items():
        assert half[k].dtype == np.float32, k  # upcast on load
        assert np.array_equal(half[k], v.astype(np_dtype).astype(np.float32)), k
    size = lambda d: sum(p.stat().st_size for p in Path(d).rglob("*") if p.is_file())  # noqa: E731
    assert size(out) < 0.6 * size(models["taco"])
    model = Tacotron2.from_checkpoint(out)
    assert np.asarray(model.embedding.embedding[...]).dtype == np.float32


# -- output directories and formats, convert --overwrite, info of a trained model (issue 9) -------------------

def _listing(folder: Path) -> dict[str, bytes]:
    return {p.name: (os.readlink(p).encode() if p.is_symlink() else p.read_bytes()) for p in folder.iterdir()}


def test_directory_of_an_earlier_run_needs_overwrite(models, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    (tmp_path / "three.txt").write_text("One.\nTwo.\nThree.\n")
    assert run(models, "-i", str(tmp_path / "three.txt"), "-o", f"{out}/", "--save-mel", "-q") == 0
    (out / "notes.txt").write_text("the user's file")
    (tmp_path / "outside.wav").write_bytes(b"not in DIR")
    (out / "0004.wav").symlink_to(tmp_path / "outside.wav")
    dead = subprocess.Popen(["true"])
    dead.wait()
    (out / f".0002.wav.{dead.pid}-0123456789ab.tmp").write_bytes(b"left by a killed run")
    before = _listing(out)
    capsys.readouterr()

    monkeypatch.setattr(cli, "_load", _must_not_run)
    for target in (f"{out}/", str(out)):
        assert run(models, "Only one line now.", "-o", target) == 2
        line = error_line(capsys)
        assert f"-o {target}: holds 8 file(s) of an earlier run (0001.npy, 0001.wav, 0002.npy and 5 more); pass " \
               f"--overwrite" in line, line
    assert _listing(out) == before
    monkeypatch.undo()

    assert run(models, "Only one line now.", "-o", f"{out}/", "--overwrite", "-q") == 0
    # the earlier run's files are gone (the link itself, not its target), the user's file stays
    assert sorted(os.listdir(out)) == ["0001.wav", "manifest.tsv", "notes.txt"]
    assert (tmp_path / "outside.wav").read_bytes() == b"not in DIR"
    rows = (out / "manifest.tsv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].split("\t")[0] == "0001.wav" and rows[1].endswith("\tOnly one line now.")
    assert sf.info(out / "0001.wav").frames == STEPS * HOP


def test_output_format_follows_the_suffix(models, tmp_path, capsys, monkeypatch):
    text = "Formats follow the suffix."
    for name, extra in (("a.wav", []), ("a.flac", []), ("b.flac", ["--subtype", "PCM_24"]), ("a.ogg", []),
                        ("noext", [])):
        assert run(models, text, "-o", str(tmp_path / name), "-q", *extra) == 0, name
    info = {n: sf.info(tmp_path / n) for n in ("a.wav", "a.flac", "b.flac", "a.ogg")}
    assert [(i.format, i.subtype) for i in info.values()] == [("WAV", "PCM_16"), ("FLAC", "PCM_16"),
                                                             ("FLAC", "PCM_24"), ("OGG", "VORBIS")]
    assert {(i.frames, i.samplerate) for i in info.values()} == {(STEPS * HOP, 22050)}
    wav = sf.read(tmp_path / "a.wav", dtype="int16")[0]
    # lossless, but libsndfile rounds float samples to integers its own way per format: one step at most
    flac = sf.read(tmp_path / "a.flac", dtype="int16")[0]
    assert np.abs(flac.astype(np.int32) - wav).max() <= 1 and np.mean(flac == wav) > 0.5
    pcm24 = sf.read(tmp_path / "b.flac", dtype="float32")[0]
    assert np.abs(pcm24 - wav / 32768).max() <= 2 ** -15 and np.abs(wav).max() > 100
    assert np.abs(sf.read(tmp_path / "a.ogg", dtype="float32")[0]).max() > 0.01
    # a path without a suffix is a directory, as with several lines
    assert sorted(os.listdir(tmp_path / "noext")) == ["0001.wav", "manifest.tsv"]

    capsys.readouterr()
    monkeypatch.setattr(cli, "_load", _must_not_run)
    for name, extra, needle in (
            ("x.mp3", [], "-o {}: cannot write .mp3 files; jtts writes .wav, .flac, .ogg (or a directory: end the "
                          "path with /)"),
            ("x.flac", ["--float"], "-o {}: FLAC stores integer samples (PCM_16 or PCM_24), not FLOAT"),
            ("x.ogg", ["--subtype", "PCM_16"], "-o {}: Ogg Vorbis is lossy and has no sample format")):
        assert run(models, text, "-o", str(tmp_path / name), *extra) == 2
        assert needle.format(tmp_path / name) in error_line(capsys)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("x.")]


def test_convert_refuses_an_existing_path_unless_overwrite(models, tmp_path, capsys, monkeypatch):
    import jtts.convert
    from jtts.checkpoint import read_meta

    out = tmp_path / "m"
    assert cli.main(["convert", models["taco_pt"], "-o", str(out), "-q"]) == 0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("not a model")
    (tmp_path / "afile").write_text("a file")
    monkeypatch.setattr(jtts.convert, "convert", _must_not_run)  # refused before the checkpoint is read
    for target, extra, needle in (
            (out, [], f"-o {out}: already exists; pass --overwrite to replace it"),
            (tmp_path / "other", ["--overwrite"], "holds files but no model.json; --overwrite replaces only a jtts "
                                                  "model directory"),
            (tmp_path / "afile", ["--overwrite"], "is not a directory; --overwrite replaces only")):
        assert cli.main(["convert", models["wg_pt"], "-o", str(target), *extra]) == 2
        assert needle in error_line(capsys, "convert")
    monkeypatch.undo()
    assert read_meta(out)["kind"] == "tacotron2"
    assert cli.main(["convert", models["wg_pt"], "-o", str(out), "--overwrite", "-q"]) == 0
    assert read_meta(out)["kind"] == "waveglow"
    assert sorted(os.listdir(tmp_path)) == ["afile", "m", "other"]  # no temporaries, the rest untouched
    assert (tmp_path / "other" / "keep.txt").read_text() == "not a model"


def test_info_of_a_model_written_by_training(models, tmp_path, capsys):
    """What `jtts train` records (jtts.train.loop._export, fed the meta that train() builds) is shown, and no
    "?" stands in for the converted-checkpoint fields it does not have."""
    from types import SimpleNamespace

    from jtts.checkpoint import load_model
    from jtts.train.loop import _export

    meta, params = load_model(models["taco"])
    run_dir = tmp_path / "runs" / "taco"
    run_dir.mkdir(parents=True)
    (run_dir / "train_log.jsonl").write_text("")
    trainer = SimpleNamespace(kind="tacotron2", export_params=lambda state: state["params"])
    train_meta = {"kind": "tacotron2", "config": meta["config"], "dtype": "bfloat16", "batch_size": 48,
                  "init_from": "models/tacotron2", "data": "cache/"}
    model_dir = _export(trainer, {"step": np.int32(1200), "params": params}, run_dir, train_meta)
    assert cli.main(["info", str(model_dir)]) == 0
    out = capsys.readouterr().out
    n = sum(v.size for v in params.values())
    assert f"{model_dir}: tacotron2, {n:,} parameters, stored as float32\n" in out, out
    assert (f"  trained by jtts train: step 1,200, data cache/, batch size 48, bfloat16 compute, initialised from "
            f"models/tacotron2, run directory {run_dir}\n") in out, out
    assert "?" not in out and '"prenet_dim": 32' in out
