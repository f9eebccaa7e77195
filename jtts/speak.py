"""`jtts synthesize`: text -> audio files (or a stream on stdout) with Tacotron 2 + WaveGlow.

Reads the text (arguments, -i FILE or stdin, one utterance per line), checks the output and the model paths
before anything loads, runs `jtts.pipeline`, writes each utterance as it is done (under a temporary name,
renamed), and reports every sentence that still fails after repair by its line and text. `-o DIR/` also gets
manifest.tsv: one row per sentence with its place in the audio, its alignment health and what repair did.
`-o -` streams: sentences are written to stdout as soon as each is vocoded.
"""
from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from jtts import cli
from jtts.errors import JttsError, UsageError

SUBTYPES = ("PCM_16", "PCM_24", "FLOAT")
AUDIO_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}  # what soundfile writes everywhere
MANIFEST = "manifest.tsv"
MANIFEST_COLUMNS = ("file", "source", "sentence", "start", "seconds", "status", "tries", "pieces", "frames", "stop",
                    "focus", "backtrack", "end_gap", "skip", "dwell", "problems", "text")
_NUMBERED = re.compile(r"\d{4,}\.(wav|png|npy)")  # -o DIR/'s files: 0001.wav, 0001.png, 0001.npy, ...


def add_parser(sub) -> None:
    s = sub.add_parser("synthesize", help="text -> WAV with Tacotron 2 + WaveGlow",
                       description="Speak text with NVIDIA's Tacotron 2 + WaveGlow. Without --tacotron2/--waveglow "
                                   "the NGC models are downloaded once and cached ($JTTS_HOME, else "
                                   "$XDG_CACHE_HOME/jtts or ~/.cache/jtts).")
    s.add_argument("text", nargs="*", help="text to speak, one utterance (or -i FILE, or stdin: one per line)")
    s.add_argument("-i", "--input", help="text file, one utterance per line ('-' for stdin)")
    s.add_argument("-o", "--output", required=True,
                   help="audio file for one utterance (.wav, .flac or .ogg: the format follows the suffix), a "
                        "directory (DIR/, or a path without suffix) for numbered WAV files plus manifest.tsv, or - "
                        "for a WAV stream on stdout (see --stream)")
    s.add_argument("--overwrite", action="store_true",
                   help="-o DIR/ may hold an earlier run: its numbered files and manifest are removed first "
                        "(other files in DIR are kept)")
    s.add_argument("--tacotron2", help="converted model directory or NVIDIA .pt checkpoint (default: cached NGC model)")
    s.add_argument("--waveglow", help="converted model directory or NVIDIA .pt checkpoint (default: cached NGC model)")
    s.add_argument("--sigma", type=cli._number_in(0, 10), default=0.9,
                   help="WaveGlow noise scale, 0 to 10 (default 0.9, as DLE)")
    s.add_argument("--denoise", type=cli._number_in(0, 1), default=0.01,
                   help="denoiser strength, 0 to 1; 0 skips it (default 0.01)")
    s.add_argument("--dtype", choices=cli.DTYPES, default="float32", help="compute dtype (parameters stay float32)")
    # JAX keys are 32-bit: 2**32 would give seed 0's audio
    s.add_argument("--seed", type=cli._int_in(0, 2**32 - 1), default=0,
                   help="0 to 4294967295; same seed and text, same audio (default 0)")
    s.add_argument("--batch-size", type=cli._int_in(1, 1024), default=8,
                   help="sentences per Tacotron 2 batch, 1 to 1024")
    s.add_argument("--max-decoder-steps", type=cli._int_in(1, 100_000),
                   help="Tacotron 2 frames per sentence at most, 1 to 100000 (default: the model's, 2000 = 23 s for "
                        "NGC's); a sentence that reaches it has failed (babble)")
    s.add_argument("--gate-threshold", type=cli._number_in(0, 1),
                   help="the decoder stops when its stop gate's probability exceeds this, 0 to 1 (default: the "
                        "model's, 0.5)")
    s.add_argument("--attention-window", type=cli._int_in(1, 1000), metavar="K",
                   help="let the attention look only from 1 symbol behind to K symbols ahead of where it was at "
                        "the previous step (ESPnet's attention constraint; try 3): stops skipped and repeated "
                        "words; default: off")
    s.add_argument("--no-retry", action="store_true",
                   help="keep the first decode of every sentence; by default a sentence whose alignment shows a "
                        "failure is decoded again with new dropout noise, then split in two (see --tries)")
    s.add_argument("--tries", type=cli._int_in(1, 20), default=3,
                   help="decodes of a failing sentence (and of each half of a split one) before splitting it, 1 to "
                        "20 (default 3)")
    s.add_argument("--max-chars", type=cli._int_in(20, 10_000), default=200,
                   help="longer sentences are split at commas, then between words; 20 to 10000 (default 200)")
    s.add_argument("--pause", type=cli._number_in(0, 60), default=0.2,
                   help="silence between sentences, 0 to 60 seconds (default 0.2)")
    s.add_argument("--sample-rate", type=cli._int_in(1000, 192_000),
                   help="resample the output, 1000 to 192000 Hz (default: the models' own, 22050 Hz for NGC's)")
    s.add_argument("--subtype", choices=SUBTYPES,
                   help="sample format of .wav (PCM_16, PCM_24, FLOAT) and .flac (PCM_16, PCM_24); default PCM_16")
    s.add_argument("--float", action="store_true", help="same as --subtype FLOAT (32-bit float WAV)")
    s.add_argument("--stream", action="store_true",
                   help="with -o -: write each sentence to stdout as soon as it is spoken, as a WAV whose header "
                        "gives no length (0xFFFFFFFF, as sox and ffmpeg write to pipes); -o - implies it")
    s.add_argument("--raw", action="store_true",
                   help="with -o -: headerless little-endian samples (PCM_16: s16le, PCM_24: s24le, FLOAT: f32le)")
    s.add_argument("--save-mel", action="store_true", help="also write each utterance's mel as .npy (80 x frames)")
    s.add_argument("--plot", action="store_true", help="also write a PNG of each mel and attention alignment")
    s.add_argument("--base-url", help="download mirror for the NGC files (default $JTTS_BASE_URL or NGC)")
    s.add_argument("--offline", action="store_true", help="never download; use the cache or the given paths")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress or summary (warnings still shown)")
    s.set_defaults(func=_synthesize)


