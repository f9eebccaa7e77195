"""The `jtts` command: `jtts convert`, `jtts export`, `jtts info`."""
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
    except (CheckpointError, ModelDirError, FileNotFoundError, PermissionError, IsADirectoryError) as e:
        print(f"jtts {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"jtts {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
