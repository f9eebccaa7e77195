"""The `jtts` command: `jtts synthesize`, `jtts convert`, `jtts export`, `jtts info`, and from `jtts.train`
`jtts preprocess` and `jtts train`.

Exit status: 0 success, 2 usage error (bad option, conflicting inputs), 1 anything else (bad text, missing
or damaged model, download failure, unwritable output). Every error is one line on stderr naming its cause.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

DTYPES = ("float32", "bfloat16", "float16")
SUBTYPES = ("PCM_16", "PCM_24", "FLOAT")


class UsageError(ValueError):
    """Options that contradict each other or the input; exit status 2 like argparse's own errors."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # argparse prints the whole usage block first; one line is easier to read in logs and scripts
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _int_at_least(lo: int):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"{v} is less than {lo}")
        return v
    return parse


def _nonnegative(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"{s} must be a finite number >= 0")
    return v


# -- convert / export / info ---------------------------------------------------------------------------------

def _convert(args) -> int:
    from jtts.convert import convert

    out = convert(args.src, args.output, kind=args.kind, dtype=args.dtype)
    if not args.quiet:
        print(_describe(out))
    return 0


def _export(args) -> int:
    from jtts.convert import export

    out = export(args.model_dir, args.output)
    if not args.quiet:
        print(f"wrote {out}")
    return 0


def _info(args) -> int:
    print(_describe(args.model_dir))
    return 0


def _describe(model_dir) -> str:
    from jtts.checkpoint import read_meta

    meta = read_meta(model_dir)
    src = meta.get("source", {})
    n = src.get("parameters")
    head = f"{model_dir}: {meta['kind']}" + (f", {n:,} parameters" if isinstance(n, int) else "")
    head += f", stored as {src.get('stored_dtype', 'float32')}"
    origin = f"  source: {src.get('file', '?')} ({src.get('layout', '?')}"
    origin += (f", epoch {src['epoch']}" if "epoch" in src else "") + ")"
    lines = [head, origin]
    if src.get("url"):
        lines.append(f"  downloaded from: {src['url']} (sha256 {src.get('sha256')})")
    lines.append("  config: " + json.dumps(meta["config"], sort_keys=True))
    return "\n".join(lines)


# -- synthesize ---------------------------------------------------------------------------------------------

def _read_lines(text: str, origin: str) -> list[tuple[str, str]]:
    """One utterance per non-blank line -> [(where, text)]; only "\\n" ends a line (str.splitlines would
    also split at form feeds and other controls, shifting the line numbers users see in editors)."""
    items = [(f"{origin}, line {i}", ln.rstrip("\r")) for i, ln in enumerate(text.split("\n"), 1)]
    items = [(w, t) for w, t in items if t.strip()]
    if not items:
        raise ValueError(f"{origin}: no text (every line is blank)")
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
            raise ValueError(f"{path}: cannot read ({e.strerror or e})") from None
        try:
            return _read_lines(raw.decode("utf-8-sig"), str(path))
        except UnicodeDecodeError as e:
            line = raw[:e.start].count(b"\n") + 1
            raise ValueError(f"{path}, line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x})") from None
    if args.input is None and sys.stdin is not None and sys.stdin.isatty():
        raise UsageError("no text: give it as arguments, with -i FILE, or on stdin")
    return _read_lines(sys.stdin.read() if sys.stdin is not None else "", "stdin")


def _prepare(items: list[tuple[str, str]], max_chars: int):
    from jtts.sentences import NothingToSpeak, prepare

    out = []
    for where, text in items:
        try:
            out.append(prepare(text, max_chars))
        except NothingToSpeak as e:
            raise ValueError(f"{where}: {e}") from None
    return out


