"""Training data: datasets, bad-data reports, and the mel cache's reader.

A dataset is one of
  * an LJSpeech directory: `metadata.csv` (`id|text|normalized text`) and `wavs/ID.wav`;
  * a DLE filelist: `path|text` lines, paths relative to a dataset root (DLE's --dataset-path,
    the current directory by default);
  * a mel cache written by `jtts.train.preprocess.preprocess` (a directory with `manifest.json`).

Audio at any sample rate is resampled to 22050 Hz and stereo is averaged to mono (`jtts.audio.load_wav`).
Entries that cannot be trained on are reported as `FILE:LINE: reason`, one line each, and skipped
(on_error="skip") or collected into one `DataError` (on_error="fail"). Only WAV headers are read here,
so listing LJSpeech takes seconds; a file whose header is fine but whose body is not fails when read.

Batching lives in `jtts.train.data`, cache writing in `jtts.train.preprocess`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from jtts.audio import FMAX, FMIN, HOP, LOG_FLOOR, N_FFT, N_MELS, SAMPLE_RATE, WIN, load_wav
from jtts.text import text_to_sequence

__all__ = ["DataError", "Utterance", "Dataset", "load_dataset", "read_ljspeech", "read_filelist",
           "load_cache", "read_audio", "read_mel", "mels_from_audio", "MANIFEST", "MEL_PARAMS"]

MANIFEST = "manifest.json"
CACHE_FORMAT = "jtts-mel-cache"
CACHE_VERSION = 1
# A cache made with other STFT/mel settings would silently train a model on the wrong features.
MEL_PARAMS = {"sample_rate": SAMPLE_RATE, "n_fft": N_FFT, "hop": HOP, "win": WIN, "n_mels": N_MELS,
              "fmin": FMIN, "fmax": FMAX, "log_floor": LOG_FLOOR}
DEFAULT_CLEANERS = ("english_cleaners",)
ON_ERROR = ("skip", "fail")

Report = Callable[[str], None]


class DataError(ValueError):
    """A dataset that cannot be used as asked. `problems` holds the `FILE:LINE: reason` lines, if any."""

    def __init__(self, message: str, problems: Sequence[str] = ()):
        super().__init__(message)
        self.problems = list(problems)


class _Bad(Exception):
    pass


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


@dataclasses.dataclass(frozen=True)
class Utterance:
    audio: str                 # absolute path of the source audio file
    text: str
    tokens: tuple[int, ...]    # jtts.text ids of `text`
    samples: int               # length at 22050 Hz, after resampling
    source: str                # "FILE:LINE" of the entry, for messages
    mel: str | None = None     # cached (80, frames) float32 .npy, if preprocessed

    @property
    def frames(self) -> int:
        return 1 + self.samples // HOP


@dataclasses.dataclass
class Dataset(Sequence):
    utterances: list[Utterance]
    origin: str
    problems: list[str] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, i):
        return self.utterances[i]

    def __iter__(self) -> Iterator[Utterance]:
        return iter(self.utterances)

    @property
    def cached(self) -> bool:
        return all(u.mel is not None for u in self.utterances)


def resampled_length(n: int, sample_rate: int) -> int:
    """Samples after soxr resampling to 22050 Hz (soxr rounds n * ratio half up)."""
    return n if sample_rate == SAMPLE_RATE else math.floor(n * SAMPLE_RATE / sample_rate + 0.5)


def _check_entry(source: str, audio: Path, text: str, cleaners, max_seconds: float | None) -> Utterance:
    import soundfile as sf

    if not audio.is_file():
        raise _Bad(f"missing audio file {audio}")
    try:
        info = sf.info(str(audio))
    except Exception as e:  # libsndfile's errors are RuntimeErrors, a directory an OSError, ...
        raise _Bad(f"unreadable audio file {audio}: {' '.join(str(e).split())}") from None
    if info.samplerate <= 0:
        raise _Bad(f"unreadable audio file {audio}: sample rate {info.samplerate}")
    samples = resampled_length(info.frames, info.samplerate)
    # The STFT reflect-pads by half a frame, which needs more samples than that.
    if samples <= N_FFT // 2:
        raise _Bad(f"audio file {audio} is too short: {samples} samples at {SAMPLE_RATE} Hz, "
                   f"the STFT needs more than {N_FFT // 2}")
    seconds = samples / SAMPLE_RATE
    if max_seconds is not None and seconds > max_seconds:
        raise _Bad(f"clip {audio} is {seconds:.2f} s, longer than the {max_seconds:g} s limit")
    tokens = tuple(text_to_sequence(text, cleaners))
    if not tokens:
        raise _Bad(f"transcript has no speakable symbol: {text!r}")
    return Utterance(audio=str(audio.resolve()), text=text, tokens=tokens, samples=samples, source=source)


def _collect(entries: Iterable[tuple[str, Path | None, str]], origin: str, *, on_error: str,
             max_seconds: float | None, cleaners, report: Report | None) -> Dataset:
    """entries: (source, audio path, text), or (source, None, reason) for a line that did not parse."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    report = _stderr if report is None else report
    utterances, problems = [], []
    for source, audio, text in entries:
        try:
            if audio is None:
                raise _Bad(text)
            utterances.append(_check_entry(source, audio, text, cleaners, max_seconds))
        except _Bad as e:
            problems.append(f"{source}: {e}")
            report(problems[-1])
    if problems and on_error == "fail":
        raise DataError(f"{len(problems)} bad entr{'y' if len(problems) == 1 else 'ies'} in {origin}:\n"
                        + "\n".join(problems), problems)
    if not utterances:
        skipped = f" ({len(problems)} bad entries skipped)" if problems else ""
        raise DataError(f"no usable utterances in {origin}{skipped}", problems)
    return Dataset(utterances, origin, problems)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text: {e}") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():  # blank lines (a trailing newline, say) are not entries
            yield lineno, line


