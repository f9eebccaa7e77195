"""The batcher behind `jtts serve`: sentences of concurrent requests share Tacotron 2 and WaveGlow batches.

One worker thread owns the models. A request (a `Ticket`) puts its sentences on one FIFO queue; the worker takes
up to `max_batch` of the oldest, waiting at most `max_wait` seconds after the oldest one arrived for others to
join, decodes them in one Tacotron 2 batch, vocodes them in one WaveGlow call per power-of-two group, denoises
each, and hands every sentence back to its ticket on the event loop.

A request's audio does not depend on its batch-mates and is what `jtts synthesize` makes of its text: sentence
j of a request with seed s has the key `jtts synthesize` gives sentence j of its one utterance
(`jtts.pipeline.sentence_key(key(s), 0, j)`), is decoded, judged and repaired the same way (`jtts.repair`:
retries and splits derive their keys from it), and every row is computed as if alone (Tacotron 2's per-row
decoding, WaveGlow's per-row masking). Tacotron 2 batches are padded to a power of two (at most `max_batch`)
with copies of their first row, which stop when it stops, so only a few batch shapes ever compile.

Bounded: at most `max_pending` sentences admitted and unfinished; a request that would go over is refused
(`Overloaded`, HTTP 503 with Retry-After) instead of queueing without bound. A streaming ticket releases its
first sentence alone and the rest once it is done, so the first audio goes out before the rest is decoded.
A cancelled ticket's queued sentences leave the queue at once; those already in a batch finish unused.
"""
from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np

from jtts.frontend import shared_frontend
from jtts.sentences import Prepared

if TYPE_CHECKING:
    from jtts.pipeline import Settings

WARMUP_TEXT = "Speech synthesis turns the written word into sound that anyone can listen to."


@dataclass(frozen=True)
class Options:
    sigma: float = 0.9
    denoise: float = 0.01
    seed: int = 0


@dataclass
class Sentence:
    """One finished sentence: float32 audio at 22050 Hz, its mel (80, frames), alignment (frames, symbols), and
    what repair made of it (`jtts.repair.Outcome.status`: ok, retried, split or failed)."""
    audio: np.ndarray
    mel: np.ndarray
    alignment: np.ndarray
    status: str
    cut: bool  # the decode kept reached max_decoder_steps


class Overloaded(Exception):
    """More sentences than the engine admits are waiting; try again after `retry_after` seconds."""

    def __init__(self, retry_after: int, pending: int, limit: int):
        super().__init__(f"the server is busy ({pending} sentences waiting, at most {limit}); retry in "
                         f"{retry_after} s")
        self.retry_after = retry_after


class Closed(Exception):
    """The engine stopped (the server is shutting down) before the request finished."""


class Observer(Protocol):
    def on_batch(self, size: int, padded: int, seconds: dict[str, float], waits: list[float]) -> None: ...

    def on_cancel(self, sentences: int) -> None: ...


@dataclass(eq=False)
class _Job:
    text: str
    ids: list[int]
    index: int
    options: Options
    ticket: Ticket | None = None
    enqueued: float = 0.0


class Ticket:
    """One request's sentences on their way through the engine, awaited on the event loop that submitted it."""

    def __init__(self, engine: Engine, prepared: Prepared, options: Options, stream: bool):
        self.prepared, self.options, self.stream = prepared, options, stream
        self.count = len(prepared.ids)
        self.cancelled = False
        self.delivered = 0
        self._engine = engine
        self._loop = asyncio.get_running_loop()
        self._results: dict[int, Sentence] = {}
        self._error: BaseException | None = None
        self._changed = asyncio.Event()
        self._held: list[_Job] = []

    async def sentence(self, j: int) -> Sentence:
        """Sentence j's result once it is done (in any order); raises what stopped the request."""
        while j not in self._results:
            if self._error is not None:
                raise self._error
            await self._changed.wait()
            self._changed.clear()
        return self._results[j]

    async def all(self) -> list[Sentence]:
        return [await self.sentence(j) for j in range(self.count)]

    def cancel(self) -> None:
        """Drop the sentences not yet computed (the client went away)."""
        self._engine._drop(self, cancelled=True)

    # called from the worker thread
    def _post(self, fn, *args) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody waits for this any more
            pass

    def _arrive(self, j: int, result: Sentence) -> None:
        self._results[j] = result
        self._changed.set()

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self._changed.set()


def batch_sizes(max_batch: int) -> list[int]:
    """The Tacotron 2 batch sizes the worker runs: powers of two below max_batch, and max_batch."""
    return sorted({min(1 << k, max_batch) for k in range(max_batch.bit_length() + 1)})


