"""text -> sentences -> ids -> Tacotron 2 (judged, repaired) -> mel -> WaveGlow -> audio -> denoiser, batched.

Each utterance is split into sentences (`jtts.sentences`); sentences from all utterances are decoded by
Tacotron 2 in batches, each decode is judged by its alignment (`jtts.health`) and failed sentences are decoded
again or split (`jtts.repair`); then each sentence is vocoded (long mels window by window, `jtts.chunked`) and
denoised, and an utterance's sentences are joined with `pause` seconds of silence. WaveGlow runs through its
folded inference weights (`WaveGlow.inference()`), made once per call unless passed in already folded.

Two iterators: `iter_sentences` yields each sentence's audio, in input order, as soon as it is vocoded (the
first batch holds only the first sentence, so audio starts after one sentence's work); `iter_synthesize` yields
whole utterances (batches sorted by length within a window: less padding). In both, Tacotron 2 runs in a
worker thread one batch ahead of WaveGlow, so that batch k + 1 decodes while batch k is vocoded (JAX releases
the GIL while it computes; `overlap=False` runs both in the caller's thread).

Randomness: sentence j of utterance u draws its prenet dropout from fold_in(k, 0) and its WaveGlow noise from
fold_in(k, 1), where k = fold_in(fold_in(key(seed), u), j); retries and split pieces derive their keys from k
(`jtts.repair`). Same seed and same input give the same audio, whichever iterator, batch size or overlap.
"""
from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import jax
import numpy as np

from jtts.audio import SAMPLE_RATE
from jtts.chunked import CHUNK_FRAMES
from jtts.frontend import shared_frontend
from jtts.health import DEFAULT_LIMITS, Health, Limits
from jtts.repair import Cancelled, Outcome, block_diagonal
from jtts.sentences import MAX_CHARS, NothingToSpeak, Prepared, prepare
from jtts.text import DLE_TEXT, TextFrontend

if TYPE_CHECKING:
    from jtts.waveglow import WaveGlow, WaveGlowInference

STAGES = ("text", "tacotron2", "waveglow", "denoiser")


@dataclass(frozen=True)
class Settings:
    """Everything both iterators take besides the models (the keyword arguments of `iter_sentences`)."""
    sigma: float = 0.9                    # WaveGlow noise scale
    denoise: float = 0.01                 # denoiser strength (0: off)
    seed: int = 0
    max_decoder_steps: int | None = None  # None: the Tacotron 2 config's (2000 for NGC)
    gate_threshold: float | None = None   # None: the config's (0.5)
    attention_window: int | None = None   # see jtts.tacotron2.attention_window
    batch_size: int = 8                   # sentences per Tacotron 2 batch
    pause: float = 0.2                    # seconds between sentences (half of it between split pieces)
    max_chars: int = MAX_CHARS
    retry: bool = True                    # repair failed sentences (jtts.repair)
    tries: int = 3                        # decodes per sentence or piece before splitting it
    max_splits: int = 1                   # levels of splitting in two
    limits: Limits = DEFAULT_LIMITS       # what counts as failed (jtts.health)
    chunk: int = CHUNK_FRAMES             # WaveGlow chunk in mel frames (jtts.chunked)
    overlap: bool = True                  # decode in a worker thread one batch ahead

    def __post_init__(self):
        bad = [f"{k}={v}" for k, v in (("batch_size", self.batch_size), ("tries", self.tries), ("chunk", self.chunk),
                                       ("max_decoder_steps", self.max_decoder_steps),
                                       ("attention_window", self.attention_window)) if v is not None and v < 1]
        if bad:
            raise ValueError(f"must be at least 1: {', '.join(bad)}")


@dataclass
class Spoken:
    """One sentence, as `iter_sentences` yields it: float32 audio at the models' sample rate and what became of
    it."""
    utterance: int         # index of its utterance (text) in the input
    index: int             # index of the sentence in its utterance
    text: str
    audio: np.ndarray
    outcome: Outcome       # pieces kept (mel, alignment, health each), decodes made, status
    last: bool             # the last sentence of its utterance
    utterance_text: str = ""
    sample_rate: int = SAMPLE_RATE  # the models' front end's (DLE's 22050 Hz unless trained otherwise)

    @property
    def health(self) -> Health:
        return self.outcome.health

    @property
    def status(self) -> str:
        return self.outcome.status