def read_ljspeech(root, *, on_error: str = "skip", max_seconds: float | None = None,
                  cleaners=DEFAULT_CLEANERS, report: Report | None = None) -> Dataset:
    """An LJSpeech directory. The normalized transcript (third column: numbers spelled out, as in DLE's
    filelists) is used, the second column where the third is missing or empty."""
    root = Path(root)
    meta = root / "metadata.csv"
    if not meta.is_file():
        raise DataError(f"{root} is not an LJSpeech directory: no metadata.csv")

    def entries():
        for lineno, line in _lines(meta):
            source = f"{meta}:{lineno}"
            parts = line.split("|")
            if len(parts) not in (2, 3) or not parts[0].strip():
                yield source, None, f"expected 'id|text|normalized text', got {len(parts)} field(s)"
                continue
            text = parts[2] if len(parts) == 3 and parts[2].strip() else parts[1]
            yield source, root / "wavs" / f"{parts[0].strip()}.wav", text.strip()

    return _collect(entries(), str(meta), on_error=on_error, max_seconds=max_seconds, cleaners=cleaners,
                    report=report)


def read_filelist(filelist, root=None, *, on_error: str = "skip", max_seconds: float | None = None,
                  cleaners=DEFAULT_CLEANERS, report: Report | None = None) -> Dataset:
    """A DLE filelist: `path|text` per line, each path relative to `root` (default: the current
    directory, DLE's --dataset-path default)."""
    filelist = Path(filelist)
    root = Path.cwd() if root is None else Path(root)

    def entries():
        for lineno, line in _lines(filelist):
            source = f"{filelist}:{lineno}"
            parts = line.strip().split("|")
            if len(parts) != 2 or not parts[0].strip():
                yield source, None, f"expected 'path|text', got {len(parts)} field(s)"
                continue
            yield source, root / parts[0].strip(), parts[1].strip()

    return _collect(entries(), str(filelist), on_error=on_error, max_seconds=max_seconds,
                    cleaners=cleaners, report=report)


