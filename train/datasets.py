"""Training data: datasets, bad-data reports, and the mel cache's reader.

A dataset is one of
  * an LJSpeech directory: `metadata.csv` (`id|text|normalized text`) and `wavs/ID.wav`;
  * a DLE filelist: `path|text` lines, paths relative to a dataset root (DLE's --dataset-path,
    the current directory by default);
  * a mel cache written by `jtts.train.preprocess.preprocess` (a directory with `manifest.json`).

Every dataset has an audio front end (`jtts.frontend.AudioConfig`, the model's: `load_dataset(..., audio=...)`;
DLE's 22050 Hz by default; a mel cache has the one it was made with). Audio at any sample rate is resampled to
its rate and stereo is averaged to mono (`jtts.audio.load_wav`).
Entries that cannot be trained on are reported as `FILE:LINE: reason`, one line each, and skipped
(on_error="skip") or collected into one `DataError` (on_error="fail"). Only WAV headers are read here,
so listing LJSpeech takes seconds; a file whose header is fine but whose body is not fails when read.

Batching lives in `jtts.train.data`, cache writing in `jtts.train.preprocess`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from jtts.audio import load_wav
from jtts.errors import DataError
from jtts.frontend import DEFAULT as DEFAULT_AUDIO, AudioConfig
from jtts.text import TextFrontend

__all__ = ["DataError", "Utterance", "Dataset", "load_dataset", "read_ljspeech", "read_filelist",
           "load_cache", "with_text_frontend", "read_audio", "read_mel", "mels_from_audio", "MANIFEST", "MEL_PARAMS"]

MANIFEST = "manifest.json"
CACHE_FORMAT = "jtts-mel-cache"
CACHE_VERSION = 1
# A cache made with other STFT/mel settings would silently train a model on the wrong features: its manifest
# records them (DLE's front end: these) and they are compared with the model's.
MEL_PARAMS = DEFAULT_AUDIO.cache_params()
DEFAULT_CLEANERS = ("english_cleaners",)
ON_ERROR = ("skip", "fail")

Report = Callable[[str], None]


class _Bad(Exception):
    pass


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


@dataclasses.dataclass(frozen=True)
class Utterance:
    audio: str                 # absolute path of the source audio file
    text: str
    tokens: tuple[int, ...]    # jtts.text ids of `text`
    samples: int               # length at the front end's sample rate, after resampling
    source: str                # "FILE:LINE" of the entry, for messages
    mel: str | None = None     # cached (n_mels, frames) float32 .npy, if preprocessed
    frontend: AudioConfig = DEFAULT_AUDIO  # the dataset's: the rate `samples` counts at, the hop of `frames`

    @property
    def frames(self) -> int:
        return self.frontend.frames(self.samples)


@dataclasses.dataclass
class Dataset(Sequence):
    utterances: list[Utterance]
    origin: str
    problems: list[str] = dataclasses.field(default_factory=list)
    audio: AudioConfig = DEFAULT_AUDIO  # every utterance's front end
    cleaners: tuple[str, ...] = DEFAULT_CLEANERS  # the text cleaners `tokens` were made with

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, i):
        return self.utterances[i]

    def __iter__(self) -> Iterator[Utterance]:
        return iter(self.utterances)

    @property
    def cached(self) -> bool:
        return all(u.mel is not None for u in self.utterances)


def resampled_length(n: int, sample_rate: int, target: int = DEFAULT_AUDIO.sample_rate) -> int:
    """Samples after soxr resampling to `target` Hz (soxr rounds n * ratio half up)."""
    return n if sample_rate == target else math.floor(n * target / sample_rate + 0.5)


def _check_entry(source: str, audio: Path, text: str, frontend: TextFrontend, max_seconds: float | None,
                 fe: AudioConfig) -> Utterance:
    import soundfile as sf

    if not audio.is_file():
        raise _Bad(f"missing audio file {audio}")
    try:
        info = sf.info(str(audio))
    except Exception as e:  # libsndfile's errors are RuntimeErrors, a directory an OSError, ...
        raise _Bad(f"unreadable audio file {audio}: {' '.join(str(e).split())}") from None
    if info.samplerate <= 0:
        raise _Bad(f"unreadable audio file {audio}: sample rate {info.samplerate}")
    samples = resampled_length(info.frames, info.samplerate, fe.sample_rate)
    # The STFT reflect-pads by half a frame, which needs more samples than that.
    if samples <= fe.n_fft // 2:
        raise _Bad(f"audio file {audio} is too short: {samples} samples at {fe.sample_rate} Hz, "
                   f"the STFT needs more than {fe.n_fft // 2}")
    seconds = samples / fe.sample_rate
    if max_seconds is not None and seconds > max_seconds:
        raise _Bad(f"clip {audio} is {seconds:.2f} s, longer than the {max_seconds:g} s limit")
    tokens = tuple(frontend.ids(text))
    if not frontend.speakable(tokens):  # punctuation alone gives ids but nothing to say
        raise _Bad(f"transcript has no speakable symbol: {text!r}")
    return Utterance(audio=str(audio.resolve()), text=text, tokens=tokens, samples=samples, source=source,
                     frontend=fe)


def _collect(entries: Iterable[tuple[str, Path | None, str]], origin: str, *, on_error: str,
             max_seconds: float | None, cleaners, report: Report | None, audio: AudioConfig | None) -> Dataset:
    """entries: (source, audio path, text), or (source, None, reason) for a line that did not parse."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    report = _stderr if report is None else report
    fe = DEFAULT_AUDIO if audio is None else audio
    frontend = TextFrontend(cleaners)
    utterances, problems = [], []
    for source, audio, text in entries:
        try:
            if audio is None:
                raise _Bad(text)
            utterances.append(_check_entry(source, audio, text, frontend, max_seconds, fe))
        except _Bad as e:
            problems.append(f"{source}: {e}")
            report(problems[-1])
    if problems and on_error == "fail":
        raise DataError(f"{len(problems)} bad entr{'y' if len(problems) == 1 else 'ies'} in {origin}:\n"
                        + "\n".join(problems), problems)
    if not utterances:
        skipped = f" ({len(problems)} bad entries skipped)" if problems else ""
        raise DataError(f"no usable utterances in {origin}{skipped}", problems)
    return Dataset(utterances, origin, problems, fe, frontend.cleaners)