# -- input ------------------------------------------------------------------------------------------------------

def _read_lines(text: str, origin: str) -> list[tuple[str, str]]:
    """One utterance per non-blank line -> [(where, text)]; only "\\n" ends a line (str.splitlines would
    also split at form feeds and other controls, shifting the line numbers users see in editors)."""
    items = [(f"{origin}, line {i}", ln.rstrip("\r")) for i, ln in enumerate(text.split("\n"), 1)]
    items = [(w, t) for w, t in items if t.strip()]
    if not items:
        raise UsageError(f"{origin}: no text (every line is blank)")
    return items


def _read_texts(args) -> list[tuple[str, str]]:
    if args.text and args.input:
        raise UsageError("give the text as arguments or with -i FILE, not both")
    if args.text:
        return [("the text", " ".join(args.text))]
    if args.input and args.input != "-":
        path = Path(args.input)
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise JttsError(f"{path}: cannot read ({e.strerror or e})") from None
        try:
            return _read_lines(raw.decode("utf-8-sig"), str(path))
        except UnicodeDecodeError as e:
            line = raw[:e.start].count(b"\n") + 1
            raise JttsError(f"{path}, line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x})") from None
    if args.input is None and sys.stdin is not None and sys.stdin.isatty():
        raise UsageError("no text: give it as arguments, with -i FILE, or on stdin")
    return _read_lines(sys.stdin.read() if sys.stdin is not None else "", "stdin")


def _prepare(items: list[tuple[str, str]], max_chars: int, text_frontend):
    from jtts.sentences import NothingToSpeak, prepare

    out = []
    for where, text in items:
        try:
            out.append(prepare(text, max_chars, text_frontend))
        except NothingToSpeak as e:
            raise NothingToSpeak(f"{where}: {e}") from None
    return out


# -- output -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Output:
    path: Path | None  # None: stdout
    as_dir: bool
    fmt: str           # soundfile format, or "RAW"
    subtype: str