def _plan_output(output: str, n: int) -> tuple[Path, bool]:
    """-> (path, is_directory); creates the directory and proves it writable before any model is loaded."""
    import tempfile

    out = Path(output)
    as_dir = output.endswith(("/", os.sep)) or out.is_dir() or n > 1
    if n > 1 and not out.is_dir() and out.suffix.lower() == ".wav":
        raise UsageError(f"-o {output}: {n} utterances need a directory (-o DIR/); a .wav path holds one")
    target = out if as_dir else out.parent
    try:
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target, prefix=".jtts-probe-"):
            pass
    except OSError as e:
        raise ValueError(f"{output}: cannot write there ({e.strerror or type(e).__name__}: "
                         f"{e.filename or target})") from None
    if not as_dir and out.is_dir():
        raise ValueError(f"{output}: is a directory")
    return out, as_dir


def _check_model_arg(path: str, kind: str) -> None:
    """Cheap checks of --tacotron2/--waveglow before anything is downloaded or computed."""
    from jtts.checkpoint import read_meta

    p = Path(path)
    if not p.exists():
        raise ValueError(f"--{kind} {path}: no such file or directory")
    if p.is_dir():
        read_meta(p, kind)


def _load(path: str, kind: str, dtype):
    """A converted model directory, or an NVIDIA .pt checkpoint converted on the fly into a temp directory."""
    import tempfile

    from jtts import Tacotron2, WaveGlow

    cls = Tacotron2 if kind == "tacotron2" else WaveGlow
    p = Path(path)
    if p.is_dir():
        return cls.from_checkpoint(p, dtype=dtype)
    from jtts.convert import convert

    with tempfile.TemporaryDirectory() as tmp:
        return cls.from_checkpoint(convert(p, Path(tmp) / kind, kind=kind), dtype=dtype)


def _save_npy(path: Path, array) -> None:
    import numpy as np

    from jtts.files import atomic_write

    with atomic_write(path) as f:
        np.save(f, array)


def _cut_warning(utt, where: str, max_steps: int) -> str:
    n, cut = len(utt.sentences), [j + 1 for j in utt.cut]
    which = ", ".join(map(str, cut[:5])) + (f" and {len(cut) - 5} more" if len(cut) > 5 else "")
    first = utt.sentences[utt.cut[0]]
    first = first if len(first) <= 50 else first[:47] + "..."
    return (f"jtts synthesize: warning: {where}: sentence{'s' if len(cut) > 1 else ''} {which} of {n} reached "
            f"--max-decoder-steps {max_steps} and {'were' if len(cut) > 1 else 'was'} cut off ({first!r}); "
            f"raise --max-decoder-steps or split the text")


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