def with_text_frontend(dataset: Dataset, text: TextFrontend) -> Dataset:
    """The dataset with every transcript's ids made by `text`, the model's text front end (its config's), which
    decides over the cleaners the data was read or preprocessed with. A transcript with nothing speakable to it
    is a DataError naming the entry."""
    if text == TextFrontend(dataset.cleaners):
        return dataset  # the ids are already these
    utts, bad = [], []
    for u in dataset:
        ids = text.ids(u.text)
        if not text.speakable(ids):
            bad.append(f"{u.source}: transcript has no speakable symbol for the model's text front end "
                       f"(cleaners {', '.join(text.cleaners)}): {u.text!r}")
        utts.append(dataclasses.replace(u, tokens=tuple(ids)))
    if bad:
        raise DataError(f"{len(bad)} transcript(s) in {dataset.origin} say nothing to the model:\n" + "\n".join(bad),
                        bad)
    return dataclasses.replace(dataset, utterances=utts, cleaners=text.cleaners)


def _lines(path: Path) -> Iterator[tuple[int, str, str | None]]:
    """(line number, text, None) per non-blank line, or (line number, "", reason) for a line that is not UTF-8
    (reported and skipped like any bad entry, by its line rather than a byte offset into the file)."""
    for lineno, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        try:
            line = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as e:
            yield lineno, "", f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
            continue
        if lineno == 1:
            line = line.removeprefix("\ufeff")  # a byte-order mark some editors write
        if line.strip():  # blank lines (a trailing newline, say) are not entries
            yield lineno, line, None