def _plan_output(args, n: int) -> _Output:
    """Creates the directory and proves it writable, and refuses a directory holding an earlier run's files
    unless --overwrite, all before any model is loaded."""
    output = args.output
    if output == "-" or args.stream or args.raw:
        return _plan_stream(args)
    out = Path(output)
    as_dir = output.endswith(("/", os.sep)) or out.is_dir()
    suffix = out.suffix.lower()
    if not as_dir and suffix and suffix not in AUDIO_FORMATS:
        raise UsageError(f"-o {output}: cannot write {suffix} files; jtts writes {', '.join(AUDIO_FORMATS)} "
                         f"(or a directory: end the path with /)")
    as_dir = as_dir or not suffix
    if n > 1 and not as_dir:
        raise UsageError(f"-o {output}: {n} utterances need a directory (-o DIR/); a {suffix} path holds one")
    fmt = "WAV" if as_dir else AUDIO_FORMATS[suffix]
    subtype = _subtype(args, fmt)
    cli._probe(out if as_dir else out.parent, output)
    if as_dir:
        earlier = _earlier_outputs(out)
        if earlier and not args.overwrite:
            names = ", ".join(p.name for p in earlier[:3]) + (f" and {len(earlier) - 3} more" if len(earlier) > 3 else "")
            raise UsageError(f"-o {output}: holds {len(earlier)} file(s) of an earlier run ({names}); pass "
                             f"--overwrite to replace them, or choose another directory")
    return _Output(out, as_dir, fmt, subtype)


def _plan_stream(args) -> _Output:
    flag = "--stream" if args.stream else "--raw"
    if args.output != "-":
        raise UsageError(f"{flag} writes to stdout: give -o - (not -o {args.output})")
    clash = [f for f, on in (("--save-mel", args.save_mel), ("--plot", args.plot)) if on]
    if clash:
        raise UsageError(f"-o - streams audio to stdout; {' and '.join(clash)} need files: use -o DIR/")
    if sys.stdout is None or sys.stdout.isatty():
        raise UsageError("-o -: stdout is a terminal; pipe the audio into a player (| aplay, | ffplay -) or a file")
    return _Output(None, False, "RAW" if args.raw else "WAV", _subtype(args, "WAV"))


def _subtype(args, fmt: str) -> str:
    if fmt == "OGG":
        if args.float or args.subtype:
            raise UsageError(f"-o {args.output}: Ogg Vorbis is lossy and has no sample format; --subtype and "
                             f"--float apply to .wav and .flac")
        return "VORBIS"
    subtype = "FLOAT" if args.float else args.subtype or "PCM_16"
    if fmt == "FLAC" and subtype == "FLOAT":
        raise UsageError(f"-o {args.output}: FLAC stores integer samples (PCM_16 or PCM_24), not FLOAT")
    return subtype


def _earlier_outputs(folder: Path) -> list[Path]:
    """The files a `jtts synthesize -o DIR/` run writes (numbered .wav/.png/.npy and the manifest). Any other
    file in DIR is the user's: never counted, never deleted."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _is_output_name(p.name) and not p.is_dir())


def _is_output_name(name: str) -> bool:
    return name == MANIFEST or _NUMBERED.fullmatch(name) is not None


def _prepare_dir(folder: Path, overwrite: bool) -> None:
    """Once the models have loaded. With --overwrite the manifest goes first (a directory without one never
    claims to be complete), then the earlier run's files; temporaries that killed runs left go in any case."""
    from jtts.files import remove_stale

    if overwrite:
        (folder / MANIFEST).unlink(missing_ok=True)
        for p in _earlier_outputs(folder):
            p.unlink(missing_ok=True)
    remove_stale(folder, lambda name: _is_output_name(name) or name == "jtts-probe")


def _save_audio(path: Path, audio, rate: int, fmt: str, subtype: str) -> None:
    """Encoded in memory first, because soundfile writing to a file swallows the OSError of a full disk."""
    from jtts.files import atomic_write

    from jtts.wavstream import encode

    data = encode(audio, rate, fmt, subtype, path)
    with atomic_write(path) as f:
        f.write(data)


def _save_npy(path: Path, array) -> None:
    import numpy as np

    from jtts.files import atomic_write

    with atomic_write(path) as f:
        np.save(f, array)


# -- reporting --------------------------------------------------------------------------------------------------

@dataclass
class _Row:
    """One sentence as manifest.tsv and the summary report it."""
    file: str
    where: str
    index: int      # 0-based within its utterance
    count: int      # sentences in its utterance
    start: float
    seconds: float
    outcome: object
    text: str


def _rows(name: str, where: str, utt) -> list[_Row]:
    n = len(utt.sentences)
    return [_Row(name, where, j, n, start, seconds, o, t)
            for j, ((start, seconds), o, t) in enumerate(zip(utt.spans, utt.outcomes, utt.sentences))]


def _short(text: str, n: int = 50) -> str:
    return text if len(text) <= n else text[:n - 3] + "..."