def _synthesize(args) -> int:
    items = _read_texts(args)
    t_start = time.perf_counter()
    prepared = _prepare(items, args.max_chars)
    t_text = time.perf_counter() - t_start
    out, as_dir = _plan_output(args.output, len(prepared))
    for kind in ("tacotron2", "waveglow"):
        if getattr(args, kind):
            _check_model_arg(getattr(args, kind), kind)
    quiet = args.quiet
    for (where, _), p in zip(items, prepared):
        if p.dropped and not quiet:
            print(f"jtts synthesize: note: {where}: left out {len(p.dropped)} character(s) that cannot be "
                  f"spoken ({p.dropped[:10]!r})", file=sys.stderr)

    import jax.numpy as jnp

    from jtts import Denoiser
    from jtts.audio import SAMPLE_RATE, save_wav
    from jtts.pipeline import iter_synthesize

    from jtts.hub import enable_compilation_cache

    enable_compilation_cache()
    t0 = time.perf_counter()
    dtype = jnp.dtype(args.dtype)
    missing = [k for k in ("tacotron2", "waveglow") if not getattr(args, k)]
    hub = None
    if missing:
        from jtts.hub import Hub

        hub = Hub(base_url=args.base_url, offline=args.offline, quiet=quiet)
        hub.ensure_all(missing)
    taco = _load(args.tacotron2, "tacotron2", dtype) if args.tacotron2 else hub.load("tacotron2", dtype)
    wg = _load(args.waveglow, "waveglow", dtype) if args.waveglow else hub.load("waveglow", dtype)
    denoiser = Denoiser(wg) if args.denoise > 0 else None
    t_load = time.perf_counter() - t0

    width = max(4, len(str(len(prepared))))
    rate = args.sample_rate or SAMPLE_RATE
    subtype = "FLOAT" if args.float else args.subtype
    timings = {"text": t_text}
    t_write = 0.0
    rows = []
    with _Progress(not quiet and sys.stderr.isatty()) as progress:
        for utt in iter_synthesize(prepared, taco, wg, denoiser, sigma=args.sigma, denoise=args.denoise,
                                   seed=args.seed, max_decoder_steps=args.max_decoder_steps,
                                   batch_size=args.batch_size, pause=args.pause, max_chars=args.max_chars,
                                   timings=timings, progress=progress):
            t1 = time.perf_counter()
            wav = out / f"{utt.index + 1:0{width}d}.wav" if as_dir else out
            audio = utt.audio
            if rate != SAMPLE_RATE:
                import soxr

                audio = soxr.resample(audio, SAMPLE_RATE, rate)
            save_wav(wav, audio, rate, subtype=subtype)
            if args.save_mel:
                _save_npy(wav.with_suffix(".npy"), utt.mel)
            if args.plot:
                from jtts.plot import plot_utterance

                plot_utterance(wav.with_suffix(".png"), utt.mel, utt.alignments, title=utt.text)
            where = items[utt.index][0]
            if utt.cut:
                print(_cut_warning(utt, f"{wav.name} ({where})" if as_dir else where, args.max_decoder_steps),
                      file=sys.stderr)
            rows.append((wav.name, where, utt.seconds, len(utt.sentences), utt.hit_max_steps, utt.text))
            t_write += time.perf_counter() - t1
    if as_dir:
        _write_manifest(out / "manifest.tsv", rows)
    if not quiet:
        seconds = sum(r[2] for r in rows)
        compute = sum(timings.values())
        print(f"jtts synthesize: {len(rows)} utterance(s), {sum(r[3] for r in rows)} sentence(s), {seconds:.2f} s "
              f"of audio in {compute:.2f} s: real-time factor {seconds / max(compute, 1e-9):.2f} "
              f"(text {timings['text']:.2f} s, Tacotron 2 {timings['tacotron2']:.2f} s, WaveGlow "
              f"{timings['waveglow']:.2f} s, denoiser {timings['denoiser']:.2f} s; loading {t_load:.2f} s, "
              f"writing {t_write:.2f} s) -> {out}", file=sys.stderr)
    return 0


def _write_manifest(path: Path, rows) -> None:
    lines = ["file\tsource\tseconds\tsentences\thit_max_steps\ttext"]
    for name, where, seconds, n, cut, text in rows:
        lines.append(f"{name}\t{where}\t{seconds:.3f}\t{n}\t{str(cut).lower()}\t{' '.join(text.split())}")
    from jtts.files import atomic_write

    with atomic_write(path, "w") as f:
        f.write("\n".join(lines) + "\n")