def read_ljspeech(root, *, on_error: str = "skip", max_seconds: float | None = None,
                  cleaners=DEFAULT_CLEANERS, report: Report | None = None, audio: AudioConfig | None = None) -> Dataset:
    """An LJSpeech directory, its clips taken at `audio`'s rate (default DLE's front end). The normalized transcript (third column: numbers spelled out, as in DLE's
    filelists) is used, the second column where the third is missing or empty."""
    root = Path(root)
    meta = root / "metadata.csv"
    if not meta.is_file():
        raise DataError(f"{root} is not an LJSpeech directory: no metadata.csv")

    def entries():
        for lineno, line, problem in _lines(meta):
            source = f"{meta}:{lineno}"
            if problem is not None:
                yield source, None, problem
                continue
            parts = line.split("|")
            if len(parts) not in (2, 3) or not parts[0].strip():
                yield source, None, f"expected 'id|text|normalized text', got {len(parts)} field(s)"
                continue
            text = parts[2] if len(parts) == 3 and parts[2].strip() else parts[1]
            yield source, root / "wavs" / f"{parts[0].strip()}.wav", text.strip()

    return _collect(entries(), str(meta), on_error=on_error, max_seconds=max_seconds, cleaners=cleaners,
                    report=report, audio=audio)


def read_filelist(filelist, root=None, *, on_error: str = "skip", max_seconds: float | None = None,
                  cleaners=DEFAULT_CLEANERS, report: Report | None = None, audio: AudioConfig | None = None) -> Dataset:
    """A DLE filelist: `path|text` per line, each path relative to `root` (default: the current
    directory, DLE's --dataset-path default)."""
    filelist = Path(filelist)
    root = Path.cwd() if root is None else Path(root)

    def entries():
        for lineno, line, problem in _lines(filelist):
            source = f"{filelist}:{lineno}"
            if problem is not None:
                yield source, None, problem
                continue
            parts = line.strip().split("|")
            if len(parts) != 2 or not parts[0].strip():
                yield source, None, f"expected 'path|text', got {len(parts)} field(s)"
                continue
            yield source, root / parts[0].strip(), parts[1].strip()

    return _collect(entries(), str(filelist), on_error=on_error, max_seconds=max_seconds,
                    cleaners=cleaners, report=report, audio=audio)


def audio_in_cache(audio: str, cache) -> str:
    """How a mel cache stores an audio path: relative to the cache directory, so that the cache keeps working
    when it moves together with the dataset; absolute where there is no relative path (another drive)."""
    try:
        return os.path.relpath(Path(audio).resolve(), Path(cache).resolve())
    except ValueError:
        return str(Path(audio).resolve())


def audio_from_cache(stored: str, cache) -> str:
    """The absolute audio path of a cache entry (entries of older caches are absolute already)."""
    return os.path.normpath(Path(cache).resolve() / stored)


def cache_frontend(mel: dict, manifest) -> AudioConfig:
    """The front end a cache's manifest records (its "mel" settings)."""
    if not isinstance(mel, dict) or mel.get("log_floor") != MEL_PARAMS["log_floor"]:
        raise DataError(f"{manifest}: mels were computed with {mel}, not a jtts front end; run `jtts preprocess` "
                        f"again")
    try:
        return AudioConfig.of({k: v for k, v in mel.items() if k != "log_floor"})
    except (TypeError, ValueError) as e:
        raise DataError(f"{manifest}: invalid mel settings ({e}); run `jtts preprocess` again") from None


def check_frontend(dataset: Dataset, audio: AudioConfig) -> None:
    """A mel cache made with another front end than the model's cannot train it (DataError naming both)."""
    diff = dataset.audio.differences(audio)
    if diff:
        raise DataError(f"{dataset.origin}: mels were computed with another audio front end than the model's "
                        f"({'; '.join(diff)}: cache vs model); run `jtts preprocess` again with the model's "
                        f"(--config MODEL_DIR or --set audio.KEY=VALUE), or train on the audio itself")


