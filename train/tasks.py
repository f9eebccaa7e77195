"""Training tasks: what `jtts.train` needs to know about one model kind, and nothing else does.

A task gives the batch layout, the forward pass and loss, the extra outputs validation keeps, the BatchNorm
statistics fix-up, the throughput unit, DLE's defaults (optimizer, batch size, a small config for quick runs)
and the data iterators. `Trainer`, the loop and `jtts train` call these and never branch on a kind's name;
`jtts.models.REGISTRY` says which task serves which kind.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .losses import tacotron2_loss, waveglow_loss

BN_MOMENTUM = 0.1  # torch's convention (weight of the new batch statistic)


@dataclass
class Task:
    kind: ClassVar[str]
    batch_keys: ClassVar[tuple[str, ...]]
    unit: ClassVar[str]  # DLE's throughput unit, per second in logs
    batch_size: ClassVar[int]  # DLE's per-device batch of its fp32 scripts
    small: ClassVar[dict[str, Any]]  # config overrides of `jtts train --config small`
    optimizer: ClassVar[dict[str, Any]]  # DLE's training-script defaults (jtts.train.optim.make_optimizer)

    def forward(self, model, batch, key) -> tuple[Any, dict, Any]:
        """-> (float32 loss, dict of float32 loss parts, model outputs)."""
        raise NotImplementedError

    def eval_outputs(self, out) -> dict:
        """Model outputs validation keeps beside the losses (e.g. for pictures)."""
        return {}

    def update_stats(self, old: dict, new: dict, batch) -> dict:
        """Running statistics after a step, from flax's update (`new`) and the previous ones."""
        return new

    def items(self, batch) -> int:
        """Throughput: how many `unit`s a batch holds."""
        raise NotImplementedError

    def batches(self, data, batch_size: int, **kw):
        """Training batches; batch_size is the global batch, of which `shard=(process index, count)` reads a
        block of rows (`jtts.train.data`)."""
        raise NotImplementedError

    def val_batches(self, data, batch_size: int, train_batches=None, **kw):
        raise NotImplementedError

    def synthetic(self, batch_size: int, rng: np.random.Generator, config) -> dict:
        """One random batch of fixed shapes (smoke runs and benchmarks)."""
        raise NotImplementedError

    def picture(self, path, batch, out) -> None:
        """A picture of the first validation utterance, if the model has something to show."""


