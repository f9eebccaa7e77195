"""The `jtts` command: `jtts synthesize`, `jtts convert`, `jtts export`, `jtts info`, and from `jtts.train`
`jtts preprocess` and `jtts train`.

Exit status: 0 success, 2 usage error (bad option, conflicting inputs, no text), 1 bad data, missing or
damaged model, download failure, unwritable output; 3 training stopped by a non-finite loss; 130 interrupted.
Every such error (a `jtts.errors.JttsError`, or an OSError) is one line on stderr naming its cause; any other
exception is a bug in jtts and prints its traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from jtts.errors import JttsError, UsageError, one_line
from jtts.models import KINDS

DTYPES = ("float32", "bfloat16", "float16")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # argparse prints the whole usage block first; one line is easier to read in logs and scripts
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _int_in(lo: int, hi: int):
    """argparse type: an integer from lo to hi, the range named in the error."""
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            v = None
        if v is None or not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{s!r} is not an integer from {lo:,} to {hi:,}")
        return v
    return parse


def _number_in(lo: float, hi: float):
    """argparse type: a finite number from lo to hi, the range named in the error."""
    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            v = None
        if v is None or not lo <= v <= hi:  # NaN fails both comparisons
            raise argparse.ArgumentTypeError(f"{s!r} is not a number from {lo:g} to {hi:g}")
        return v
    return parse


# -- convert / export / info ---------------------------------------------------------------------------------

def _convert(args) -> int:
    _check_model_output(Path(args.output), args.overwrite)
    from jtts.convert import convert

    out = convert(args.src, args.output, kind=args.kind, dtype=args.dtype)
    if not args.quiet:
        print(_describe(out))
    return 0


def _check_model_output(out: Path, overwrite: bool) -> None:
    """Before the checkpoint is read: an existing path is replaced only with --overwrite and only if it is a
    model directory (--overwrite must never delete a folder of other files), and the parent is writable."""
    from jtts.checkpoint import MODEL_FILE

    if os.path.lexists(out):
        if not overwrite:
            raise UsageError(f"-o {out}: already exists; pass --overwrite to replace it")
        if out.is_symlink() or not out.is_dir():
            raise UsageError(f"-o {out}: is not a directory; --overwrite replaces only a jtts model directory")
        if not (out / MODEL_FILE).is_file() and any(out.iterdir()):
            raise UsageError(f"-o {out}: holds files but no {MODEL_FILE}; --overwrite replaces only a jtts model "
                             f"directory")
    _probe(out.parent, out)


def _probe(folder: Path, output) -> None:
    """Create `folder` and prove it writable, before any model or data is loaded."""
    from jtts.files import probe_writable

    try:
        probe_writable(folder)
    except OSError as e:
        raise JttsError(f"{output}: cannot write there ({e.strerror or type(e).__name__}: "
                        f"{e.filename or folder})") from None


def _export(args) -> int:
    from jtts.checkpoint import read_meta
    from jtts.convert import export

    read_meta(args.model_dir)
    _probe(Path(args.output).absolute().parent, args.output)
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
    src = meta.get("source") or {}
    n = src.get("parameters")
    head = f"{model_dir}: {meta['kind']}" + (f", {n:,} parameters" if isinstance(n, int) else "")
    head += f", stored as {src.get('stored_dtype', 'float32')}"
    lines = [head, _origin(Path(model_dir), src)]
    if src.get("url"):
        lines.append(f"  downloaded from: {src['url']} (sha256 {src.get('sha256')})")
    lines.append("  config: " + json.dumps(meta["config"], sort_keys=True))
    return "\n".join(lines)


def _origin(model_dir: Path, src: dict) -> str:
    """Where the weights came from: the converted file, or the training run; only what model.json records."""
    if src.get("trained_by"):
        facts = [f"step {src['step']:,}" if isinstance(src.get("step"), int) else None,
                 f"data {src['data']}" if src.get("data") else None,
                 f"batch size {src['batch_size']}" if src.get("batch_size") else None,
                 f"{src['dtype']} compute" if src.get("dtype") else None,
                 f"initialised from {src['init_from']}" if src.get("init_from") else None]
        run = src.get("run") or model_dir.absolute().parent
        if src.get("run") or (Path(run) / "train_log.jsonl").is_file():
            facts.append(f"run directory {run}")
        return f"  trained by {src['trained_by']}: " + ", ".join(f for f in facts if f)
    if src.get("file"):
        details = [src["layout"]] if src.get("layout") else []
        details += [f"epoch {src['epoch']}"] if "epoch" in src else []
        return f"  source: {src['file']}" + (f" ({', '.join(details)})" if details else "")
    return "  source: not recorded in model.json"


# -- models (jtts synthesize, jtts serve) -------------------------------------------------------------------------

def _check_model_arg(path: str, kind: str) -> None:
    """Cheap checks of --tacotron2/--waveglow before anything is downloaded or computed."""
    from jtts.checkpoint import read_meta

    p = Path(path)
    if not p.exists():
        raise JttsError(f"--{kind} {path}: no such file or directory")
    if p.is_dir():
        read_meta(p, kind)


def text_frontend_of(path: str | None):
    """The text front end of the Tacotron 2 model directory `path` (its model.json's config, as `models.load` reads
    it; no weights loaded), so that text is prepared for the model before it loads; DLE's for anything else
    (NVIDIA's checkpoints and the NGC models; a bad path or model.json is reported when the model is checked and
    loaded)."""
    from jtts import models
    from jtts.checkpoint import read_meta
    from jtts.text import DLE_TEXT

    if not path or not Path(path).is_dir():
        return DLE_TEXT
    try:
        return models.get("tacotron2").make_config(read_meta(path, "tacotron2")["config"]).text_frontend
    except (JttsError, TypeError, ValueError):
        return DLE_TEXT


def _load(path: str, kind: str, dtype):
    """What synthesises (`models.load(..., inference=True)`) from a converted model directory, or from an NVIDIA
    .pt checkpoint converted on the fly into a temp directory."""
    import tempfile

    from jtts import models

    p = Path(path)
    if p.is_dir():
        return models.load(p, kind=kind, dtype=dtype, inference=True)
    from jtts.convert import convert

    with tempfile.TemporaryDirectory() as tmp:
        return models.load(convert(p, Path(tmp) / kind, kind=kind), kind=kind, dtype=dtype, inference=True)


def load_pair(args):
    """-> (Tacotron 2, folded WaveGlowInference) for `jtts synthesize` and `jtts serve`: --tacotron2/--waveglow
    (model directory or .pt) or, for the ones not given, the cached NGC models (downloaded unless --offline)."""
    import warnings

    import jax.numpy as jnp

    from jtts.hub import enable_compilation_cache

    enable_compilation_cache()
    # the XLA cache only saves time: one it cannot write (a full disk) or read is not the user's error
    warnings.filterwarnings("ignore", message="Error (writing|reading) persistent compilation cache")
    dtype = jnp.dtype(args.dtype)
    missing = [k for k in ("tacotron2", "waveglow") if not getattr(args, k)]
    hub = None
    if missing:
        from jtts.hub import Hub

        hub = Hub(base_url=args.base_url, offline=args.offline, quiet=args.quiet)
        hub.ensure_all(missing)
    taco = _load(args.tacotron2, "tacotron2", dtype) if args.tacotron2 else hub.load("tacotron2", dtype)
    # folded straight from the files (never the trainable module): once, for the denoiser and the pipeline
    wg = _load(args.waveglow, "waveglow", dtype) if args.waveglow else hub.load("waveglow", dtype, inference=True)
    return taco, wg


# -- parser ---------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="jtts", description="Tacotron 2 + WaveGlow text-to-speech in JAX.")
    sub = p.add_subparsers(dest="command", required=True)

    from jtts import speak

    speak.add_parser(sub)

    c = sub.add_parser("convert", help="NVIDIA/DLE PyTorch checkpoint (.pt) -> jtts model directory")
    c.add_argument("src", help="training checkpoint, torch-hub checkpoint or bare state_dict")
    c.add_argument("-o", "--output", required=True, help="model directory to write (must not exist)")
    c.add_argument("--overwrite", action="store_true",
                   help="replace an existing model directory (atomically: a failed or killed run keeps the old one)")
    c.add_argument("--kind", choices=KINDS, help="refuse a checkpoint of another kind")
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

    from jtts.corpus import add_corpus_parser
    from jtts.train.cli import add_parser as add_train_parser, add_preprocess_parser

    add_corpus_parser(sub)
    add_preprocess_parser(sub)
    add_train_parser(sub)
    from jtts.serve import add_serve_parser

    add_serve_parser(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except JttsError as e:
        print(f"jtts {args.command}: error: {one_line(e)}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # disk full, permissions, a vanished file: the environment, not a bug
        print(f"jtts {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"jtts {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