def load_cache(path, audio: AudioConfig | None = None) -> Dataset:
    """A mel cache written by `preprocess`; with `audio`, one made with that front end only. Without its
    manifest (written last) it is incomplete."""
    path = Path(path)
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise DataError(f"{path} is not a complete mel cache: no {MANIFEST} (an interrupted "
                        f"`jtts preprocess` leaves none; run it again)")
    try:
        meta = json.loads(manifest.read_text(encoding="utf-8"))
        if meta.get("format") != CACHE_FORMAT or meta.get("version") != CACHE_VERSION:
            raise DataError(f"{manifest}: not a version {CACHE_VERSION} {CACHE_FORMAT} manifest")
        fe = cache_frontend(meta.get("mel"), manifest)
        utterances = [Utterance(audio=audio_from_cache(e["audio"], path), text=e["text"],
                                tokens=tuple(e["tokens"]), samples=int(e["samples"]), source=e["source"],
                                mel=str(path / e["mel"]), frontend=fe)
                      for e in meta["utterances"]]
    except (ValueError, KeyError, TypeError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{manifest} is damaged: {type(e).__name__}: {e}") from None
    if not utterances:
        raise DataError(f"{manifest} lists no utterances")
    # caches written before the manifest recorded the cleaners were made with preprocess's default
    dataset = Dataset(utterances, str(path), list(meta.get("problems", [])), fe,
                      tuple(meta.get("cleaners", DEFAULT_CLEANERS)))
    if audio is not None:
        check_frontend(dataset, audio)
    return dataset


def load_dataset(path, *, root=None, on_error: str = "skip", max_seconds: float | None = None,
                 cleaners=DEFAULT_CLEANERS, report: Report | None = None, audio: AudioConfig | None = None) -> Dataset:
    """Any of the three layouts, told apart by what is on disk. A Dataset is returned as it is (and checked).

    audio: the front end the data is for (the model's). Audio is read at its rate; a mel cache must have been
    made with it (DataError otherwise). None: DLE's for audio, a cache's own for a cache."""
    if isinstance(path, Dataset):
        if audio is not None:
            check_frontend(path, audio)
        return path
    p = Path(path)
    kw = dict(on_error=on_error, max_seconds=max_seconds, cleaners=cleaners, report=report, audio=audio)
    if p.is_dir():
        if (p / MANIFEST).exists():
            return load_cache(p, audio)
        if (p / "metadata.csv").is_file():
            return read_ljspeech(p, **kw)
        if (p / "mels").is_dir():
            return load_cache(p, audio)  # raises: a cache whose preprocess never finished
        raise DataError(f"{p} is neither a mel cache ({MANIFEST}) nor an LJSpeech directory (metadata.csv)")
    if p.is_file():
        return read_filelist(p, root, **kw)
    raise DataError(f"no such dataset: {p}")


def read_audio(u: Utterance) -> np.ndarray:
    """The utterance's audio at its front end's rate, exactly `u.samples` long: the length the batch plan was made
    with (soxr's output length is predicted from the header; any rounding difference is cut or
    zero-padded rather than allowed to overflow a bucket)."""
    try:
        audio, _ = load_wav(u.audio, u.frontend.sample_rate)
    except (OSError, ValueError) as e:
        raise DataError(f"{u.source}: {e}", [f"{u.source}: {e}"]) from None
    if len(audio) != u.samples:
        audio = np.pad(audio[:u.samples], (0, max(0, u.samples - len(audio))))
    return audio


_NPY_MAGIC = b"\x93NUMPY"
_NPY_FIELDS = re.compile(r"""\{'descr': '([<>|=]?[a-z]\d+)', 'fortran_order': (True|False), 'shape': \(([\d, ]*)\), \}""")


def read_npy(path) -> np.ndarray:
    """`np.load` of a plain .npy array file, safe in threads. np.load parses the header with ast.literal_eval,
    and CPython 3.11 keeps the AST constructor's recursion counter per interpreter: two threads parsing at
    once can make either fail with "SystemError: AST constructor recursion depth mismatch" (the data loader
    reads mels in several threads, which did so in CI). Headers as np.save writes them are read with a regular
    expression instead; any other falls back to np.load under a lock."""
    with open(path, "rb") as f:
        head = f.read(10)
        if len(head) == 10 and head[:6] == _NPY_MAGIC and head[6] in (1, 2, 3):
            if head[6] == 1:
                size = int.from_bytes(head[8:10], "little")
            else:
                size = int.from_bytes(head[8:10] + f.read(2), "little")
            m = _NPY_FIELDS.fullmatch(f.read(size).decode("latin-1").rstrip(" \n"))
            if m:
                shape = tuple(int(d) for d in m[3].split(",") if d.strip())
                count = int(np.prod(shape))
                data = np.fromfile(f, dtype=np.dtype(m[1]), count=count)
                if data.size != count:
                    raise ValueError(f"{path}: truncated .npy file ({data.size} of {count} values)")
                return data.reshape(shape, order="F" if m[2] == "True" else "C")
    with _NPY_LOCK:
        return np.load(path, allow_pickle=False)


_NPY_LOCK = threading.Lock()


def read_mel(u: Utterance) -> np.ndarray:
    mel = read_npy(u.mel)
    n_mels = u.frontend.n_mels
    if mel.shape != (n_mels, u.frames) or mel.dtype != np.float32:
        raise DataError(f"{u.mel}: mel of shape {mel.shape} {mel.dtype}, expected ({n_mels}, {u.frames}) float32 "
                        f"for {u.source}; run `jtts preprocess` again")
    return mel


# -- mels of many lengths with a few compiled shapes ------------------------------------------------------
#
# mel_spectrogram reflect-pads by p = n_fft // 2 and frame g starts at sample g * hop of the padded signal.
# A clip reflect-padded here by p, placed at offset g * hop - p of a zero buffer (g = ceil(p / hop), the
# smallest such offset that is not negative: 0 and g = 2 for DLE's 512 / 256), makes frame f + g of
# mel_spectrogram(buffer) see exactly the samples of frame f of mel_spectrogram(clip): the buffer's own
# reflect padding touches only frames below g, the zeros only frames past the clip's end. So clips of any
# length share one compiled shape per bucket length.

def _lead(fe: AudioConfig) -> tuple[int, int]:
    """(g, offset): frames to drop at the start, and where the reflect-padded clip starts in the buffer."""
    pad = fe.n_fft // 2
    g = -(-pad // fe.hop)
    return g, g * fe.hop - pad


def padded_samples(frames: int, fe: AudioConfig = DEFAULT_AUDIO) -> int:
    """Buffer length that holds a prepadded clip of up to `frames` frames and yields at least `frames` + g
    frames."""
    return (frames + _lead(fe)[0]) * fe.hop + fe.n_fft // 2


def prepad(audio: np.ndarray, frames: int, fe: AudioConfig = DEFAULT_AUDIO) -> np.ndarray:
    out = np.zeros(padded_samples(frames, fe), np.float32)
    xp = np.pad(np.asarray(audio, np.float32), fe.n_fft // 2, mode="reflect")
    offset = _lead(fe)[1]
    out[offset:offset + len(xp)] = xp
    return out


def mels_from_prepadded(x: np.ndarray, lengths: Sequence[int], frames: int,
                        fe: AudioConfig = DEFAULT_AUDIO) -> np.ndarray:
    """(B, padded_samples(frames)) from `prepad` -> (B, n_mels, frames) float32 log-mels, zero past each
    row's length (DLE's padding)."""
    from jtts.audio import mel_spectrogram

    g = _lead(fe)[0]
    mel = np.asarray(mel_spectrogram(x, **fe.mel_kwargs()))[:, :, g:g + frames]
    mask = np.arange(frames)[None, :] < np.asarray(lengths)[:, None]
    return np.where(mask[:, None, :], mel, np.float32(0)).astype(np.float32, copy=False)


def mels_from_audio(audios: Sequence[np.ndarray], frames: int | None = None,
                    fe: AudioConfig = DEFAULT_AUDIO) -> np.ndarray:
    """Log-mels of clips of any lengths, padded to `frames` (default: the longest) -> (B, n_mels, frames)."""
    lengths = [fe.frames(len(a)) for a in audios]
    frames = max(lengths) if frames is None else frames
    if max(lengths) > frames:
        raise ValueError(f"a clip of {max(lengths)} frames does not fit in {frames}")
    return mels_from_prepadded(np.stack([prepad(a, frames, fe) for a in audios]), lengths, frames, fe)