@dataclass
class Utterance:
    text: str
    audio: np.ndarray              # float32 (samples,) at sample_rate
    mel: np.ndarray                # float32 (80, frames): the sentences' mels, concatenated
    alignments: list[np.ndarray]   # per sentence, float32 (frames_j, symbols_j); a split one's pieces block-diagonal
    sentences: list[str] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)  # per sentence: pieces, tries, status, health
    spans: list[tuple[float, float]] = field(default_factory=list)  # per sentence (start, length) in seconds
    index: int = 0
    sample_rate: int = SAMPLE_RATE  # the models' front end's

    @property
    def health(self) -> list[Health]:
        return [o.health for o in self.outcomes]

    @property
    def failed(self) -> list[int]:
        """Sentences that still fail after repair (their problems: `health[j].problems`)."""
        return [j for j, o in enumerate(self.outcomes) if not o.ok]

    @property
    def cut(self) -> list[int]:
        """Sentences whose kept decode reached max_decoder_steps."""
        return [j for j, o in enumerate(self.outcomes) if o.health.stop == "max_steps"]

    @property
    def hit_max_steps(self) -> bool:
        return bool(self.cut)

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate

    @property
    def alignment(self) -> np.ndarray:
        """All sentences' alignments as one block-diagonal (frames, symbols) matrix."""
        return block_diagonal(self.alignments)


def prepare_all(texts: Iterable[str | Prepared], max_chars: int = MAX_CHARS,
                text_frontend: TextFrontend = DLE_TEXT) -> list[Prepared]:
    """Each text prepared with the model's `text_frontend`. A Prepared is taken as it is if that is DLE's (what
    `prepare` makes by default), else its text is prepared again."""
    out = []
    for i, t in enumerate(texts):
        if isinstance(t, Prepared) and text_frontend == DLE_TEXT:
            out.append(t)
            continue
        try:
            out.append(prepare(t.text if isinstance(t, Prepared) else t, max_chars, text_frontend))
        except NothingToSpeak as e:
            raise NothingToSpeak(f"utterance {i + 1}: {e}") from None
    return out


def synthesize(texts: Iterable[str | Prepared], tacotron2, waveglow: WaveGlow | WaveGlowInference, denoiser=None,
               **kwargs) -> list[Utterance]:
    """All utterances at once; see `iter_synthesize` for the arguments."""
    return list(iter_synthesize(texts, tacotron2, waveglow, denoiser, **kwargs))


def iter_synthesize(texts: Iterable[str | Prepared], tacotron2, waveglow: WaveGlow | WaveGlowInference,
                    denoiser=None, **kwargs) -> Iterator[Utterance]:
    """Yields one Utterance per text, in input order, as soon as all its sentences are done; the arguments are
    `iter_sentences`'s."""
    parts: list[Spoken] = []
    for spoken in iter_sentences(texts, tacotron2, waveglow, denoiser, _order="length", **kwargs):
        parts.append(spoken)
        if spoken.last:
            yield _assemble(parts, kwargs.get("pause", Settings.pause))
            parts = []


