"""The ASGI app of `jtts serve` (Starlette): the speech API, the web page, health and metrics.

    POST /v1/audio/speech   OpenAI's speech request (+ sigma, denoise, seed, stream) -> wav / pcm / flac audio
    POST /v1/jtts/speech    the same request -> JSON: the WAV (base64) and the mel + alignment picture (the page)
    GET  /                  the web page: text box, options, play button, audio, mel + alignment picture
    GET  /v1/models         the model and the names it answers to
    GET  /healthz           200 {"status": "ok", ...} while the engine runs, else 503
    GET  /metrics           Prometheus text format (see jtts.serve.metrics)

Every error is JSON in OpenAI's shape with a 4xx status naming the problem; a full queue is 503 with
Retry-After; 500 only for a bug or a broken model. A client that goes away before its answer is complete
cancels the sentences not yet computed.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
import uuid
from importlib import resources

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from jtts.serve import formats
from jtts.serve.engine import Closed, Engine, Options, Overloaded
from jtts.serve.metrics import CONTENT_TYPE_LATEST, Metrics
from jtts.serve.request import MODEL, MODEL_ALIASES, VOICE, ApiError, Limits, parse_speech, prepare_text

log = logging.getLogger("jtts.serve")
PICTURE_WIDTH, ALIGNMENT_HEIGHT = 1000, 160


def create_app(engine: Engine, *, limits: Limits = Limits(), metrics: Metrics | None = None,
               info: dict | None = None, cors_origins: tuple[str, ...] = ()) -> Starlette:
    """The app around a loaded (and warmed-up) engine; the app's lifespan starts and stops the engine's worker."""
    if limits.max_sentences > engine.max_pending:
        raise ValueError(f"max_sentences {limits.max_sentences} exceeds the engine's max_pending {engine.max_pending}")
    api = _Api(engine, limits, engine.decoding.pause, metrics or Metrics(engine), dict(info or {}))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        api.started = time.monotonic()
        yield
        await asyncio.to_thread(engine.close)

    routes = [Route("/", api.page, methods=["GET"]),
              Route("/v1/audio/speech", api.speech, methods=["POST"]),
              Route("/v1/jtts/speech", api.inspect, methods=["POST"]),
              Route("/v1/models", api.models, methods=["GET"]),
              Route("/healthz", api.healthz, methods=["GET"]),
              Route("/metrics", api.metrics_text, methods=["GET"])]
    middleware = []
    if cors_origins:
        from starlette.middleware import Middleware
        from starlette.middleware.cors import CORSMiddleware

        middleware.append(Middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                                     allow_headers=["*"], expose_headers=["*"]))
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error})
    app.state.api = api
    return app


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """404 / 405 and Starlette's other refusals, as JSON like every other error."""
    what = {404: f"no such endpoint: {request.url.path}", 405: f"{request.method} is not allowed on "
            f"{request.url.path}"}.get(exc.status_code, str(exc.detail))
    err = ApiError(exc.status_code, what, code={404: "not_found", 405: "method_not_allowed"}.get(exc.status_code,
                                                                                              "http_error"))
    return JSONResponse(err.body(), status_code=exc.status_code, headers=dict(exc.headers or {}))


