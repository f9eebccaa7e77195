"""`jtts serve`: Tacotron 2 + WaveGlow behind an HTTP API (OpenAI's speech endpoint shape), with a web page,
cross-request batching, streaming and Prometheus metrics. See docs/serving.md.

This module only builds the argument parser: JAX, Starlette and uvicorn are imported when the command runs,
so `jtts --help` stays fast.
"""
from __future__ import annotations

import argparse

DEFAULT_PORT = 8000


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    from jtts.cli import DTYPES, _int_in, _number_in

    s = subparsers.add_parser(
        "serve", help="HTTP speech service: POST /v1/audio/speech, a web page at /, /healthz, /metrics",
        description="Serve Tacotron 2 + WaveGlow over HTTP: OpenAI's POST /v1/audio/speech (wav, pcm, flac; "
                    "stream=true for chunked audio), a web page at /, GET /healthz and GET /metrics. The models "
                    "load once and the common batch shapes compile before the server says it is ready. Without "
                    "--tacotron2/--waveglow the NGC models are downloaded once and cached, as for synthesize.")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; there is no authentication, "
                        "so put a proxy in front before using 0.0.0.0)")
    s.add_argument("--port", type=_int_in(0, 65535), default=DEFAULT_PORT,
                   help=f"TCP port (default {DEFAULT_PORT}; 0 picks a free one, printed in the ready line)")
    s.add_argument("--tacotron2", help="converted model directory or NVIDIA .pt checkpoint (default: cached NGC model)")
    s.add_argument("--waveglow", help="converted model directory or NVIDIA .pt checkpoint (default: cached NGC model)")
    s.add_argument("--dtype", choices=DTYPES, default="float32", help="compute dtype (parameters stay float32)")
    s.add_argument("--max-batch", type=_int_in(1, 256), default=8,
                   help="sentences per Tacotron 2 / WaveGlow batch, shared by concurrent requests (default 8)")
    s.add_argument("--max-wait-ms", type=_number_in(0, 10_000), default=5.0,
                   help="how long a lone sentence waits for batch-mates when the server is idle (default 5 ms)")
    s.add_argument("--max-queue", type=_int_in(1, 100_000), default=128,
                   help="sentences admitted and unfinished at most; past it requests get 503 with Retry-After "
                        "(default 128)")
    s.add_argument("--max-input-chars", type=_int_in(1, 1_000_000), default=4096,
                   help="characters of 'input' per request at most (default 4096, OpenAI's limit)")
    s.add_argument("--max-sentences", type=_int_in(1, 100_000), default=64,
                   help="sentences per request at most, after splitting (default 64; at most --max-queue)")
    s.add_argument("--max-decoder-steps", type=_int_in(1, 100_000),
                   help="Tacotron 2 frames per sentence at most (default: the model's, 2000 = 23 s for NGC's)")
    s.add_argument("--gate-threshold", type=_number_in(0, 1),
                   help="the decoder stops when its stop gate's probability exceeds this (default: the model's, 0.5)")
    s.add_argument("--attention-window", type=_int_in(1, 1000), metavar="K",
                   help="attention looks only from 1 symbol behind to K ahead of its last peak (as jtts synthesize; "
                        "default: off)")
    s.add_argument("--no-retry", action="store_true",
                   help="keep every sentence's first decode; by default one whose alignment fails is decoded again, "
                        "then split in two, as jtts synthesize does (see --tries)")
    s.add_argument("--tries", type=_int_in(1, 20), default=3,
                   help="decodes of a failing sentence (and of each half of a split one) before splitting it "
                        "(default 3)")
    s.add_argument("--max-chars", type=_int_in(20, 10_000), default=200,
                   help="longer sentences are split at commas, then between words (default 200)")
    s.add_argument("--pause", type=_number_in(0, 60), default=0.2,
                   help="seconds of silence between sentences (default 0.2)")
    s.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browser pages from ORIGIN (e.g. https://app.example.com) to call the API; repeatable")
    s.add_argument("--warmup", choices=("none", "typical", "all"), default="typical",
                   help="what to compile before saying 'ready', for each batch size: a typical sentence (default), "
                        "all sentence lengths up to --max-chars (slow the first time; the XLA cache keeps them "
                        "for later starts), or nothing (the first requests compile instead)")
    s.add_argument("--base-url", help="download mirror for the NGC files (default $JTTS_BASE_URL or NGC)")
    s.add_argument("--offline", action="store_true", help="never download; use the cache or the given paths")
    s.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"), default="info",
                   help="uvicorn's log level (info logs every request)")
    s.add_argument("-q", "--quiet", action="store_true", help="no startup messages (errors still shown)")
    s.set_defaults(func=_serve)
    return s


def _serve(args) -> int:
    from jtts.serve.server import run

    return run(args)
