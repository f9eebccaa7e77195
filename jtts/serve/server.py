"""Running `jtts serve`: check the options and the address, load the models once, warm up, then serve with
uvicorn until Ctrl-C (which finishes the requests in flight first). `Background` runs the same app on a
thread, for tests and benchmarks."""
from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

from jtts.errors import JttsError, UsageError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def run(args) -> int:
    import uvicorn

    if args.max_sentences > args.max_queue:
        raise UsageError(f"--max-sentences {args.max_sentences} is more than --max-queue {args.max_queue}: such a "
                         f"request could never be admitted")
    sock = bind(args.host, args.port)  # before the models load: a busy port fails at once
    try:
        app, info = build(args)
        host, port = sock.getsockname()[:2]
        url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
        config = uvicorn.Config(app, log_level=args.log_level, lifespan="on", timeout_graceful_shutdown=30,
                                access_log=args.log_level in ("info", "debug"))
        server = _Server(config, lambda: None if args.quiet else _say(
            f"ready on {url} ({info['dtype']}, batches of up to {args.max_batch} sentences, warm-up "
            f"{info['warmup_s']:.1f} s); Ctrl-C stops"))
        if args.host not in LOCAL_HOSTS:
            _say(f"warning: listening on {args.host}: anyone who can reach it may use it (there is no "
                 f"authentication); put a proxy with access control in front")
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0


def bind(host: str, port: int) -> socket.socket:
    """A bound (not yet listening) TCP socket: connections are refused until the server is ready."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, IndexError) as e:
        raise JttsError(f"--host {host}: cannot be used ({e})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise JttsError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port") from None
    sock.set_inheritable(True)
    return sock


def build(args):
    """-> (app, info): models loaded, engine built and warmed up."""
    from jtts.pipeline import Settings
    from jtts.serve.app import create_app
    from jtts.serve.engine import Engine, batch_sizes
    from jtts.serve.request import Limits

    taco, vocoder, denoiser, info = load_models(args)
    decoding = Settings(max_decoder_steps=args.max_decoder_steps, gate_threshold=args.gate_threshold,
                        attention_window=args.attention_window, retry=not args.no_retry, tries=args.tries,
                        pause=args.pause, max_chars=args.max_chars)
    engine = Engine(taco, vocoder, denoiser, max_batch=args.max_batch, max_wait=args.max_wait_ms / 1000,
                    max_pending=args.max_queue, decoding=decoding)
    info["warmup_s"] = 0.0
    lengths = warmup_lengths(args.warmup, args.max_chars)
    if lengths is not None:
        if not args.quiet:
            sizes = ", ".join(map(str, batch_sizes(args.max_batch)))
            what = f"{', '.join(map(str, lengths))} symbols" if lengths else "a typical length"
            _say(f"warming up: compiling batches of {sizes} sentences of {what}")
        info["warmup_s"] = round(engine.warm_up(lengths or None), 2)
    limits = Limits(max_input_chars=args.max_input_chars, max_sentences=args.max_sentences, max_chars=args.max_chars)
    app = create_app(engine, limits=limits, info=info, cors_origins=tuple(args.cors_origin))
    return app, info


def load_models(args):
    """-> (Tacotron 2, folded WaveGlow, denoiser, info), as `jtts synthesize` loads them (cache, hub, .pt)."""
    from jtts.cli import _check_model_arg, load_pair

    for kind in ("tacotron2", "waveglow"):
        if getattr(args, kind):
            _check_model_arg(getattr(args, kind), kind)
    from jtts import Denoiser

    t0 = time.perf_counter()
    taco, vocoder = load_pair(args)
    info = {"dtype": args.dtype, "load_s": round(time.perf_counter() - t0, 2),
            "tacotron2": str(Path(args.tacotron2)) if args.tacotron2 else "NGC (cached)",
            "waveglow": str(Path(args.waveglow)) if args.waveglow else "NGC (cached)"}
    return taco, vocoder, Denoiser(vocoder), info


def warmup_lengths(level: str, max_chars: int) -> tuple[int, ...] | None:
    """Sentence lengths (in symbols) to compile before 'ready': None for none, () for one typical sentence,
    or one per Tacotron 2 token bucket up to --max-chars ('all')."""
    if level == "none":
        return None
    if level == "typical":
        return ()
    from jtts.tacotron2 import bucket

    # a sentence of max_chars characters has about as many symbols (+1 for the end mark)
    return tuple(sorted({bucket(n) for n in range(1, max_chars + 2)}))


def _say(message: str) -> None:
    print(f"jtts serve: {message}", file=sys.stderr, flush=True)


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, saying "ready" once it listens."""

        def __init__(self, config, on_ready):
            super().__init__(config)
            self._on_ready = on_ready

        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if self.started:
                self._on_ready()

    return Server


def _Server(config, on_ready):
    return _server_class()(config, on_ready)


class Background:
    """The app served by uvicorn on a thread at 127.0.0.1 (a free port): `with Background(app) as url: ...`."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.sock = bind(host, port)
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        ready = threading.Event()
        self.server = _Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5),
                              ready.set)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        if not ready.wait(60):
            raise RuntimeError("the server did not start within 60 s")

    def __enter__(self) -> str:
        return self.url

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()
