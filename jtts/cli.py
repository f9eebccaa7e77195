"""The `jtts` command: `jtts synthesize`, `jtts convert`, `jtts export`, `jtts info`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _convert(args) -> int:
    from jtts.convert import convert

    out = convert(args.src, args.output, kind=args.kind)
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


DTYPES = ("float32", "bfloat16", "float16")


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


def _read_texts(args) -> list[str]:
    if args.input:
        try:
            lines = Path(args.input).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{args.input}: cannot read ({e.__class__.__name__}: {e})") from None
        texts = [ln.strip() for ln in lines if ln.strip()]
    elif args.text:
        texts = [" ".join(args.text).strip()]
    else:
        texts = [ln.strip() for ln in sys.stdin.read().splitlines() if ln.strip()]
    if not texts or not any(texts):
        raise ValueError("no text given (pass it as arguments, with -i FILE, or on stdin)")
    return texts


def _synthesize(args) -> int:
    import os
    import time

    import jax.numpy as jnp

    from jtts.audio import save_wav

    texts = _read_texts(args)
    out = Path(args.output)
    many = len(texts) > 1
    if many:
        out.mkdir(parents=True, exist_ok=True)
    target_dir = out if many else out.parent
    if not target_dir.is_dir() or not os.access(target_dir, os.W_OK):
        raise ValueError(f"{out}: cannot write there (directory missing or not writable)")
    from jtts import Denoiser
    from jtts.pipeline import synthesize

    t0 = time.perf_counter()
    dtype = jnp.dtype(args.dtype)
    taco = _load(args.tacotron2, "tacotron2", dtype)
    wg = _load(args.waveglow, "waveglow", dtype)
    denoiser = Denoiser(wg) if args.denoise > 0 else None
    t1 = time.perf_counter()
    utts = synthesize(texts, taco, wg, denoiser, sigma=args.sigma, denoise=args.denoise, seed=args.seed,
                      max_decoder_steps=args.max_decoder_steps, batch_size=args.batch_size)
    t2 = time.perf_counter()
    for i, u in enumerate(utts):
        path = out / f"{i + 1:04d}.wav" if many else out
        save_wav(path, u.audio)
        if u.hit_max_steps:
            print(f"jtts synthesize: warning: utterance {i + 1} reached --max-decoder-steps "
                  f"{args.max_decoder_steps} and was cut: {u.text[:60]!r}", file=sys.stderr)
    if not args.quiet:
        seconds = sum(len(u.audio) for u in utts) / 22050
        print(f"{len(utts)} utterance(s), {seconds:.2f} s of audio in {t2 - t1:.2f} s "
              f"(real-time factor {seconds / max(t2 - t1, 1e-9):.2f}; model loading {t1 - t0:.2f} s) -> {out}")
    return 0


def _describe(model_dir) -> str:
    from jtts.checkpoint import read_meta

    meta = read_meta(model_dir)
    src = meta.get("source", {})
    lines = [f"{model_dir}: {meta['kind']}, {src.get('parameters', '?'):,} parameters"
             if isinstance(src.get("parameters"), int) else f"{model_dir}: {meta['kind']}",
             f"  source: {src.get('file', '?')} ({src.get('layout', '?')}"
             + (f", epoch {src['epoch']}" if "epoch" in src else "") + ")",
             "  config: " + json.dumps(meta["config"], sort_keys=True)]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jtts", description="Tacotron 2 + WaveGlow text-to-speech in JAX.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synthesize", help="text -> WAV with Tacotron 2 + WaveGlow")
    s.add_argument("text", nargs="*", help="text to speak (or -i FILE, or stdin)")
    s.add_argument("-i", "--input", help="text file, one utterance per line")
    s.add_argument("-o", "--output", required=True, help="WAV file (one utterance) or directory (several)")
    s.add_argument("--tacotron2", required=True, help="converted model directory or NVIDIA .pt checkpoint")
    s.add_argument("--waveglow", required=True, help="converted model directory or NVIDIA .pt checkpoint")
    s.add_argument("--sigma", type=float, default=0.9, help="WaveGlow noise scale (DLE's default 0.9)")
    s.add_argument("--denoise", type=float, default=0.01, help="denoiser strength, 0 to skip (DLE: 0.01)")
    s.add_argument("--dtype", choices=DTYPES, default="float32", help="compute dtype (parameters stay float32)")
    s.add_argument("--seed", type=int, default=0, help="same seed, same audio")
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--max-decoder-steps", type=int, default=2000)
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=_synthesize)

    c = sub.add_parser("convert", help="NVIDIA/DLE PyTorch checkpoint (.pt) -> jtts model directory")
    c.add_argument("src", help="training checkpoint, torch-hub checkpoint or bare state_dict")
    c.add_argument("-o", "--output", required=True, help="model directory to write (replaced atomically)")
    c.add_argument("--kind", choices=("tacotron2", "waveglow"), help="refuse a checkpoint of another kind")
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
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from jtts.checkpoint import ModelDirError
    from jtts.convert import CheckpointError

    try:
        return args.func(args)
    except (CheckpointError, ModelDirError, ValueError, OSError) as e:
        print(f"jtts {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"jtts {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
