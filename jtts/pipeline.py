"""text -> sentences -> ids -> Tacotron 2 -> mel -> WaveGlow -> audio -> denoiser: the whole pipeline, batched.

Each utterance is split into sentences (`jtts.sentences`); sentences from all utterances are decoded by
Tacotron 2 in batches (sorted by length within a window, so batch-mates have similar lengths), vocoded one
by one, and each utterance's sentences are joined with `pause` seconds of silence.

Randomness: sentence j of utterance u draws its prenet dropout from fold_in(k, 0) and its WaveGlow noise from
fold_in(k, 1), where k = fold_in(fold_in(key(seed), u), j). Same seed and same input give the same audio,
and nothing depends on which sentences share a batch.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import jax
import numpy as np

from jtts.audio import SAMPLE_RATE
from jtts.sentences import MAX_CHARS, NothingToSpeak, Prepared, prepare

STAGES = ("text", "tacotron2", "waveglow", "denoiser")


@dataclass
class Utterance:
    text: str
    audio: np.ndarray              # float32 (samples,) at 22050 Hz
    mel: np.ndarray                # float32 (80, frames): the sentences' mels, concatenated
    alignments: list[np.ndarray]   # per sentence, float32 (frames_j, symbols_j)
    sentences: list[str] = field(default_factory=list)
    cut: list[int] = field(default_factory=list)  # sentences that reached max_decoder_steps
    index: int = 0

    @property
    def hit_max_steps(self) -> bool:
        return bool(self.cut)

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    @property
    def alignment(self) -> np.ndarray:
        """All sentences' alignments as one block-diagonal (frames, symbols) matrix."""
        frames = sum(a.shape[0] for a in self.alignments)
        syms = sum(a.shape[1] for a in self.alignments)
        out = np.zeros((frames, syms), np.float32)
        r = c = 0
        for a in self.alignments:
            out[r:r + a.shape[0], c:c + a.shape[1]] = a
            r, c = r + a.shape[0], c + a.shape[1]
        return out


def prepare_all(texts: Iterable[str | Prepared], max_chars: int = MAX_CHARS) -> list[Prepared]:
    out = []
    for i, t in enumerate(texts):
        if isinstance(t, Prepared):
            out.append(t)
            continue
        try:
            out.append(prepare(t, max_chars))
        except NothingToSpeak as e:
            raise NothingToSpeak(f"utterance {i + 1}: {e}") from None
    return out


def synthesize(texts: Iterable[str | Prepared], tacotron2, waveglow, denoiser=None, **kwargs) -> list[Utterance]:
    """All utterances at once; see `iter_synthesize` for the arguments."""
    return list(iter_synthesize(texts, tacotron2, waveglow, denoiser, **kwargs))


def iter_synthesize(texts: Iterable[str | Prepared], tacotron2, waveglow, denoiser=None, *, sigma: float = 0.9,
                    denoise: float = 0.01, seed: int = 0, max_decoder_steps: int = 2000, batch_size: int = 8,
                    pause: float = 0.2, max_chars: int = MAX_CHARS, timings: dict[str, float] | None = None,
                    progress: Callable[[int, int], None] | None = None) -> Iterator[Utterance]:
    """Yields one Utterance per text, in input order, as soon as all its sentences are done.

    texts: strings (split into sentences here) or `Prepared` utterances. timings, if given, is a dict whose
    STAGES entries accumulate wall seconds per stage. progress(done, total) is called with sentence counts.
    Raises NothingToSpeak (a ValueError) naming the first utterance with nothing to speak, before any model runs.
    """
    if batch_size < 1 or max_decoder_steps < 1:
        raise ValueError("batch_size and max_decoder_steps must be at least 1")
    clock = timings if timings is not None else {}
    for s in STAGES:
        clock.setdefault(s, 0.0)
    t0 = time.perf_counter()
    utts = prepare_all(texts, max_chars)
    clock["text"] += time.perf_counter() - t0

    jobs = [(u, j) for u, p in enumerate(utts) for j in range(len(p.ids))]
    done: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray, bool]] = {}
    root = jax.random.key(seed)
    gap = np.zeros(int(round(pause * SAMPLE_RATE)), np.float32)
    next_utt = 0
    window = batch_size * 4
    for w in range(0, len(jobs), window):
        # Similar lengths per batch waste less padding; order within a window never changes the result.
        part = sorted(jobs[w:w + window], key=lambda uj: -len(utts[uj[0]].ids[uj[1]]))
        for b in range(0, len(part), batch_size):
            batch = part[b:b + batch_size]
            for key, result in zip(batch, _run_batch(batch, utts, tacotron2, waveglow, denoiser, root, sigma,
                                                     denoise, max_decoder_steps, clock)):
                done[key] = result
            if progress is not None:
                progress(len(done), len(jobs))
            while next_utt < len(utts) and all((next_utt, j) in done for j in range(len(utts[next_utt].ids))):
                yield _assemble(next_utt, utts[next_utt], done, gap)
                next_utt += 1


def _run_batch(batch, utts, tacotron2, waveglow, denoiser, root, sigma, denoise, max_steps, clock):
    seqs = [utts[u].ids[j] for u, j in batch]
    keys = [jax.random.fold_in(jax.random.fold_in(root, u), j) for u, j in batch]
    lengths = np.array([len(s) for s in seqs], np.int32)
    tokens = np.zeros((len(seqs), lengths.max()), np.int32)
    for r, s in enumerate(seqs):
        tokens[r, :len(s)] = s
    t0 = time.perf_counter()
    dec_keys = jax.numpy.stack([jax.random.fold_in(k, 0) for k in keys])
    mel, mel_lengths, align = tacotron2.infer(tokens, lengths, max_decoder_steps=max_steps, key=dec_keys)
    mel, mel_lengths, align = np.asarray(mel), np.asarray(mel_lengths), np.asarray(align)
    clock["tacotron2"] += time.perf_counter() - t0
    out = []
    for r in range(len(seqs)):
        n = max(int(mel_lengths[r]), 1)  # a gate firing at the first step still leaves one frame
        t1 = time.perf_counter()
        audio = np.asarray(waveglow.infer(mel[r:r + 1, :, :n], sigma=sigma, key=jax.random.fold_in(keys[r], 1)))
        t2 = time.perf_counter()
        clock["waveglow"] += t2 - t1
        if denoiser is not None and denoise > 0:
            audio = np.asarray(denoiser(audio, strength=denoise))
            clock["denoiser"] += time.perf_counter() - t2
        out.append((audio[0].astype(np.float32), mel[r, :, :n], align[r, :n, :lengths[r]],
                    int(mel_lengths[r]) >= max_steps))
    return out


def _assemble(u: int, prep: Prepared, done, gap: np.ndarray) -> Utterance:
    parts = [done.pop((u, j)) for j in range(len(prep.ids))]
    pieces = []
    for j, (audio, _, _, _) in enumerate(parts):
        if j:
            pieces.append(gap)
        pieces.append(audio)
    return Utterance(text=prep.text, audio=np.concatenate(pieces), mel=np.concatenate([p[1] for p in parts], axis=1),
                     alignments=[p[2] for p in parts], sentences=list(prep.sentences),
                     cut=[j for j, p in enumerate(parts) if p[3]], index=u)