# -- parser ---------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="jtts", description="Tacotron 2 + WaveGlow text-to-speech in JAX.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synthesize", help="text -> WAV with Tacotron 2 + WaveGlow",
                       description="Speak text with NVIDIA's Tacotron 2 + WaveGlow. Without --tacotron2/--waveglow "
                                   "the NGC models are downloaded once and cached ($JTTS_HOME, else "
                                   "$XDG_CACHE_HOME/jtts or ~/.cache/jtts).")
    s.add_argument("text", nargs="*", help="text to speak, one utterance (or -i FILE, or stdin: one per line)")
    s.add_argument("-i", "--input", help="text file, one utterance per line ('-' for stdin)")
    s.add_argument("-o", "--output", required=True,
                   help="WAV file for one utterance, or a directory (DIR/) for numbered files plus manifest.tsv")
    s.add_argument("--tacotron2", help="converted model directory or NVIDIA .pt checkpoint (default: cached NGC model)")
    s.add_argument("--waveglow", help="converted model directory or NVIDIA .pt checkpoint (default: cached NGC model)")
    s.add_argument("--sigma", type=_nonnegative, default=0.9, help="WaveGlow noise scale (default 0.9, as DLE)")
    s.add_argument("--denoise", type=_nonnegative, default=0.01, help="denoiser strength, 0 skips it (default 0.01)")
    s.add_argument("--dtype", choices=DTYPES, default="float32", help="compute dtype (parameters stay float32)")
    s.add_argument("--seed", type=int, default=0, help="same seed and text, same audio (default 0)")
    s.add_argument("--batch-size", type=_int_at_least(1), default=8, help="sentences per Tacotron 2 batch")
    s.add_argument("--max-decoder-steps", type=_int_at_least(1), default=2000,
                   help="Tacotron 2 frames per sentence at most (default 2000, ~23 s); a sentence that reaches it "
                        "is reported")
    s.add_argument("--max-chars", type=_int_at_least(20), default=200,
                   help="longer sentences are split at commas, then between words (default 200)")
    s.add_argument("--pause", type=_nonnegative, default=0.2, help="silence between sentences, seconds (default 0.2)")
    s.add_argument("--sample-rate", type=_int_at_least(1000), help="resample the output (default: 22050, the model's)")
    s.add_argument("--subtype", choices=SUBTYPES, default="PCM_16", help="WAV sample format (default PCM_16)")
    s.add_argument("--float", action="store_true", help="same as --subtype FLOAT (32-bit float WAV)")
    s.add_argument("--save-mel", action="store_true", help="also write each utterance's mel as .npy (80 x frames)")
    s.add_argument("--plot", action="store_true", help="also write a PNG of each mel and attention alignment")
    s.add_argument("--base-url", help="download mirror for the NGC files (default $JTTS_BASE_URL or NGC)")
    s.add_argument("--offline", action="store_true", help="never download; use the cache or the given paths")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress or summary (warnings still shown)")
    s.set_defaults(func=_synthesize)

    c = sub.add_parser("convert", help="NVIDIA/DLE PyTorch checkpoint (.pt) -> jtts model directory")
    c.add_argument("src", help="training checkpoint, torch-hub checkpoint or bare state_dict")
    c.add_argument("-o", "--output", required=True, help="model directory to write (replaced atomically)")
    c.add_argument("--kind", choices=("tacotron2", "waveglow"), help="refuse a checkpoint of another kind")
    c.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                   help="storage dtype of the weights (loading always gives float32 parameters)")
    c.add_argument("-q", "--quiet", action="store_true")
    c.set_defaults(func=_convert)

    e = sub.add_parser("export", help="jtts model directory -> DLE state_dict .pt (loads with strict=True)")
    e.add_argument("model_dir")
    e.add_argument("-o", "--output", required=True)
    e.add_argument("-q", "--quiet", action="store_true")
    e.set_defaults(func=_export)

    i = sub.add_parser("info", help="print a converted model's kind, size, source and config")
    i.add_argument("model_dir")
    i.set_defaults(func=_info)

    from jtts.train.cli import add_parser as add_train_parser
    from jtts.train.preprocess import add_preprocess_parser

    add_preprocess_parser(sub)
    add_train_parser(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"jtts {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as e:  # CheckpointError, ModelDirError, HubError are ValueErrors
        print(f"jtts {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"jtts {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: still one line, with the traceback on request
        if os.environ.get("JTTS_DEBUG"):
            raise
        print(f"jtts {args.command}: error: internal error: {type(e).__name__}: {_one_line(e)} "
              f"(set JTTS_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 600 else text[:597] + "..."


if __name__ == "__main__":
    sys.exit(main())
