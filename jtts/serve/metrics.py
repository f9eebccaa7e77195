"""Prometheus metrics of `jtts serve` (GET /metrics), in a registry of their own per app.

    jtts_requests_total{endpoint, status}          answered requests
    jtts_errors_total{code}                        error answers by error code (empty_input, overloaded, ...)
    jtts_audio_seconds_total                       seconds of audio sent
    jtts_sentences_total / _cancelled_total        sentences synthesized / dropped because the client left
    jtts_queue_sentences, jtts_pending_sentences   sentences waiting for a batch / admitted and unfinished
    jtts_active_requests                           requests being answered
    jtts_request_duration_seconds{endpoint}        latency to the last byte (histogram)
    jtts_time_to_first_audio_seconds               latency to the first audio byte (histogram)
    jtts_queue_wait_seconds                        a sentence's wait for its batch (histogram)
    jtts_batch_size                                real sentences per batch (histogram)
    jtts_stage_seconds{stage}                      tacotron2 / waveglow / denoiser time per batch (histogram)
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)
BATCH = (1, 2, 4, 8, 16, 32, 64)

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]

disable_created_metrics()  # no *_created series: they double the page and no dashboard uses them


class Metrics:
    def __init__(self, engine=None):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("jtts_requests", "Answered requests", ["endpoint", "status"], registry=r)
        self.errors = Counter("jtts_errors", "Error answers by error code", ["code"], registry=r)
        self.audio_seconds = Counter("jtts_audio_seconds", "Seconds of audio sent", registry=r)
        self.sentences = Counter("jtts_sentences", "Sentences synthesized", registry=r)
        self.cancelled = Counter("jtts_sentences_cancelled", "Sentences dropped because the client went away",
                                 registry=r)
        self.active = Gauge("jtts_active_requests", "Requests being answered", registry=r)
        self.duration = Histogram("jtts_request_duration_seconds", "Time to the last byte", ["endpoint"],
                                  buckets=LATENCY, registry=r)
        self.first_audio = Histogram("jtts_time_to_first_audio_seconds", "Time to the first audio byte",
                                     buckets=LATENCY, registry=r)
        self.queue_wait = Histogram("jtts_queue_wait_seconds", "A sentence's wait for its batch", buckets=LATENCY,
                                    registry=r)
        self.batch_size = Histogram("jtts_batch_size", "Sentences per batch", buckets=BATCH, registry=r)
        self.stage = Histogram("jtts_stage_seconds", "Time per batch and stage", ["stage"], buckets=LATENCY,
                               registry=r)
        self.queue = Gauge("jtts_queue_sentences", "Sentences waiting for a batch", registry=r)
        self.pending = Gauge("jtts_pending_sentences", "Sentences admitted and not finished", registry=r)
        if engine is not None:
            self.watch(engine)

    def watch(self, engine) -> None:
        self.queue.set_function(engine.queue_length)
        self.pending.set_function(engine.pending)
        engine.observer = self

    # engine observer (worker thread; prometheus_client is thread-safe)
    def on_batch(self, size: int, padded: int, seconds: dict[str, float], waits: list[float]) -> None:
        self.batch_size.observe(size)
        self.sentences.inc(size)
        for stage, s in seconds.items():
            self.stage.labels(stage).observe(s)
        for w in waits:
            self.queue_wait.observe(w)

    def on_cancel(self, sentences: int) -> None:
        self.cancelled.inc(sentences)

    def answered(self, endpoint: str, status: int, seconds: float, code: str | None = None) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.duration.labels(endpoint).observe(seconds)
        if code is not None:
            self.errors.labels(code).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
