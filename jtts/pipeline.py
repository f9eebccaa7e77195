"""text -> ids -> Tacotron 2 -> mel -> WaveGlow -> audio -> denoiser: the whole pipeline, batched.

Utterances are padded to bucketed shapes (the models' own buckets) so jit compiles a handful of times.
Row b of a batch draws its prenet dropout from fold_in(key, b) and its WaveGlow noise from its own key, so
an utterance's audio does not depend on what else is in its batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jtts.text import text_to_sequence


@dataclass
class Utterance:
    text: str
    audio: np.ndarray          # float32 (samples,)
    mel: np.ndarray            # float32 (80, frames)
    alignment: np.ndarray      # float32 (frames, symbols)
    hit_max_steps: bool


def synthesize(texts: list[str], tacotron2, waveglow, denoiser=None, *, sigma: float = 0.9,
               denoise: float = 0.01, seed: int = 0, max_decoder_steps: int = 2000,
               batch_size: int = 8) -> list[Utterance]:
    ids = []
    for i, text in enumerate(texts):
        seq = text_to_sequence(text)
        if not seq:
            raise ValueError(f"utterance {i + 1} has nothing to speak: {text[:60]!r}")
        ids.append(seq)
    root = jax.random.key(seed)
    out: list[Utterance] = []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start:start + batch_size]
        lengths = np.array([len(s) for s in chunk], np.int32)
        tokens = np.zeros((len(chunk), lengths.max()), np.int32)
        for b, s in enumerate(chunk):
            tokens[b, :len(s)] = s
        keys = jax.vmap(lambda i: jax.random.fold_in(root, i))(jnp.arange(start, start + len(chunk)))
        dec_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
        mel, mel_lengths, align = tacotron2.infer(tokens, lengths, max_decoder_steps=max_decoder_steps,
                                                  key=dec_keys)
        mel, mel_lengths, align = np.asarray(mel), np.asarray(mel_lengths), np.asarray(align)
        for b in range(len(chunk)):
            n = max(int(mel_lengths[b]), 1)
            wav_key = jax.random.fold_in(keys[b], 1)
            audio = waveglow.infer(mel[b:b + 1, :, :n], sigma=sigma, key=wav_key)
            if denoiser is not None and denoise > 0:
                audio = denoiser(audio, strength=denoise)
            out.append(Utterance(texts[start + b], np.asarray(audio[0], np.float32), mel[b, :, :n],
                                 align[b, :n, :lengths[b]], int(mel_lengths[b]) >= max_decoder_steps))
    return out
