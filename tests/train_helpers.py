"""Tiny models and synthetic, resumable batch iterators for the training tests (no files, no torch)."""
from __future__ import annotations

import numpy as np

TINY_TACOTRON2 = dict(n_symbols=40, symbols_embedding_dim=32, encoder_embedding_dim=32, encoder_n_convolutions=2,
                      attention_rnn_dim=64, decoder_rnn_dim=64, prenet_dim=32, attention_dim=16,
                      attention_location_n_filters=8, attention_location_kernel_size=7, postnet_embedding_dim=32,
                      postnet_n_convolutions=3)


def tiny_tacotron2(seed=0, dtype="float32", **overrides):
    from flax import nnx

    from jtts.tacotron2 import Tacotron2, Tacotron2Config
    from jtts.train.step import DTYPES

    return Tacotron2(Tacotron2Config(**{**TINY_TACOTRON2, **overrides}), dtype=DTYPES[dtype], rngs=nnx.Rngs(seed))


def tiny_waveglow(seed=0):
    from flax import nnx

    from jtts.waveglow import WaveGlow, WaveGlowConfig

    return WaveGlow(WaveGlowConfig(n_flows=4, n_early_every=2, n_layers=2, n_channels=16), rngs=nnx.Rngs(seed))


def tacotron2_batches(n_batches=2, batch=4, t_in=10, frames=24, seed=0):
    """Smooth, learnable mels: each utterance a sum of two drifting sinusoids over mel channels."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        tok_len = np.sort(rng.integers(t_in // 2, t_in + 1, batch))[::-1].copy()
        tok_len[0] = t_in
        mel_len = np.sort(rng.integers(frames // 2, frames + 1, batch))[::-1].copy()
        mel_len[0] = frames
        tokens = np.zeros((batch, t_in), np.int32)
        mels = np.zeros((batch, 80, frames), np.float32)
        gate = np.zeros((batch, frames), np.float32)
        ch = np.arange(80)[:, None] / 80.0
        for b in range(batch):
            tokens[b, :tok_len[b]] = rng.integers(1, 40, tok_len[b])
            f1, f2, ph = rng.uniform(1, 4), rng.uniform(0.05, 0.3), rng.uniform(0, 6)
            t = np.arange(mel_len[b])[None, :]
            mels[b, :, :mel_len[b]] = np.sin(2 * np.pi * f1 * ch + f2 * t + ph) + 0.5 * np.cos(3 * ch * t / frames)
            gate[b, mel_len[b] - 1:] = 1.0
        out.append(dict(tokens=tokens, token_lengths=tok_len.astype(np.int32), mels=mels,
                        mel_lengths=mel_len.astype(np.int32), gate=gate))
    return out


class ListIterator:
    """Cycles over fixed batches; the state is the position, like train.data's iterators."""

    def __init__(self, batches, limit=None):
        self.batches, self.position, self.limit = batches, 0, limit
        self.batches_per_epoch = len(batches)

    def __iter__(self):
        return self

    def __next__(self):
        if self.limit is not None and self.position >= self.limit:
            raise StopIteration
        batch = self.batches[self.position % len(self.batches)]
        self.position += 1
        return {k: v.copy() for k, v in batch.items()}

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = int(state["position"])