def load_cache(path) -> Dataset:
    """A mel cache written by `preprocess`. Without its manifest (written last) it is incomplete."""
    path = Path(path)
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise DataError(f"{path} is not a complete mel cache: no {MANIFEST} (an interrupted "
                        f"`jtts preprocess` leaves none; run it again)")
    try:
        meta = json.loads(manifest.read_text(encoding="utf-8"))
        if meta.get("format") != CACHE_FORMAT or meta.get("version") != CACHE_VERSION:
            raise DataError(f"{manifest}: not a version {CACHE_VERSION} {CACHE_FORMAT} manifest")
        if meta.get("mel") != MEL_PARAMS:
            raise DataError(f"{manifest}: mels were computed with {meta.get('mel')}, jtts uses {MEL_PARAMS}; "
                            f"run `jtts preprocess` again")
        utterances = [Utterance(audio=e["audio"], text=e["text"], tokens=tuple(e["tokens"]),
                                samples=int(e["samples"]), source=e["source"], mel=str(path / e["mel"]))
                      for e in meta["utterances"]]
    except (ValueError, KeyError, TypeError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{manifest} is damaged: {type(e).__name__}: {e}") from None
    if not utterances:
        raise DataError(f"{manifest} lists no utterances")
    return Dataset(utterances, str(path), list(meta.get("problems", [])))


def load_dataset(path, *, root=None, on_error: str = "skip", max_seconds: float | None = None,
                 cleaners=DEFAULT_CLEANERS, report: Report | None = None) -> Dataset:
    """Any of the three layouts, told apart by what is on disk. A Dataset is returned as it is."""
    if isinstance(path, Dataset):
        return path
    p = Path(path)
    kw = dict(on_error=on_error, max_seconds=max_seconds, cleaners=cleaners, report=report)
    if p.is_dir():
        if (p / MANIFEST).exists():
            return load_cache(p)
        if (p / "metadata.csv").is_file():
            return read_ljspeech(p, **kw)
        if (p / "mels").is_dir():
            return load_cache(p)  # raises: a cache whose preprocess never finished
        raise DataError(f"{p} is neither a mel cache ({MANIFEST}) nor an LJSpeech directory (metadata.csv)")
    if p.is_file():
        return read_filelist(p, root, **kw)
    raise DataError(f"no such dataset: {p}")


def read_audio(u: Utterance) -> np.ndarray:
    """The utterance's audio at 22050 Hz, exactly `u.samples` long: the length the batch plan was made
    with (soxr's output length is predicted from the header; any rounding difference is cut or
    zero-padded rather than allowed to overflow a bucket)."""
    try:
        audio, _ = load_wav(u.audio)
    except (OSError, ValueError) as e:
        raise DataError(f"{u.source}: {e}", [f"{u.source}: {e}"]) from None
    if len(audio) != u.samples:
        audio = np.pad(audio[:u.samples], (0, max(0, u.samples - len(audio))))
    return audio


def read_mel(u: Utterance) -> np.ndarray:
    mel = np.load(u.mel, allow_pickle=False)
    if mel.shape != (N_MELS, u.frames) or mel.dtype != np.float32:
        raise DataError(f"{u.mel}: mel of shape {mel.shape} {mel.dtype}, expected ({N_MELS}, {u.frames}) float32 "
                        f"for {u.source}; run `jtts preprocess` again")
    return mel


# -- mels of many lengths with a few compiled shapes ------------------------------------------------------
#
# mel_spectrogram reflect-pads by N_FFT // 2 = 2 hops. Reflect-padding a clip here and zero-padding the
# result to a bucket length L makes frame f + 2 of mel_spectrogram(padded) see exactly the samples of
# frame f of mel_spectrogram(clip) (the extra reflect padding touches only frames 0 and 1, the zeros
# only frames past the clip's end), so clips of any length share one compiled shape per bucket.

_SHIFT = (N_FFT // 2) // HOP
assert _SHIFT * HOP == N_FFT // 2


def padded_samples(frames: int) -> int:
    """Buffer length that holds a prepadded clip of up to `frames` frames and yields `frames` + 2 frames."""
    return (frames + 2 * _SHIFT) * HOP


def prepad(audio: np.ndarray, frames: int) -> np.ndarray:
    out = np.zeros(padded_samples(frames), np.float32)
    xp = np.pad(np.asarray(audio, np.float32), N_FFT // 2, mode="reflect")
    out[:len(xp)] = xp
    return out


def mels_from_prepadded(x: np.ndarray, lengths: Sequence[int], frames: int) -> np.ndarray:
    """(B, padded_samples(frames)) from `prepad` -> (B, 80, frames) float32 log-mels, zero past each
    row's length (DLE's padding)."""
    from jtts.audio import mel_spectrogram

    mel = np.asarray(mel_spectrogram(x))[:, :, _SHIFT:_SHIFT + frames]
    mask = np.arange(frames)[None, :] < np.asarray(lengths)[:, None]
    return np.where(mask[:, None, :], mel, np.float32(0)).astype(np.float32, copy=False)


def mels_from_audio(audios: Sequence[np.ndarray], frames: int | None = None) -> np.ndarray:
    """Log-mels of clips of any lengths, padded to `frames` (default: the longest) -> (B, 80, frames)."""
    lengths = [1 + len(a) // HOP for a in audios]
    frames = max(lengths) if frames is None else frames
    if max(lengths) > frames:
        raise ValueError(f"a clip of {max(lengths)} frames does not fit in {frames}")
    return mels_from_prepadded(np.stack([prepad(a, frames) for a in audios]), lengths, frames)