class Engine:
    def __init__(self, tacotron2, vocoder, denoiser=None, *, max_batch: int = 8, max_wait: float = 0.005,
                 max_pending: int = 128, decoding: Settings | None = None, observer: Observer | None = None):
        """decoding: `jtts.pipeline.Settings` for what `jtts synthesize` also takes (max_decoder_steps,
        gate_threshold, attention_window, retry, tries, max_splits, limits, pause, chunk); its sigma, denoise
        and seed are ignored (they come with each request)."""
        from jtts.pipeline import Settings

        if max_batch < 1 or max_pending < 1:
            raise ValueError("max_batch and max_pending must be at least 1")
        self.tacotron2, self.vocoder, self.denoiser = tacotron2, vocoder, denoiser
        self.text_frontend = tacotron2.config.text_frontend  # requests' ids are the model's
        self.sample_rate = shared_frontend(tacotron2, vocoder).sample_rate  # refuses mismatched models
        self.max_batch, self.max_wait, self.max_pending = max_batch, max_wait, max_pending
        self.decoding = decoding or Settings()
        self.observer = observer
        # test hook: called on the worker thread with each batch's jobs before the batch runs
        self.before_batch: Callable[[list[_Job]], None] | None = None
        self.counts = {"batches": 0, "sentences": 0, "cancelled": 0}
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._pending = 0
        self._rate = 0.0  # sentences per second of batch time, smoothed: for Retry-After
        self._closed = False
        self._thread: threading.Thread | None = None

    # -- life cycle --------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="jtts-serve-engine", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker after its current batch; requests still waiting fail with `Closed`."""
        with self._cond:
            self._closed = True
            waiting = {job.ticket for job in self._queue if job.ticket is not None}
            self._cond.notify_all()
        for ticket in waiting:
            self._drop(ticket, error=Closed("the server is shutting down"))
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._closed

    def queue_length(self) -> int:
        return len(self._queue)

    def pending(self) -> int:
        return self._pending

    def warm_up(self, symbol_lengths: tuple[int, ...] | None = None) -> float:
        """Compile what the worker runs for every batch size it uses (1, 2, 4, ... max_batch) and each of
        `symbol_lengths` (default: one typical sentence), before the server says it is ready; other shapes
        compile once on first use. -> seconds taken."""
        from jtts.sentences import prepare

        t0 = time.perf_counter()
        typical = prepare(WARMUP_TEXT, text_frontend=self.text_frontend).ids[0]
        for n in symbol_lengths or (len(typical),):
            ids = (typical * (n // len(typical) + 1))[:n]
            for size in batch_sizes(self.max_batch):
                self._compute([_Job(WARMUP_TEXT, ids, j, Options()) for j in range(size)])
        return time.perf_counter() - t0

    # -- requests (event loop thread) ----------------------------------------------------------------------------

    def submit(self, prepared: Prepared, options: Options, *, stream: bool = False) -> Ticket:
        """Admit a request's sentences (called on the event loop that will await the ticket)."""
        ticket = Ticket(self, prepared, options, stream)
        jobs = [_Job(text, ids, j, options, ticket) for j, (text, ids) in enumerate(zip(prepared.sentences,
                                                                                      prepared.ids))]
        with self._cond:
            if self._closed:
                raise Closed("the server is shutting down")
            if self._pending + len(jobs) > self.max_pending:
                raise Overloaded(self._retry_after(), self._pending, self.max_pending)
            self._pending += len(jobs)
            first = 1 if stream else len(jobs)
            ticket._held = jobs[first:]
            self._enqueue(jobs[:first])
        return ticket

    def _retry_after(self) -> int:
        rate = self._rate if self._rate > 0 else 1.0
        return int(min(120, max(1, math.ceil(self._pending / rate))))

    def _enqueue(self, jobs: list[_Job]) -> None:  # under the lock
        now = time.monotonic()
        for job in jobs:
            job.enqueued = now
        self._queue.extend(jobs)
        self._cond.notify_all()

    def _drop(self, ticket: Ticket, *, cancelled: bool = False, error: BaseException | None = None) -> None:
        """Take a ticket's unfinished sentences out of the engine (cancelled, failed, or shutting down)."""
        with self._cond:
            if ticket.cancelled:
                return
            ticket.cancelled = True
            left = ticket.count - ticket.delivered
            self._pending -= left
            ticket._held = []
            self._queue = deque(job for job in self._queue if job.ticket is not ticket)
            if cancelled:
                self.counts["cancelled"] += left
        if cancelled and self.observer is not None:
            self.observer.on_cancel(left)
        if error is not None:
            ticket._post(ticket._fail, error)

    # -- the worker thread -----------------------------------------------------------------------------------

    def _take(self) -> list[_Job] | None:
        with self._cond:
            while True:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return None
                deadline = self._queue[0].enqueued + self.max_wait
                while 0 < len(self._queue) < self.max_batch and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                jobs = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
                if jobs:
                    return jobs

    def _work(self) -> None:
        while (jobs := self._take()) is not None:
            if self.before_batch is not None:
                self.before_batch(jobs)
            jobs = [job for job in jobs if not job.ticket.cancelled]
            if not jobs:
                continue
            try:
                results = self._compute(jobs)
            except Exception as e:  # a bug or a broken model: fail these requests, keep serving the others
                for ticket in {job.ticket for job in jobs}:
                    self._drop(ticket, error=e)
                continue
            self._deliver(jobs, results)

    def _deliver(self, jobs: list[_Job], results: list[Sentence]) -> None:
        posts = []
        with self._cond:
            for job, result in zip(jobs, results):
                ticket = job.ticket
                if ticket.cancelled:
                    continue
                ticket.delivered += 1
                self._pending -= 1
                self.counts["sentences"] += 1
                if ticket._held:  # a streaming ticket's first sentence is done: the rest may go now
                    self._enqueue(ticket._held)
                    ticket._held = []
                posts.append((ticket, job.index, result))
        for ticket, j, result in posts:
            ticket._post(ticket._arrive, j, result)

    def _compute(self, jobs: list[_Job]) -> list[Sentence]:
        import jax

        from jtts.pipeline import sentence_key, vocode_sentences
        from jtts.repair import repair

        d = self.decoding
        started, t0 = time.monotonic(), time.perf_counter()
        keys = [sentence_key(jax.random.key(job.options.seed), 0, job.index) for job in jobs]
        outcomes = repair(self._decode, [(job.text, job.ids, k) for job, k in zip(jobs, keys)],
                          tries=d.tries if d.retry else 1, max_depth=d.max_splits if d.retry else 0,
                          batch_size=self.max_batch, text_frontend=self.text_frontend)
        t1 = time.perf_counter()
        pieces = [(r, piece) for r, o in enumerate(outcomes) for piece in o.pieces]
        audio = vocode_sentences(self.vocoder, [p.decoded.mel for _, p in pieces], [p.key for _, p in pieces],
                                 [jobs[r].options.sigma for r, _ in pieces], max_rows=self.max_batch, chunk=d.chunk)
        t2 = time.perf_counter()
        joined: list[list[np.ndarray]] = [[] for _ in jobs]
        half = np.zeros(int(round(d.pause / 2 * self.sample_rate)), np.float32)  # between split pieces, as the CLI
        for (r, _), a in zip(pieces, audio):
            strength = jobs[r].options.denoise
            if self.denoiser is not None and strength > 0:
                a = np.asarray(self.denoiser(a[None], strength=strength))[0]
            joined[r] += [half, a] if joined[r] else [a]
        out = [Sentence(np.concatenate(parts).astype(np.float32), o.mel, o.alignment, o.status,
                        o.health.stop == "max_steps") for parts, o in zip(joined, outcomes)]
        t3 = time.perf_counter()
        n = len(jobs)
        self._rate = 0.7 * self._rate + 0.3 * n / max(t3 - t0, 1e-6) if self._rate else n / max(t3 - t0, 1e-6)
        self.counts["batches"] += 1
        if self.observer is not None and jobs[0].ticket is not None:
            waits = [started - job.enqueued for job in jobs]
            self.observer.on_batch(n, min(1 << (n - 1).bit_length(), self.max_batch),
                                   {"tacotron2": t1 - t0, "waveglow": t2 - t1, "denoiser": t3 - t2}, waits)
        return out

    def _decode(self, seqs: list[list[int]], keys: list) -> list:
        """One Tacotron 2 batch for `jtts.repair`, padded to a power of two with copies of the first row (they
        stop when it stops) so that few batch shapes compile; the copies' results are dropped."""
        from jtts.repair import decode_rows

        n = len(seqs)
        size = min(1 << (n - 1).bit_length(), self.max_batch)
        d = self.decoding
        return decode_rows(self.tacotron2, seqs + [seqs[0]] * (size - n), keys + [keys[0]] * (size - n),
                           max_decoder_steps=d.max_decoder_steps, gate_threshold=d.gate_threshold,
                           attention_window=d.attention_window, limits=d.limits)[:n]
