"""`jtts corpus espeak`: real speech for training tests and benchmarks, spoken by espeak-ng.

    jtts corpus espeak sentences.txt -o corpora/en-us --voice en-us --seed 0
    jtts corpus espeak DLE/filelists/ljs_audio_text_train_filelist.txt -o corpora/ljs-en-gb --voice en-gb

writes an LJSpeech-layout directory that `jtts preprocess` and `jtts train` read unchanged:

    DIR/wavs/ID.wav      22050 Hz mono 16-bit PCM (resampled with soxr if the voice speaks at another rate)
    DIR/metadata.csv     ID|text as given|text as spoken (jtts's english_cleaners output)
    DIR/corpus.json      voice, rate, seed, espeak-ng version, per-utterance rate and pitch

Texts: one sentence per line. A line holding '|' is read as a DLE filelist line (`path|text`): the text is
its last field and the audio file's stem becomes the ID (LJ001-0001); otherwise the ID is the line number.
espeak speaks the *cleaned* text (numbers and abbreviations spelled out, as Tacotron 2 will see them), so the
audio says exactly what the model's input says. Lines too short, too long, or whose audio falls outside
[--min-seconds, --max-seconds] are reported as `FILE:LINE: reason` and skipped.

The seed draws each utterance's speaking rate and pitch within +-`jitter` of the base values from
(seed, line number) alone: the same seed gives byte-identical WAVs, whatever --limit or the other lines.

A corpus is complete exactly when metadata.csv exists: WAVs are written first (each under a temporary name,
renamed when complete), metadata.csv last, so a killed run never leaves a list naming missing audio.

espeak-ng comes from the `espeakng-loader` wheel (library and voice data; in jtts's `test` and `corpus`
extras), else from the system (`apt-get install espeak-ng`); it is driven through ctypes.
"""
from __future__ import annotations

import _ctypes
import argparse
import contextlib
import ctypes
import ctypes.util
import json
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from jtts.frontend import SAMPLE_RATE
from jtts.errors import DataError, JttsError, UsageError, one_line
from jtts.files import atomic_write

__all__ = ["Espeak", "espeak", "CorpusSettings", "make_corpus", "read_texts", "add_corpus_parser", "main"]

# espeak-ng's C API (speak_lib.h)
_SYNCHRONOUS = 2             # AUDIO_OUTPUT_SYNCHRONOUS: audio handed to the callback, espeak_Synth blocks
_DONT_EXIT = 0x8000          # espeakINITIALIZE_DONT_EXIT: return errors instead of exiting the process
_RATE, _PITCH = 1, 3         # espeak_PARAMETER
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
RATE_RANGE = (80, 450)       # words per minute espeak-ng accepts
DEFAULT_RATE, DEFAULT_PITCH = 175, 50


class _Voice(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_void_p), ("identifier", ctypes.c_char_p),
                ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte),
                ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]


def _find_library() -> tuple[str, str | None]:
    """(library path, data directory or None for the library's built-in default)."""
    try:
        import espeakng_loader
    except ImportError:
        name = ctypes.util.find_library("espeak-ng")
        if name is None:
            raise JttsError("espeak-ng is not installed: pip install espeakng-loader (or jtts[corpus]), "
                            "or apt-get install espeak-ng") from None
        return name, None
    return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()