class _Api:
    def __init__(self, engine: Engine, limits: Limits, pause: float, metrics: Metrics, info: dict):
        self.engine, self.limits, self.pause, self.metrics, self.info = engine, limits, pause, metrics, info
        self.started = time.monotonic()
        self.rate = engine.sample_rate

    # -- plain endpoints -----------------------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        html = resources.files("jtts.serve").joinpath("static/index.html").read_text("utf-8")
        return HTMLResponse(html, headers={"Cache-Control": "no-cache"})

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": name, "object": "model", "owned_by": "jtts"}
                                                        for name in (MODEL, *MODEL_ALIASES)]})

    async def healthz(self, request: Request) -> Response:
        alive = self.engine.alive
        body = {"status": "ok" if alive else "unavailable", "model": MODEL, "voice": VOICE,
                "sample_rate": self.rate, "queue": self.engine.queue_length(), "pending": self.engine.pending(),
                "max_pending": self.engine.max_pending, "max_batch": self.engine.max_batch,
                "uptime_s": round(time.monotonic() - self.started, 1), **self.info}
        return JSONResponse(body, status_code=200 if alive else 503)

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    # -- speech ----------------------------------------------------------------------------------------------------

    async def speech(self, request: Request) -> Response:
        return await self._answer(request, "speech", self._speech)

    async def inspect(self, request: Request) -> Response:
        return await self._answer(request, "inspect", self._inspect)

    async def _answer(self, request: Request, endpoint: str, handler) -> Response:
        """Common frame: JSON errors, metrics, and no 500 for anything a client can send."""
        t0 = time.monotonic()
        self.metrics.active.inc()
        streaming = False
        try:
            response = await handler(request, t0)
            streaming = isinstance(response, StreamingResponse)
            if not streaming:
                self.metrics.answered(endpoint, response.status_code, time.monotonic() - t0)
            return response
        except (ApiError, Closed) as e:
            if isinstance(e, Closed):  # the server began shutting down while the request waited
                e = ApiError(503, str(e), code="shutting_down", headers={"Retry-After": "5"})
            self.metrics.answered(endpoint, e.status, time.monotonic() - t0, e.code)
            return JSONResponse(e.body(), status_code=e.status, headers=e.headers)
        except Exception as e:  # a bug or a broken model: say so, keep serving
            log.exception("%s failed", request.url.path)
            err = ApiError(500, f"internal error: {type(e).__name__}: {e}"[:300], code="internal_error")
            self.metrics.answered(endpoint, 500, time.monotonic() - t0, err.code)
            return JSONResponse(err.body(), status_code=500)
        finally:
            if not streaming:
                self.metrics.active.dec()

    async def _submit(self, request: Request):
        body = await _read_body(request, self.limits.max_body)
        req = parse_speech(body, self.limits)
        prepared = await asyncio.to_thread(prepare_text, req.input, self.limits,  # number words take a while
                                           self.engine.text_frontend)
        try:
            ticket = self.engine.submit(prepared, Options(sigma=req.sigma, denoise=req.denoise, seed=req.seed),
                                        stream=req.stream)
        except Overloaded as e:
            raise ApiError(503, str(e), code="overloaded", headers={"Retry-After": str(e.retry_after)}) from None
        except Closed as e:
            raise ApiError(503, str(e), code="shutting_down", headers={"Retry-After": "5"}) from None
        headers = {"X-Request-Id": uuid.uuid4().hex[:16], "X-Model": MODEL, "X-Voice": VOICE,
                   "X-Sample-Rate": str(self.rate), "X-Channels": "1", "X-Sample-Format": "s16le",
                   "X-Seed": str(req.seed), "X-Sentences": str(ticket.count)}
        return req, ticket, headers

    async def _speech(self, request: Request, t0: float) -> Response:
        req, ticket, headers = await self._submit(request)
        if req.stream:
            first = await _unless_gone(request, ticket, ticket.sentence(0))
            if first is None:
                return Response(status_code=499)
            _check_finite(first.audio)
            return StreamingResponse(self._stream(ticket, first, req.response_format, t0), headers=headers,
                                     media_type=formats.FORMATS[req.response_format])
        sentences = await _unless_gone(request, ticket, ticket.all())
        if sentences is None:
            return Response(status_code=499)
        audio = formats.join([s.audio for s in sentences], self.pause, self.rate)
        _check_finite(audio)
        data = await asyncio.to_thread(formats.encode, audio, req.response_format, self.rate)
        self._sent(audio, t0)
        headers["X-Audio-Seconds"] = f"{len(audio) / self.rate:.3f}"
        for name, which in (("X-Cut-Sentences", [s.cut for s in sentences]),
                            ("X-Failed-Sentences", [s.status == "failed" for s in sentences]),
                            ("X-Repaired-Sentences", [s.status in ("retried", "split") for s in sentences])):
            if any(which):
                headers[name] = ",".join(str(j + 1) for j, w in enumerate(which) if w)
        return Response(data, headers=headers, media_type=formats.FORMATS[req.response_format])

    async def _stream(self, ticket, first, fmt: str, t0: float):
        """WAV header (unknown length) or nothing, then each sentence's samples as soon as it is done, in order."""
        gap = formats.pcm16(formats.silence(self.pause, self.rate))
        complete, status, samples = False, 200, 0
        try:
            head = formats.stream_header(self.rate) if fmt == "wav" else b""
            yield head + formats.pcm16(first.audio)
            self._sent(first.audio, t0)
            samples += len(first.audio)
            for j in range(1, ticket.count):
                s = await ticket.sentence(j)
                _check_finite(s.audio)
                yield gap + formats.pcm16(s.audio)
                self.metrics.audio_seconds.inc((len(gap) // 2 + len(s.audio)) / self.rate)
                samples += len(gap) // 2 + len(s.audio)
            complete = True
        except BaseException:
            status = 499  # the client left (or the engine failed mid-stream): the answer stays incomplete
            raise
        finally:
            if not complete:
                ticket.cancel()
            self.metrics.answered("speech", status, time.monotonic() - t0, None if complete else "incomplete_stream")
            self.metrics.active.dec()

    def _sent(self, audio: np.ndarray, t0: float) -> None:
        self.metrics.first_audio.observe(time.monotonic() - t0)
        self.metrics.audio_seconds.inc(len(audio) / self.rate)

    async def _inspect(self, request: Request, t0: float) -> Response:
        req, ticket, headers = await self._submit(request)
        sentences = await _unless_gone(request, ticket, ticket.all())
        if sentences is None:
            return Response(status_code=499)
        audio = formats.join([s.audio for s in sentences], self.pause, self.rate)
        _check_finite(audio)
        body = await asyncio.to_thread(_inspection, audio, sentences, ticket.prepared.sentences, self.rate)
        self._sent(audio, t0)
        body.update(seed=req.seed, sigma=req.sigma, denoise=req.denoise, seconds_taken=round(time.monotonic() - t0, 3))
        return JSONResponse(body, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, or 413 if it is over `limit` bytes. A body up to 16x the limit is read to its end first (a
    client still sending when the answer comes may otherwise see a reset connection instead of the answer)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > 16 * limit:
            break
    if size > limit:
        raise ApiError(413, f"the body is over the limit of {limit:,} bytes", code="body_too_large")
    return b"".join(chunks)


async def _unless_gone(request: Request, ticket, work):
    """Await `work` (a ticket's result) unless the client disconnects first: then cancel the ticket -> None."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # the server is stopping this request
        task.cancel()
        ticket.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    ticket.cancel()
    return None


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _check_finite(audio: np.ndarray) -> None:
    if not np.isfinite(audio).all():
        raise ApiError(500, "the models produced NaN or infinite samples", code="non_finite_audio")


# -- the page's picture -----------------------------------------------------------------------------------------

def _inspection(audio: np.ndarray, sentences, texts: list[str], rate: int) -> dict:
    """The page's answer: the WAV and an 8-bit picture of the mel and of the alignments (one block per sentence
    on the diagonal), pooled to at most PICTURE_WIDTH columns so that long texts stay small."""
    mel = np.concatenate([s.mel for s in sentences], axis=1)
    width = min(mel.shape[1], PICTURE_WIDTH)
    cols = (np.arange(mel.shape[1]) * width) // mel.shape[1]
    counts = np.bincount(cols, minlength=width)
    pooled = np.stack([np.bincount(cols, weights=row, minlength=width) for row in mel]) / counts
    symbols = sum(s.alignment.shape[1] for s in sentences)
    height = max(1, min(symbols, ALIGNMENT_HEIGHT))
    grid = np.zeros((height, width), np.float32)
    r = c = 0
    for s in sentences:
        frames, syms = s.alignment.shape
        xs = cols[r:r + frames]
        ys = ((np.arange(c, c + syms) * height) // max(symbols, 1))
        np.maximum.at(grid, (ys[None, :], xs[:, None]), s.alignment)
        r, c = r + frames, c + syms
    return {"audio": base64.b64encode(formats.encode(audio, "wav", rate)).decode("ascii"), "format": "wav",
            "sample_rate": rate, "seconds": round(len(audio) / rate, 4), "sentences": texts,
            "cut": [j + 1 for j, s in enumerate(sentences) if s.cut], "status": [s.status for s in sentences],
            "frames": int(mel.shape[1]),
            "mel": _image(pooled, float(mel.min()), float(mel.max())), "alignment": _image(grid, 0.0, 1.0)}


def _image(values: np.ndarray, lo: float, hi: float) -> dict:
    scaled = np.clip((values - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    data = np.rint(scaled * 255).astype(np.uint8)
    return {"width": int(values.shape[1]), "height": int(values.shape[0]), "min": lo, "max": hi,
            "data": base64.b64encode(data.tobytes()).decode("ascii")}