def _failure_warning(rows: list[_Row], where: str, max_steps: int) -> str | None:
    """One line per utterance naming its sentences that still fail after repair (the first one's text)."""
    bad = [r for r in rows if not r.outcome.ok]
    if not bad:
        return None
    nums = [str(r.index + 1) for r in bad]
    which = ", ".join(nums[:5]) + (f" and {len(nums) - 5} more" if len(nums) > 5 else "")
    first = bad[0].outcome
    piece = first.failing()[0] if first.failing() else first.pieces[0]
    problems = piece.decoded.health.describe().replace("reached max steps", f"reached --max-decoder-steps {max_steps}")
    s = "s" if len(bad) > 1 else ""
    repaired = f"after {first.tries} decode{'s' if first.tries > 1 else ''}"
    return (f"jtts synthesize: warning: {where}: sentence{s} {which} of {rows[0].count} still fail{'' if s else 's'} "
            f"{repaired}: {problems} in {_short(piece.text)!r}" + (f" (sentence {nums[0]})" if s else "")
            + "; kept as decoded")


def _repair_note(rows: list[_Row]) -> str | None:
    """The summary's list of sentences that needed a retry or a split."""
    fixed = [r for r in rows if r.outcome.status in ("retried", "split")]
    if not fixed:
        return None

    def one(r: _Row) -> str:
        how = f"split in {len(r.outcome.pieces)}" if r.outcome.status == "split" else f"{r.outcome.tries} tries"
        return f"{r.where} sentence {r.index + 1} ({how})"
    listed = "; ".join(one(r) for r in fixed[:8]) + (f"; and {len(fixed) - 8} more" if len(fixed) > 8 else "")
    return f"jtts synthesize: repaired {len(fixed)} sentence(s): {listed}"


def _write_manifest(path: Path, rows: list[_Row]) -> None:
    lines = ["\t".join(MANIFEST_COLUMNS)]
    for r in rows:
        h = r.outcome.health
        lines.append("\t".join(map(str, (
            r.file, r.where, r.index + 1, f"{r.start:.3f}", f"{r.seconds:.3f}", r.outcome.status, r.outcome.tries,
            len(r.outcome.pieces), h.frames, h.stop, f"{h.focus:.3f}", h.backtrack, h.end_gap, h.skip, h.dwell,
            ",".join(h.problems) or "-", " ".join(r.text.split())))))
    from jtts.files import atomic_write

    with atomic_write(path, "w") as f:
        f.write("\n".join(lines) + "\n")


class _Progress:
    """A rich progress bar on a terminal; nothing when quiet or piped."""

    def __init__(self, enabled: bool):
        self.bar = self.task = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("synthesizing"), BarColumn(), MofNCompleteColumn(), TextColumn("sentences"),
                                TimeElapsedColumn(), console=Console(stderr=True), transient=True)

    def __enter__(self):
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            return
        if self.task is None:
            self.task = self.bar.add_task("", total=total)
        self.bar.update(self.task, completed=done)


# -- the command ------------------------------------------------------------------------------------------------

def _synthesize(args) -> int:
    t_start = time.perf_counter()
    items = _read_texts(args)
    prepared = _prepare(items, args.max_chars, cli.text_frontend_of(args.tacotron2))
    t_text = time.perf_counter() - t_start
    out = _plan_output(args, len(prepared))
    for kind in ("tacotron2", "waveglow"):
        if getattr(args, kind):
            cli._check_model_arg(getattr(args, kind), kind)
    for (where, _), p in zip(items, prepared):
        if p.dropped and not args.quiet:
            print(f"jtts synthesize: note: {where}: left out {len(p.dropped)} character(s) that cannot be "
                  f"spoken ({p.dropped[:10]!r})", file=sys.stderr)
    t0 = time.perf_counter()
    taco, wg, denoiser = _load_models(args)
    t_load = time.perf_counter() - t0
    if out.as_dir:
        _prepare_dir(out.path, args.overwrite)
    settings = dict(sigma=args.sigma, denoise=args.denoise, seed=args.seed, max_decoder_steps=args.max_decoder_steps,
                    gate_threshold=args.gate_threshold, attention_window=args.attention_window,
                    batch_size=args.batch_size, pause=args.pause, max_chars=args.max_chars, retry=not args.no_retry,
                    tries=args.tries)
    max_steps = args.max_decoder_steps or taco.config.max_decoder_steps
    timings = {"text": t_text}
    t0 = time.perf_counter()
    with _Progress(not args.quiet and sys.stderr.isatty()) as progress:
        speak = _speak_stream if out.path is None else _speak_files
        rows, audio_s, t_write = speak(args, out, items, prepared, (taco, wg, denoiser), settings, timings, progress,
                                       max_steps)
    compute = time.perf_counter() - t0 - t_write + t_text
    if out.as_dir:
        _write_manifest(out.path / MANIFEST, rows)
    if not args.quiet:
        _summary(rows, audio_s, timings, compute, t_load, t_write, "stdout" if out.path is None else out.path)
    return 0