class Espeak:
    """espeak-ng through ctypes. The library keeps state between utterances (its pitch-flutter phase, for one),
    so the same text comes out a few samples longer or shorter depending on what was spoken before; each
    `synth` therefore loads the library afresh (about 10 ms), and an utterance's audio depends on its text,
    voice, rate and pitch alone."""

    def __init__(self):
        self._path, self._data = _find_library()
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # kept alive here: the library holds only its address
        with self._session() as lib:
            self.version = (lib.espeak_Info(None) or b"?").decode()
            self._languages = self._list_languages(lib)

    @contextlib.contextmanager
    def _session(self, voice: str | None = None):
        """A freshly loaded and initialised library (unloaded afterwards), with `voice` set."""
        lib = ctypes.CDLL(self._path)
        try:
            lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
            lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
            lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
            lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                         ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
            lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
            lib.espeak_Info.restype = ctypes.c_char_p
            lib.espeak_Info.argtypes = [ctypes.c_void_p]
            rate = lib.espeak_Initialize(_SYNCHRONOUS, 0, self._data.encode() if self._data else None, _DONT_EXIT)
            if rate <= 0:
                raise JttsError(f"espeak-ng failed to start (library {self._path}, data {self._data}): error {rate}")
            self.sample_rate = int(rate)
            lib.espeak_SetSynthCallback(self._callback)
            if voice is not None:
                self._set_voice(lib, voice)
            yield lib
        finally:
            lib.espeak_Terminate()
            handle = lib._handle
            del lib
            unload = getattr(_ctypes, "dlclose", None)  # POSIX; elsewhere the state simply carries over
            if unload is not None:
                unload(handle)

    def _collect(self, wav, n, _events):
        if wav and n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0: go on synthesizing

    @staticmethod
    def _list_languages(lib) -> dict[str, str]:
        best: dict[str, tuple[int, str]] = {}
        lst, i = lib.espeak_ListVoices(None), 0
        while lst[i]:
            v = lst[i].contents
            # languages: (priority byte, NUL-terminated code) repeated, ended by a zero priority byte
            at = v.languages
            while at and ctypes.string_at(at, 1) != b"\0":
                priority, code = ctypes.string_at(at, 1)[0], ctypes.string_at(at + 1)
                key = code.decode().lower()
                if key not in best or priority < best[key][0]:  # lower number: the language's main voice
                    best[key] = (priority, v.identifier.decode())
                at += 2 + len(code)
            i += 1
        return {k: ident for k, (_, ident) in best.items()}

    def languages(self) -> dict[str, str]:
        """{language code: voice identifier}, e.g. {"en-gb": "gmw/en", "en-us": "gmw/en-US", ...}."""
        return dict(self._languages)

    def _set_voice(self, lib, name: str) -> None:
        if lib.espeak_SetVoiceByName(name.encode()) == 0:
            return
        # as the espeak-ng command does, fall back to the language code (en-gb is the voice "gmw/en")
        base, plus, variant = name.partition("+")
        ident = self._languages.get(base.lower()) if hasattr(self, "_languages") else None
        if ident is None or lib.espeak_SetVoiceByName((ident + plus + variant).encode()) != 0:
            known = ", ".join(sorted(c for c in getattr(self, "_languages", {}) if c.startswith("en")))
            raise UsageError(f"espeak-ng has no voice {name!r} (English ones: {known}; variants as "
                             f"en-us+f3, en-gb+m2)")

    def check_voice(self, name: str) -> None:
        """UsageError unless `name` is a voice: en-us, en-gb, en-us+f3, gmw/en, ..."""
        with self._session(name):
            pass

    def synth(self, text: str, *, voice: str = "en-us", rate: int = DEFAULT_RATE,
              pitch: int = DEFAULT_PITCH) -> np.ndarray:
        """int16 audio at `self.sample_rate` for `text`."""
        with self._session(voice) as lib:
            lib.espeak_SetParameter(_RATE, int(rate), 0)
            lib.espeak_SetParameter(_PITCH, int(pitch), 0)
            self._chunks = []
            data = text.encode("utf-8") + b"\0"
            err = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            chunks, self._chunks = self._chunks, []
        if err != 0:
            raise JttsError(f"espeak-ng failed on {text[:60]!r}: error {err}")
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


_ENGINE: Espeak | None = None