def iter_sentences(texts: Iterable[str | Prepared], tacotron2, waveglow: WaveGlow | WaveGlowInference,
                   denoiser=None, *, timings: dict[str, float] | None = None,
                   progress: Callable[[int, int], None] | None = None, _order: str = "input",
                   **settings) -> Iterator[Spoken]:
    """Yields every sentence of every text, in input order, each as soon as it is vocoded (see the module
    docstring); `Spoken.last` marks the end of a text.

    texts: strings (split into sentences here) or `Prepared` utterances. waveglow: a WaveGlowInference, or a
    WaveGlow, folded here once (~0.3 s for WaveGlow-256 on CPU). settings: `Settings`' fields (sigma, denoise,
    seed, max_decoder_steps, gate_threshold, attention_window, batch_size, pause, max_chars, retry, tries,
    max_splits, limits, chunk, overlap). timings, if given, is a dict whose STAGES entries accumulate busy
    seconds per stage (Tacotron 2's overlap WaveGlow's: their sum can exceed the wall time). progress(done,
    total) is called with sentence counts. Raises NothingToSpeak naming the first utterance with nothing to
    speak, before any model runs.
    """
    s = Settings(**settings)
    clock = timings if timings is not None else {}
    for stage in STAGES:
        clock.setdefault(stage, 0.0)
    t0 = time.perf_counter()
    utts = prepare_all(texts, s.max_chars, tacotron2.config.text_frontend)
    clock["text"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    vocoder = waveglow.inference()
    clock["waveglow"] += time.perf_counter() - t0
    rate = shared_frontend(tacotron2, vocoder).sample_rate  # refuses a vocoder trained on other mels

    jobs = [(u, j) for u, p in enumerate(utts) for j in range(len(p.ids))]
    root = jax.random.key(s.seed)

    def decode(batch, stop=None):  # looked up at call time, so that tests can wrap _decode_batch
        return _decode_batch(batch, utts, tacotron2, s, root, clock, stop)

    batches = _plan(jobs, utts, s.batch_size, _order)
    decoded = _ahead(decode, batches) if s.overlap else ((b, decode(b)) for b in batches)
    done: dict[tuple[int, int], Spoken] = {}
    n_out = 0
    for batch, outcomes in decoded:
        for (u, j), outcome in sorted(zip(batch, outcomes), key=lambda x: x[0]):
            audio = _vocode(outcome, vocoder, denoiser, s, clock, rate)
            done[u, j] = Spoken(u, j, utts[u].sentences[j], audio, outcome, j == len(utts[u].ids) - 1, utts[u].text,
                                rate)
            while n_out < len(jobs) and jobs[n_out] in done:
                spoken = done.pop(jobs[n_out])
                n_out += 1
                if progress is not None:
                    progress(n_out, len(jobs))
                yield spoken


def _plan(jobs: list[tuple[int, int]], utts: list[Prepared], batch_size: int, order: str) -> list[list]:
    """Batches of (utterance, sentence). "input": in input order, the first batch a single sentence (the
    first audio comes soonest). "length": sorted by length within windows of 4 batches (less padding; the
    order within a window never changes the result)."""
    if order == "input":
        return [jobs[:1]] + [jobs[b:b + batch_size] for b in range(1, len(jobs), batch_size)]
    out = []
    window = batch_size * 4
    for w in range(0, len(jobs), window):
        part = sorted(jobs[w:w + window], key=lambda uj: -len(utts[uj[0]].ids[uj[1]]))
        out += [part[b:b + batch_size] for b in range(0, len(part), batch_size)]
    return out


def _decode_batch(batch, utts, tacotron2, s: Settings, root, clock, stop=None) -> list[Outcome]:
    """Tacotron 2 for one batch of (utterance, sentence), with repair -> an Outcome per sentence. stop: an Event
    that makes repair raise Cancelled between two Tacotron 2 calls."""
    from jtts.repair import decode_rows, repair

    t0 = time.perf_counter()
    decode = functools.partial(decode_rows, tacotron2, max_decoder_steps=s.max_decoder_steps,
                               gate_threshold=s.gate_threshold, attention_window=s.attention_window, limits=s.limits)
    sentences = [(utts[u].sentences[j], utts[u].ids[j], sentence_key(root, u, j)) for u, j in batch]
    out = repair(decode, sentences, tries=s.tries if s.retry else 1, max_depth=s.max_splits if s.retry else 0,
                 batch_size=s.batch_size, stop=stop, text_frontend=tacotron2.config.text_frontend)
    clock["tacotron2"] += time.perf_counter() - t0
    return out


def _vocode(outcome: Outcome, vocoder, denoiser, s: Settings, clock, rate: int) -> np.ndarray:
    """WaveGlow and the denoiser for each piece kept of a sentence; pieces joined by half a pause."""
    from jtts.chunked import chunked_infer

    pieces = []
    for i, piece in enumerate(outcome.pieces):
        t1 = time.perf_counter()
        audio = chunked_infer(vocoder, piece.decoded.mel[None], sigma=s.sigma, key=jax.random.fold_in(piece.key, 1),
                              chunk=s.chunk)
        audio = np.asarray(audio)
        t2 = time.perf_counter()
        clock["waveglow"] += t2 - t1
        if denoiser is not None and s.denoise > 0:
            audio = np.asarray(denoiser(audio, strength=s.denoise))
            clock["denoiser"] += time.perf_counter() - t2
        if i:
            pieces.append(np.zeros(int(round(s.pause / 2 * rate)), np.float32))
        pieces.append(audio[0].astype(np.float32))
    return np.concatenate(pieces)


def _ahead(fn: Callable, items: list) -> Iterator[tuple]:
    """(item, fn(item, stop)) for each item, computed in a worker thread at most one item ahead of the consumer:
    the worker starts on item k + 1 when the consumer takes item k. The worker's exception is raised in the
    consumer, in order. Closing the generator (Ctrl-C included) sets the Event `stop` and waits for the worker:
    fn should raise Cancelled soon after `stop` is set."""
    results: queue.Queue = queue.Queue()
    turn = threading.Semaphore(1)
    stop = threading.Event()

    def work():
        try:
            for item in items:
                turn.acquire()
                if stop.is_set():
                    return
                results.put((item, fn(item, stop), None))
        except Cancelled:
            return
        except BaseException as e:  # noqa: BLE001  handed to the consumer
            results.put((None, None, e))
        results.put(None)

    worker = threading.Thread(target=work, name="jtts-decode", daemon=True)
    worker.start()
    try:
        while (got := results.get()) is not None:
            turn.release()
            item, value, error = got
            if error is not None:
                raise error
            yield item, value
    finally:
        stop.set()
        turn.release()
        worker.join()


def _assemble(parts: list[Spoken], pause: float) -> Utterance:
    rate = parts[0].sample_rate
    gap = np.zeros(int(round(pause * rate)), np.float32)
    pieces, spans, at = [], [], 0
    for j, p in enumerate(parts):
        if j:
            pieces.append(gap)
            at += len(gap)
        spans.append((at / rate, len(p.audio) / rate))
        pieces.append(p.audio)
        at += len(p.audio)
    outcomes = [p.outcome for p in parts]
    return Utterance(text=parts[0].utterance_text, audio=np.concatenate(pieces),
                     mel=np.concatenate([o.mel for o in outcomes], axis=1), alignments=[o.alignment for o in outcomes],
                     sentences=[p.text for p in parts], outcomes=outcomes, spans=spans, index=parts[0].utterance,
                     sample_rate=rate)


# -- batches of sentences from different callers (jtts serve) ---------------------------------------------------

def sentence_key(root: jax.Array, utterance: int, sentence: int) -> jax.Array:
    """The key of sentence `sentence` of utterance `utterance` under root = jax.random.key(seed) (see the module
    docstring); `jtts synthesize "TEXT"` speaks utterance 0."""
    return jax.random.fold_in(jax.random.fold_in(root, utterance), sentence)


def vocode_sentences(vocoder: WaveGlowInference, mels: list[np.ndarray], keys: list[jax.Array],
                     sigmas: list[float], max_rows: int = 64, chunk: int = CHUNK_FRAMES) -> list[np.ndarray]:
    """WaveGlow for several sentences' (or pieces') mels (80, frames_i) in few calls -> float32 audio each.

    Row i gives what the pipeline's `_vocode` gives it alone, `chunked_infer(vocoder, mel_i[None], sigma=sigmas[i],
    key=fold_in(keys[i], 1), chunk=chunk)`, up to float rounding: its noise is drawn from its own key at its own
    length, and the dilated convolutions are masked at its own length (WaveGlow's exact padding, here per row).
    Mels of at most 2 * chunk frames go longest first into batches of power-of-two sizes (7 rows: 4 + 2 + 1) of
    at most `max_rows`, so that few shapes compile; longer ones are vocoded alone, window by window, as there.
    """
    from jtts.chunked import chunked_infer
    from jtts.waveglow import F32, UPSAMPLE_STRIDE, _bucket

    cfg = vocoder.config
    out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(mels)
    order = sorted(range(len(mels)), key=lambda i: -mels[i].shape[1])
    for i in [i for i in order if mels[i].shape[1] > 2 * chunk]:
        out[i] = np.asarray(chunked_infer(vocoder, mels[i][None], sigma=sigmas[i], key=jax.random.fold_in(keys[i], 1),
                                          chunk=chunk))[0]
    order = [i for i in order if mels[i].shape[1] <= 2 * chunk]
    start = 0
    while start < len(order):
        rest = min(len(order) - start, max_rows)
        rows = order[start:start + (1 << (rest.bit_length() - 1))]
        start += len(rows)
        frames = [mels[i].shape[1] for i in rows]
        padded = _bucket(max(frames))
        mel = np.zeros((len(rows), cfg.n_mel_channels, padded), np.float32)
        z = np.zeros((len(rows), cfg.n_group, padded * UPSAMPLE_STRIDE // cfg.n_group), np.float32)
        valid = np.array([f * UPSAMPLE_STRIDE // cfg.n_group for f in frames], np.int32)
        for r, i in enumerate(rows):
            mel[r, :, :frames[r]] = mels[i]
            if sigmas[i] != 0:  # drawn as WaveGlowInference.infer draws it for this mel alone
                noise = jax.random.normal(jax.random.fold_in(keys[i], 1), (1, cfg.n_group, valid[r]), F32)
                z[r, :, :valid[r]] = np.asarray(noise)[0]
        sig = np.array([sigmas[i] for i in rows], np.float32)
        audio = np.asarray(_vocode_rows(vocoder.weights, mel, z, sig, valid, cfg=cfg))
        for r, i in enumerate(rows):
            out[i] = audio[r, :frames[r] * UPSAMPLE_STRIDE]
    return out


@functools.partial(jax.jit, static_argnames=("cfg",))
def _vocode_rows(weights, mel, z, sigma, valid, *, cfg):
    """WaveGlow's reverse flows mapped over rows, each with its own sigma and number of real groups."""
    from jtts.waveglow import _infer

    def row(m, zr, s, v):
        return _infer(weights, m[None], zr[None], s, v, cfg=cfg)[0]

    return jax.vmap(row)(mel, z, sigma, valid)