def _load_models(args):
    from jtts import Denoiser

    taco, wg = cli.load_pair(args)
    return taco, wg, (Denoiser(wg) if args.denoise > 0 else None)


def _speak_files(args, out: _Output, items, prepared, models, settings, timings, progress, max_steps):
    from jtts.pipeline import iter_synthesize

    width = max(4, len(str(len(prepared))))
    rows, audio_s, t_write = [], 0.0, 0.0
    for utt in iter_synthesize(prepared, *models, timings=timings, progress=progress, **settings):
        t1 = time.perf_counter()
        wav = out.path / f"{utt.index + 1:0{width}d}.wav" if out.as_dir else out.path
        rate = args.sample_rate or utt.sample_rate  # the models' unless --sample-rate asks for another
        audio = utt.audio
        if rate != utt.sample_rate:
            import soxr

            audio = soxr.resample(audio, utt.sample_rate, rate)
        _save_audio(wav, audio, rate, out.fmt, out.subtype)
        if args.save_mel:
            _save_npy(wav.with_suffix(".npy"), utt.mel)
        if args.plot:
            from jtts.plot import plot_utterance

            plot_utterance(wav.with_suffix(".png"), utt.mel, utt.alignments, title=utt.text)
        where = items[utt.index][0]
        utt_rows = _rows(wav.name, where, utt)
        warning = _failure_warning(utt_rows, f"{wav.name} ({where})" if out.as_dir else where, max_steps)
        if warning:
            print(warning, file=sys.stderr)
        rows += utt_rows
        audio_s += utt.seconds
        t_write += time.perf_counter() - t1
    return rows, audio_s, t_write


def _speak_stream(args, out: _Output, items, prepared, models, settings, timings, progress, max_steps):
    import numpy as np

    from jtts.frontend import shared_frontend
    from jtts.pipeline import iter_sentences
    from jtts.wavstream import AudioStream

    model_rate = shared_frontend(*models[:2]).sample_rate
    rate = args.sample_rate or model_rate
    stream = AudioStream(sys.stdout.buffer, rate, out.subtype, out.fmt == "RAW", source_rate=model_rate)
    gap = np.zeros(int(round(args.pause * model_rate)), np.float32)
    rows, current, at, t_write = [], [], 0, 0.0
    for spoken in iter_sentences(prepared, *models, timings=timings, progress=progress, **settings):
        t1 = time.perf_counter()
        if at:
            stream.write(gap)
            at += len(gap)
        stream.write(spoken.audio)
        where = items[spoken.utterance][0]
        current.append(_Row("-", where, spoken.index, len(prepared[spoken.utterance].ids), at / model_rate,
                            len(spoken.audio) / model_rate, spoken.outcome, spoken.text))
        at += len(spoken.audio)
        if spoken.last:
            warning = _failure_warning(current, where, max_steps)
            if warning:
                print(warning, file=sys.stderr)
            rows, current = rows + current, []
        t_write += time.perf_counter() - t1
    stream.write(np.zeros(0, np.float32), last=True)
    return rows, at / model_rate, t_write


def _summary(rows: list[_Row], audio_s: float, timings: dict, compute: float, t_load: float, t_write: float,
             dest) -> None:
    """Counts, speed (compute = wall time without loading and writing: Tacotron 2 overlaps WaveGlow, so the
    stage times add up to more), and the sentences repair fixed."""
    statuses = {}
    for r in rows:
        statuses[r.outcome.status] = statuses.get(r.outcome.status, 0) + 1
    health = ", ".join(f"{statuses[k]} {k}" for k in ("ok", "retried", "split", "failed") if k in statuses)
    n_utts = len(dict.fromkeys((r.file, r.where) for r in rows))
    print(f"jtts synthesize: {n_utts} utterance(s), {len(rows)} sentence(s) ({health}), {audio_s:.2f} s of audio "
          f"in {compute:.2f} s: real-time factor {audio_s / max(compute, 1e-9):.2f} (text {timings['text']:.2f} s, "
          f"Tacotron 2 {timings['tacotron2']:.2f} s, WaveGlow {timings['waveglow']:.2f} s, denoiser "
          f"{timings['denoiser']:.2f} s; loading {t_load:.2f} s, writing {t_write:.2f} s) -> {dest}", file=sys.stderr)
    note = _repair_note(rows)
    if note:
        print(note, file=sys.stderr)