def espeak() -> Espeak:
    """The shared engine (finding and checking the library once)."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = Espeak()
    return _ENGINE


# -- texts ----------------------------------------------------------------------------------------------------

_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a file name of its own, never a path or hidden file

@dataclass(frozen=True)
class Line:
    source: str     # FILE:LINE
    lineno: int
    uid: str        # utterance ID: a filelist's audio stem, else the line number
    text: str


def read_texts(path) -> list[Line]:
    """Non-blank lines of a text file or DLE filelist (see the module doc)."""
    path = Path(path)
    try:
        content = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"no such text file: {path}") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a directory, not a text file") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text: {e}") from None
    out = []
    for lineno, raw in enumerate(content.splitlines(), 1):
        if not raw.strip():
            continue
        if "|" in raw:
            head, _, text = raw.rpartition("|")
            uid = Path(head.split("|")[0].strip()).stem
            uid = uid if _SAFE_ID.fullmatch(uid) else f"{lineno:05d}"
        else:
            text, uid = raw, f"{lineno:05d}"
        out.append(Line(f"{path}:{lineno}", lineno, uid, " ".join(text.split())))
    return out


# -- the corpus -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CorpusSettings:
    voice: str = "en-us"
    rate: int = DEFAULT_RATE         # words per minute before jitter
    pitch: int = DEFAULT_PITCH       # 0..100 before jitter
    jitter: float = 0.05             # rate and pitch drawn within +-jitter (relative) per utterance
    seed: int = 0
    limit: int | None = None         # at most this many utterances
    min_chars: int = 2
    max_chars: int = 300
    min_seconds: float = 0.3
    max_seconds: float = 10.0

    def check(self) -> None:
        if not RATE_RANGE[0] <= self.rate <= RATE_RANGE[1]:
            raise UsageError(f"--rate {self.rate} is outside espeak-ng's {RATE_RANGE[0]}..{RATE_RANGE[1]} words/min")
        if not 0 <= self.pitch <= 100:
            raise UsageError(f"--pitch {self.pitch} is outside 0..100")
        if not 0 <= self.jitter < 0.5:
            raise UsageError(f"--jitter {self.jitter} must lie in [0, 0.5)")
        if self.seed < 0:
            raise UsageError(f"--seed {self.seed} must be at least 0")
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"--limit {self.limit} must be at least 1")
        if not 0 < self.min_seconds < self.max_seconds:
            raise UsageError(f"need 0 < --min-seconds < --max-seconds, got {self.min_seconds}, {self.max_seconds}")
        if not 0 < self.min_chars <= self.max_chars:
            raise UsageError(f"need 0 < --min-chars <= --max-chars, got {self.min_chars}, {self.max_chars}")

    def prosody(self, lineno: int) -> tuple[int, int]:
        """(rate, pitch) of the utterance on `lineno`: a function of (seed, lineno) only."""
        u = np.random.default_rng([self.seed, lineno]).uniform(-1.0, 1.0, 2) * self.jitter
        rate = int(np.clip(round(self.rate * (1 + u[0])), *RATE_RANGE))
        pitch = int(np.clip(round(self.pitch * (1 + u[1])), 0, 100))
        return rate, pitch


def _to_22050(audio: np.ndarray, rate: int) -> np.ndarray:
    """int16 at `rate` -> int16 at 22050 Hz (unchanged when espeak already speaks at 22050)."""
    if rate == SAMPLE_RATE:
        return audio
    import soxr

    x = soxr.resample(audio.astype(np.float32) / 32768.0, rate, SAMPLE_RATE)
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


def _write_wav(path: Path, audio: np.ndarray) -> None:
    import soundfile as sf

    with atomic_write(path) as f:
        sf.write(f, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")


def _check_text(line: Line, cleaned: str, s: CorpusSettings) -> str | None:
    """Why the line cannot be used, or None."""
    from jtts.text import text_to_sequence

    if len(cleaned) < s.min_chars:
        return f"too short: {len(cleaned)} characters after cleaning (--min-chars {s.min_chars})"
    if len(cleaned) > s.max_chars:
        return f"too long: {len(cleaned)} characters after cleaning (--max-chars {s.max_chars})"
    if not text_to_sequence(cleaned):
        return f"nothing speakable in {line.text!r}"
    return None


def make_corpus(texts, output, settings: CorpusSettings = CorpusSettings(), *, overwrite: bool = False,
                report=None) -> dict:
    """Speaks the lines of `texts` (a path, or a list of `Line`) into an LJSpeech directory `output`.

    -> summary dict(utterances, seconds, skipped, problems, output). Raises UsageError for bad settings or an
    existing corpus (unless overwrite), DataError for an unreadable text file or when no line is usable."""
    settings.check()
    report = report or (lambda msg: print(msg, file=sys.stderr))
    lines = read_texts(texts) if not isinstance(texts, list) else texts
    out = Path(output)
    meta_path = out / "metadata.csv"
    if meta_path.exists() and not overwrite:
        raise UsageError(f"{out} already holds a corpus (metadata.csv); choose another directory or overwrite it")
    engine = espeak()
    engine.check_voice(settings.voice)
    try:
        (out / "wavs").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise JttsError(f"cannot make the corpus directory {out / 'wavs'}: {e.strerror or e}") from None
    meta_path.unlink(missing_ok=True)  # from here until the end the directory is incomplete
    from jtts.text import clean_text

    rows, problems, seen, record, seconds = [], [], set(), [], 0.0
    for line in lines:
        if settings.limit is not None and len(rows) >= settings.limit:
            break
        cleaned = clean_text(line.text)
        why = _check_text(line, cleaned, settings)
        if why is None and line.uid in seen:
            why = f"ID {line.uid} is used by an earlier line"
        if why is None:
            rate, pitch = settings.prosody(line.lineno)
            audio = _to_22050(engine.synth(cleaned, voice=settings.voice, rate=rate, pitch=pitch), engine.sample_rate)
            dur = len(audio) / SAMPLE_RATE
            if not settings.min_seconds <= dur <= settings.max_seconds:
                why = (f"spoken in {dur:.2f} s, outside [{settings.min_seconds:g}, {settings.max_seconds:g}] s "
                       f"(--min-seconds/--max-seconds)")
        if why is not None:
            problems.append(f"{line.source}: {why}")
            report(problems[-1])
            continue
        _write_wav(out / "wavs" / f"{line.uid}.wav", audio)
        seen.add(line.uid)
        seconds += dur
        rows.append(f"{line.uid}|{line.text}|{cleaned}")
        record.append(dict(id=line.uid, source=line.source, rate=rate, pitch=pitch, seconds=round(dur, 4)))
    if not rows:
        raise DataError(f"no usable line in {lines[0].source.rsplit(':', 1)[0] if lines else texts}"
                        f" ({len(problems)} skipped)")
    info = dict(format="jtts-espeak-corpus", version=1, espeak_ng=engine.version, **asdict(settings),
                sample_rate=SAMPLE_RATE, espeak_sample_rate=engine.sample_rate, seconds=round(seconds, 3),
                utterances=record, problems=problems)
    with atomic_write(out / "corpus.json", "w") as f:
        json.dump(info, f, indent=1)
    with atomic_write(meta_path, "w") as f:  # last: its presence says the corpus is complete
        f.write("\n".join(rows) + "\n")
    return dict(utterances=len(rows), seconds=seconds, skipped=len(problems), problems=problems, output=str(out))


# -- command line ---------------------------------------------------------------------------------------------

def add_corpus_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("corpus", help="make a training corpus of synthetic speech (espeak-ng)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="engine", required=True)
    e = sub.add_parser("espeak", help="speak a text file with espeak-ng into an LJSpeech directory")
    e.add_argument("texts", type=Path, help="one sentence per line, or a DLE filelist (path|text)")
    e.add_argument("-o", "--output", required=True, type=Path, metavar="DIR", help="corpus directory to write")
    d = CorpusSettings()
    e.add_argument("--voice", default=d.voice, help="espeak-ng voice: en-us (default), en-gb, en-us+f3, ...")
    e.add_argument("--rate", type=int, default=d.rate, help=f"words per minute (default {d.rate})")
    e.add_argument("--pitch", type=int, default=d.pitch, help=f"0..100 (default {d.pitch})")
    e.add_argument("--jitter", type=float, default=d.jitter,
                   help=f"per-utterance rate and pitch variation, relative (default {d.jitter})")
    e.add_argument("--seed", type=int, default=d.seed, help="draws each utterance's variation (default 0)")
    e.add_argument("--limit", type=int, help="stop after this many utterances")
    e.add_argument("--min-chars", type=int, default=d.min_chars, help="skip shorter cleaned lines")
    e.add_argument("--max-chars", type=int, default=d.max_chars, help="skip longer cleaned lines")
    e.add_argument("--min-seconds", type=float, default=d.min_seconds, help="skip shorter audio")
    e.add_argument("--max-seconds", type=float, default=d.max_seconds, help="skip longer audio")
    e.add_argument("--overwrite", action="store_true", help="replace a corpus already in DIR")
    e.add_argument("-q", "--quiet", action="store_true", help="print neither skipped lines nor the summary")
    e.set_defaults(func=run)
    return p


def run(args) -> int:
    settings = CorpusSettings(voice=args.voice, rate=args.rate, pitch=args.pitch, jitter=args.jitter, seed=args.seed,
                              limit=args.limit, min_chars=args.min_chars, max_chars=args.max_chars,
                              min_seconds=args.min_seconds, max_seconds=args.max_seconds)
    t0 = time.perf_counter()
    try:
        res = make_corpus(args.texts, args.output, settings, overwrite=args.overwrite,
                          report=(lambda _: None) if args.quiet else None)
    except JttsError as e:
        print(f"jtts corpus: error: {one_line(e)}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # a full disk, a file where a directory should be: one line, not a traceback
        print(f"jtts corpus: error: {one_line(e)}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"wrote {res['utterances']} utterances ({res['seconds'] / 60:.1f} min of speech) to {res['output']} "
              f"in {time.perf_counter() - t0:.1f} s; {res['skipped']} line(s) skipped")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="jtts")
    add_corpus_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main(["corpus", *sys.argv[1:]]))