@dataclass
class Tacotron2Task(Task):
    """DLE's Tacotron 2 recipe. prenet_dropout: DLE keeps it at 0.5 always (0 turns it off, e.g. for parity).
    guided_attention: weight of Tachibana et al.'s diagonal attention prior (0, the default, is DLE's loss).
    gate_pos_weight: weight of the gate's stop frames in its cross-entropy (1, the default, is DLE's loss). Why
    offer it: a sentence of N frames has one informative stop target (its last frame; the padding after it is
    told apart by the zero frames fed in), so DLE's gate learns "stop" long after attention has aligned."""
    prenet_dropout: float = 0.5
    guided_attention: float = 0.0
    guided_attention_sigma: float = 0.2
    gate_pos_weight: float = 1.0

    kind: ClassVar[str] = "tacotron2"
    batch_keys: ClassVar[tuple[str, ...]] = ("tokens", "token_lengths", "mels", "mel_lengths", "gate")
    unit: ClassVar[str] = "mels"
    batch_size: ClassVar[int] = 48
    small: ClassVar[dict[str, Any]] = dict(
        symbols_embedding_dim=64, encoder_embedding_dim=64, attention_rnn_dim=96, decoder_rnn_dim=96, prenet_dim=32,
        attention_dim=24, attention_location_n_filters=8, attention_location_kernel_size=7, postnet_embedding_dim=64)
    optimizer: ClassVar[dict[str, Any]] = dict(lr=1e-3, weight_decay=1e-6, grad_clip=1.0,
                                               anneal_epochs=(500, 1000, 1500), anneal_factor=0.1)

    def forward(self, model, batch, key):
        out = model(batch["tokens"], batch["token_lengths"], batch["mels"], batch["mel_lengths"],
                    prenet_dropout=self.prenet_dropout, key=key)
        loss, parts = tacotron2_loss(out, batch["mels"], batch["gate"], self.gate_pos_weight)
        if self.guided_attention:
            from .losses import guided_attention_loss

            ga = guided_attention_loss(out[3], batch["token_lengths"], batch["mel_lengths"],
                                       self.guided_attention_sigma)
            loss = loss + self.guided_attention * ga
            parts = dict(parts, guided_attention=ga)
        return loss, parts, out

    def eval_outputs(self, out):
        return dict(mel_postnet=out[1], alignments=out[3])

    def update_stats(self, old, new, batch):
        """flax moves running_var toward the biased batch variance, torch toward the unbiased one."""
        b = batch["tokens"].shape[0]
        counts = {"encoder": b * batch["tokens"].shape[1], "postnet": b * batch["mels"].shape[2]}
        out = dict(new)
        for k, v in new.items():
            if k.endswith(".var"):
                n = counts[k.split(".")[0]]
                out[k] = v + (v - (1.0 - BN_MOMENTUM) * old[k]) / max(n - 1, 1)
        return out

    def items(self, batch):
        return int(np.sum(np.asarray(batch["mel_lengths"])))

    def batches(self, data, batch_size, *, seed=0, buckets=8, worker_count=0, shard=(0, 1), **_):
        from .data import tacotron2_batches

        return tacotron2_batches(data, batch_size, seed=seed, buckets=buckets, worker_count=worker_count,
                                 shard=shard)

    def val_batches(self, data, batch_size, train_batches=None, *, buckets=8, **_):
        from .data import tacotron2_val_batches

        return tacotron2_val_batches(data, batch_size,
                                     buckets=train_batches.buckets if train_batches is not None else buckets)

    def synthetic(self, batch_size, rng, config, *, t_in=64, frames=200):
        b = batch_size
        gate = np.zeros((b, frames), np.float32)
        gate[:, -1] = 1.0
        return dict(tokens=rng.integers(1, config.n_symbols, (b, t_in)).astype(np.int32),
                    token_lengths=np.full(b, t_in, np.int32),
                    mels=rng.normal(-5, 1, (b, config.n_mel_channels, frames)).astype(np.float32),
                    mel_lengths=np.full(b, frames, np.int32), gate=gate)

    def picture(self, path, batch, out):
        from jtts.plot import plot_utterance

        t, t_in = int(batch["mel_lengths"][0]), int(batch["token_lengths"][0])
        mel = np.asarray(out["mel_postnet"])[0, :, :t]
        align = np.asarray(out["alignments"])[0, :t, :t_in]
        path.parent.mkdir(parents=True, exist_ok=True)
        plot_utterance(path, mel, [align], title=path.stem)


@dataclass
class WaveGlowTask(Task):
    """DLE's WaveGlow recipe: random audio segments, NLL with sigma 1."""
    segment_length: int = 8000
    sigma: float = 1.0

    kind: ClassVar[str] = "waveglow"
    batch_keys: ClassVar[tuple[str, ...]] = ("mels", "audio")
    unit: ClassVar[str] = "samples"
    batch_size: ClassVar[int] = 4
    small: ClassVar[dict[str, Any]] = dict(n_layers=4, n_channels=32)
    # WaveGlow trains without weight decay; its clip threshold (65504 with AMP) never clips in practice
    optimizer: ClassVar[dict[str, Any]] = dict(lr=1e-4, weight_decay=0.0, grad_clip=65504.0, anneal_epochs=(),
                                               anneal_factor=0.1)

    def forward(self, model, batch, key):
        out = model(batch["mels"], batch["audio"])
        loss, parts = waveglow_loss(out, self.sigma)
        return loss, parts, out

    def items(self, batch):
        return int(np.prod(np.shape(batch["audio"])))

    def batches(self, data, batch_size, *, seed=0, worker_count=0, shard=(0, 1), **_):
        from .data import waveglow_batches

        return waveglow_batches(data, batch_size, seed=seed, segment_length=self.segment_length,
                                worker_count=worker_count, shard=shard)

    def val_batches(self, data, batch_size, train_batches=None, **_):
        from .data import waveglow_val_batches

        return waveglow_val_batches(data, batch_size, segment_length=self.segment_length)

    def synthetic(self, batch_size, rng, config):
        b, seg = batch_size, self.segment_length
        return dict(mels=rng.normal(-5, 1, (b, config.n_mel_channels, seg // 256 + 1)).astype(np.float32),
                    audio=rng.uniform(-0.5, 0.5, (b, seg)).astype(np.float32))


def task_for(kind_or_model, **options) -> Task:
    """The registered task of a model kind (or of a model instance), with `options` set."""
    from jtts import models

    kind = kind_or_model if isinstance(kind_or_model, str) else models.kind_of(kind_or_model)
    return models.get(kind).task_class()(**options)
