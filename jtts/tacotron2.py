"""Tacotron 2 (text -> mel), numerically matched to NVIDIA DeepLearningExamples' PyTorch model.

Layout: activations are channels-last, (batch, time, channels); the public methods take and return DLE's
(batch, channels, time) mels so that arrays can be compared with PyTorch directly.

Precision: parameters are float32. Matmuls and convolutions take their operands in the compute dtype and
accumulate in float32 (`preferred_element_type`); LSTM cell state, attention energies/softmax/context,
BatchNorm and everything between layers stay float32. Only GEMM operands are rounded to bf16/fp16.

Batching: `infer` treats each row as if it ran alone (DLE's batched output is not: its encoder convs see the
padding tokens and its postnet sees frames decoded after an utterance stopped). `__call__` (training) keeps
DLE's padded-batch semantics so that losses and gradients match DLE on the same padded batch.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jtts.frontend import AudioConfig, model_audio
from jtts.models import FromCheckpoint
from jtts.text import TextFrontend

F32 = jnp.float32


@dataclass(frozen=True)
class Tacotron2Config:
    """Hyperparameters, named as DLE's Tacotron2 constructor names them (the defaults are NVIDIA's NGC model)."""
    n_symbols: int = 148
    symbols_embedding_dim: int = 512
    encoder_kernel_size: int = 5
    encoder_n_convolutions: int = 3
    encoder_embedding_dim: int = 512
    attention_rnn_dim: int = 1024
    attention_dim: int = 128
    attention_location_n_filters: int = 32
    attention_location_kernel_size: int = 31
    decoder_rnn_dim: int = 1024
    prenet_dim: int = 256
    postnet_embedding_dim: int = 512
    postnet_kernel_size: int = 5
    postnet_n_convolutions: int = 5
    n_mel_channels: int = 80
    n_frames_per_step: int = 1
    max_decoder_steps: int = 2000
    gate_threshold: float = 0.5
    p_attention_dropout: float = 0.1
    p_decoder_dropout: float = 0.1
    mask_padding: bool = False
    decoder_no_early_stopping: bool = False
    # The mels' audio front end (not a DLE constructor argument: DLE sets it in its training script). None or
    # a dict (model.json) becomes an AudioConfig, DLE's by default, with n_mels = n_mel_channels.
    audio: AudioConfig | None = None
    # The text front end (`jtts.text.TextFrontend`; not DLE arguments either: DLE sets its cleaners on the
    # command line and its symbols in a module): cleaners, and characters after DLE's 148 symbols (ids 148, ...).
    text_cleaners: tuple[str, ...] = ("english_cleaners",)
    extra_symbols: str = ""

    def __post_init__(self):
        if self.n_frames_per_step != 1:
            raise ValueError("n_frames_per_step must be 1 (DLE's models and checkpoints use 1)")
        text = TextFrontend(self.text_cleaners, self.extra_symbols)
        object.__setattr__(self, "text_cleaners", text.cleaners)  # a list from JSON becomes the tuple
        if self.extra_symbols and self.n_symbols < text.n_symbols:
            raise ValueError(f"n_symbols {self.n_symbols} is smaller than the symbol table (148 + "
                             f"{len(self.extra_symbols)} extra_symbols): set n_symbols={text.n_symbols}")
        object.__setattr__(self, "audio", model_audio(self, self.n_mel_channels))

    @property
    def text_frontend(self) -> TextFrontend:
        """What turns text into this model's ids."""
        return TextFrontend(self.text_cleaners, self.extra_symbols)

    @classmethod
    def from_dle(cls, config: dict[str, Any]) -> "Tacotron2Config":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in names})

    def to_dle(self) -> dict[str, Any]:
        """DLE's constructor arguments (the front ends are not among them)."""
        out = asdict(self)
        del out["audio"], out["text_cleaners"], out["extra_symbols"]
        return out


def _precision(dtype):
    """float32 models ask for full float32 matmuls: GPUs would otherwise use TF32 (errors ~1e-3)."""
    return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == F32 else jax.lax.Precision.DEFAULT


def _dense(din, dout, dtype, rngs, bias=True):
    return nnx.Linear(din, dout, use_bias=bias, dtype=dtype, preferred_element_type=F32,
                      precision=_precision(dtype), rngs=rngs)


def _conv(din, dout, k, dtype, rngs, bias=True):
    # torch pads (k-1)/2 on both sides; explicit so even kernels cannot silently shift
    return nnx.Conv(din, dout, (k,), padding=(((k - 1) // 2, (k - 1) // 2),), use_bias=bias, dtype=dtype,
                    preferred_element_type=F32, precision=_precision(dtype), rngs=rngs)


def dropout(x, rate: float, key):
    """Inverted dropout; a no-op for rate 0 or key None (DLE's F.dropout with training=True otherwise)."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def _time_mask(lengths, t):
    return jnp.arange(t)[None, :] < lengths[:, None]


class ConvBN(nnx.Module):
    """Conv1d + BatchNorm1d, DLE's ConvNorm/BatchNorm pair (eval-mode statistics unless `.train()`)."""

    def __init__(self, din, dout, k, dtype, rngs):
        self.conv = _conv(din, dout, k, dtype, rngs)
        # flax momentum is the weight of the old statistic: torch's 0.1 is flax's 0.9
        self.bn = nnx.BatchNorm(dout, use_running_average=True, momentum=0.9, epsilon=1e-5, rngs=rngs)

    def __call__(self, x):
        return self.bn(self.conv(x))


class LSTMCell(nnx.Module):
    """PyTorch-layout LSTM cell: gates (i, f, g, o), separate input and hidden biases."""

    def __init__(self, din, dh, dtype, rngs):
        self.ih = _dense(din, 4 * dh, dtype, rngs)
        self.hh = _dense(dh, 4 * dh, dtype, rngs)

    def __call__(self, gx, h, c):
        """gx = self.ih(x), precomputed by callers that have the whole input sequence."""
        i, f, g, o = jnp.split(gx + self.hh(h), 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        return jax.nn.sigmoid(o) * jnp.tanh(c), c

    def scan(self, x):
        """Runs over (B, T, din) from t=0; returns hidden states (B, T, dh)."""
        b, dh = x.shape[0], self.hh.in_features
        gx = jnp.swapaxes(self.ih(x), 0, 1)

        def step(carry, g):
            h, c = self(g, *carry)
            return (h, c), h

        _, hs = jax.lax.scan(step, (jnp.zeros((b, dh), F32), jnp.zeros((b, dh), F32)), gx)
        return jnp.swapaxes(hs, 0, 1)


def _reverse_within(x, lengths):
    """Reverses each row's first `lengths[b]` steps in place (padding stays at the end)."""
    t = jnp.arange(x.shape[1])[None, :]
    idx = jnp.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)
    return jnp.take_along_axis(x, idx[..., None], axis=1)


class Encoder(nnx.Module):
    def __init__(self, cfg: Tacotron2Config, dtype, rngs):
        e = cfg.encoder_embedding_dim
        self.convs = nnx.List([ConvBN(cfg.symbols_embedding_dim if i == 0 else e, e, cfg.encoder_kernel_size,
                                      dtype, rngs) for i in range(cfg.encoder_n_convolutions)])
        self.lstm_fwd = LSTMCell(e, e // 2, dtype, rngs)
        self.lstm_bwd = LSTMCell(e, e // 2, dtype, rngs)
        self.deterministic = True

    def __call__(self, x, lengths, *, isolate: bool, key=None):
        mask = _time_mask(lengths, x.shape[1])[..., None]
        keys = jax.random.split(key, len(self.convs)) if key is not None and not self.deterministic else None
        for i, conv in enumerate(self.convs):
            if isolate:  # as if the utterance were alone: its convs see zero padding, not pad tokens
                x = jnp.where(mask, x, 0.0)
            x = dropout(jax.nn.relu(conv(x)), 0.5, None if keys is None else keys[i])
        fwd = self.lstm_fwd.scan(x)
        bwd = _reverse_within(self.lstm_bwd.scan(_reverse_within(x, lengths)), lengths)
        return jnp.where(mask, jnp.concatenate([fwd, bwd], axis=-1), 0.0)


class Attention(nnx.Module):
    """Location-sensitive attention; energies, softmax and context in float32."""

    def __init__(self, cfg: Tacotron2Config, dtype, rngs):
        a = cfg.attention_dim
        self.query = _dense(cfg.attention_rnn_dim, a, dtype, rngs, bias=False)
        self.memory = _dense(cfg.encoder_embedding_dim, a, dtype, rngs, bias=False)
        self.v = _dense(a, 1, dtype, rngs, bias=False)
        self.location_conv = _conv(2, cfg.attention_location_n_filters, cfg.attention_location_kernel_size,
                                   dtype, rngs, bias=False)
        self.location_dense = _dense(cfg.attention_location_n_filters, a, dtype, rngs, bias=False)

    def __call__(self, query, memory, processed_memory, weights_cat, mask):
        location = self.location_dense(self.location_conv(weights_cat))
        energies = self.v(jnp.tanh(self.query(query)[:, None, :] + location + processed_memory))[..., 0]
        weights = jax.nn.softmax(jnp.where(mask, energies, -jnp.inf), axis=-1)
        context = jnp.einsum("bt,btd->bd", weights, memory, preferred_element_type=F32,
                             precision=jax.lax.Precision.HIGHEST)
        return context, weights


class DecoderState(NamedTuple):
    attention_h: jax.Array
    attention_c: jax.Array
    decoder_h: jax.Array
    decoder_c: jax.Array
    weights: jax.Array
    weights_cum: jax.Array
    context: jax.Array


class Decoder(nnx.Module):
    def __init__(self, cfg: Tacotron2Config, dtype, rngs):
        e, p = cfg.encoder_embedding_dim, cfg.prenet_dim
        self.cfg = cfg
        self.prenet = nnx.List([_dense(cfg.n_mel_channels, p, dtype, rngs, bias=False),
                                _dense(p, p, dtype, rngs, bias=False)])
        self.attention_rnn = LSTMCell(p + e, cfg.attention_rnn_dim, dtype, rngs)
        self.attention = Attention(cfg, dtype, rngs)
        self.decoder_rnn = LSTMCell(cfg.attention_rnn_dim + e, cfg.decoder_rnn_dim, dtype, rngs)
        self.projection = _dense(cfg.decoder_rnn_dim + e, cfg.n_mel_channels, dtype, rngs)
        self.gate = _dense(cfg.decoder_rnn_dim + e, 1, dtype, rngs)
        self.deterministic = True

    def run_prenet(self, x, rate, keys):
        """keys: None, or a pair of keys (one per layer) broadcastable against x's leading axes."""
        for i, layer in enumerate(self.prenet):
            x = dropout(jax.nn.relu(layer(x)), rate, None if keys is None else keys[i])
        return x

    def initial_state(self, memory) -> DecoderState:
        b, t, e = memory.shape
        z = lambda n: jnp.zeros((b, n), F32)  # noqa: E731
        return DecoderState(z(self.cfg.attention_rnn_dim), z(self.cfg.attention_rnn_dim),
                            z(self.cfg.decoder_rnn_dim), z(self.cfg.decoder_rnn_dim), z(t), z(t), z(e))

    def step(self, s: DecoderState, prenet_out, memory, processed_memory, mask, key=None, window=None):
        """One decoder step -> (state, mel frame (B, 80), gate logit (B,), attention weights (B, T_in)).

        window: None, or K: the attention may only look at symbols from one before to K after the previous
        step's peak (see `attention_window`)."""
        train = key is not None and not self.deterministic
        k_att, k_dec = jax.random.split(key) if train else (None, None)
        cell_in = jnp.concatenate([prenet_out, s.context], axis=-1)
        att_h, att_c = self.attention_rnn(self.attention_rnn.ih(cell_in), s.attention_h, s.attention_c)
        att_h = dropout(att_h, self.cfg.p_attention_dropout, k_att)
        if window is not None:
            mask = mask & attention_window(s.weights, window)
        weights_cat = jnp.stack([s.weights, s.weights_cum], axis=-1)
        context, weights = self.attention(att_h, memory, processed_memory, weights_cat, mask)
        dec_in = jnp.concatenate([att_h, context], axis=-1)
        dec_h, dec_c = self.decoder_rnn(self.decoder_rnn.ih(dec_in), s.decoder_h, s.decoder_c)
        dec_h = dropout(dec_h, self.cfg.p_decoder_dropout, k_dec)
        out = jnp.concatenate([dec_h, context], axis=-1)
        state = DecoderState(att_h, att_c, dec_h, dec_c, weights, s.weights_cum + weights, context)
        return state, self.projection(out), self.gate(out)[:, 0], weights


def attention_window(previous, ahead: int, behind: int = 1):
    """Symbols the attention may look at, given the previous step's weights (B, T_in): from `behind` before to
    `ahead` after their peak (at the first step, when all weights are zero: the first ahead + 1 symbols).

    ESPnet's attention constraint at inference (its defaults: 1 behind, 3 ahead). The peak can then move
    forward at most `ahead` symbols per step, so no word is skipped in one jump, and never falls back more than
    one symbol per step, so the decoder cannot return to an earlier word and read it again. Always includes
    the previous peak, which lies within the sentence, so some symbol is always allowed."""
    peak = jnp.argmax(previous, axis=-1)[:, None]
    pos = jnp.arange(previous.shape[-1])[None, :]
    return (pos >= peak - behind) & (pos <= peak + ahead)


class Postnet(nnx.Module):
    def __init__(self, cfg: Tacotron2Config, dtype, rngs):
        n, c, k = cfg.postnet_n_convolutions, cfg.postnet_embedding_dim, cfg.postnet_kernel_size
        dims = [cfg.n_mel_channels] + [c] * (n - 1) + [cfg.n_mel_channels]
        self.convs = nnx.List([ConvBN(dims[i], dims[i + 1], k, dtype, rngs) for i in range(n)])
        self.deterministic = True

    def __call__(self, x, lengths=None, key=None):
        """x (B, T, 80). With `lengths`, frames at and past lengths[b] act as zero padding for every conv."""
        mask = None if lengths is None else _time_mask(lengths, x.shape[1])[..., None]
        keys = jax.random.split(key, len(self.convs)) if key is not None and not self.deterministic else None
        for i, conv in enumerate(self.convs):
            if mask is not None:
                x = jnp.where(mask, x, 0.0)
            x = conv(x)
            if i < len(self.convs) - 1:
                x = jnp.tanh(x)
            x = dropout(x, 0.5, None if keys is None else keys[i])
        return x if mask is None else jnp.where(mask, x, 0.0)


class Tacotron2(FromCheckpoint, nnx.Module):
    def __init__(self, config: Tacotron2Config = Tacotron2Config(), *, dtype=F32, rngs: nnx.Rngs):
        self.config = config
        self.dtype = jnp.dtype(dtype)
        self.embedding = nnx.Embed(config.n_symbols, config.symbols_embedding_dim, rngs=rngs)
        self.encoder = Encoder(config, dtype, rngs)
        self.decoder = Decoder(config, dtype, rngs)
        self.postnet = Postnet(config, dtype, rngs)

    # -- stages -------------------------------------------------------------------------------------------

    def encode(self, tokens, lengths, *, isolate: bool = True, key=None):
        """tokens (B, T_in) int, lengths (B,) -> encoder outputs (B, T_in, 512), zero past each length."""
        x = self.embedding(jnp.asarray(tokens))
        return self.encoder(x, jnp.asarray(lengths), isolate=isolate, key=key)

    def __call__(self, tokens, lengths, mel_targets, mel_lengths, *, prenet_dropout: float = 0.5, key=None):
        """Teacher forcing, DLE's forward: -> (mel, mel_postnet (B,80,T), gate_logits (B,T), alignments (B,T,T_in)).

        `key` drives the prenet dropout (always on unless prenet_dropout=0) and, in train mode, the other dropouts.
        """
        if prenet_dropout > 0 and key is None:
            raise ValueError("prenet dropout is on (DLE keeps it on always): pass key= or prenet_dropout=0.0")
        k_enc, k_pre, k_dec, k_post = jax.random.split(key, 4) if key is not None else (None,) * 4
        lengths = jnp.asarray(lengths)
        memory = self.encode(tokens, lengths, isolate=False, key=k_enc)
        mask = _time_mask(lengths, memory.shape[1])
        frames = jnp.swapaxes(jnp.asarray(mel_targets, F32), 1, 2)
        b, t, _ = frames.shape
        inputs = jnp.concatenate([jnp.zeros_like(frames[:, :1]), frames[:, :-1]], axis=1)
        pre_keys = None if k_pre is None else jax.random.split(k_pre, 2)
        prenet = jnp.swapaxes(self.decoder.run_prenet(inputs, prenet_dropout, pre_keys), 0, 1)
        processed = self.decoder.attention.memory(memory)
        step_keys = jax.random.split(k_dec, t) if k_dec is not None else None

        def body(state, xs):
            x, k = xs
            state, mel, gate, weights = self.decoder.step(state, x, memory, processed, mask, k)
            return state, (mel, gate, weights)

        _, (mel, gate, align) = jax.lax.scan(body, self.decoder.initial_state(memory), (prenet, step_keys))
        mel, gate, align = jnp.swapaxes(mel, 0, 1), gate.T, jnp.swapaxes(align, 0, 1)
        mel_post = mel + self.postnet(mel, key=k_post)
        if self.config.mask_padding:
            keep = _time_mask(jnp.asarray(mel_lengths), t)
            mel, mel_post = (jnp.where(keep[..., None], m, 0.0) for m in (mel, mel_post))
            gate = jnp.where(keep, gate, 1e3)
        return jnp.swapaxes(mel, 1, 2), jnp.swapaxes(mel_post, 1, 2), gate, align

    def decode(self, memory, lengths, *, max_decoder_steps: int, gate_threshold: float = 0.5,
               early_stopping: bool = True, prenet_dropout: float = 0.5, keys=None, window: int | None = None):
        """Free-running decoder under `lax.while_loop` (jit-able; buffers sized max_decoder_steps).

        Returns dict(mel (B, S, 80) pre-postnet, gate (B, S), alignments (B, S, T_in), mel_lengths (B,) int32,
        n_steps): only the first n_steps of S are written. keys: (B,) per-utterance keys or None. window: the
        attention window (`attention_window`'s `ahead`), or None for none.
        """
        b, t_in, _ = memory.shape
        mask = _time_mask(lengths, t_in)
        processed = self.decoder.attention.memory(memory)
        n_mel = self.config.n_mel_channels

        def prenet(frame, step):
            if keys is None or prenet_dropout == 0.0:
                return self.decoder.run_prenet(frame, 0.0, None)
            # per-row keys: an utterance's dropout masks do not depend on what else is in the batch
            layer_keys = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, step), 2))(keys)
            x = frame
            for i, layer in enumerate(self.decoder.prenet):
                x = jax.vmap(lambda r, k: dropout(r, prenet_dropout, k))(jax.nn.relu(layer(x)), layer_keys[:, i])
            return x

        def cond(c):
            step, _, _, not_finished, *_ = c
            more = step < max_decoder_steps
            return jnp.logical_and(more, jnp.any(not_finished)) if early_stopping else more

        def body(c):
            step, state, frame, not_finished, mel_len, mels, gates, aligns = c
            state, mel, gate, weights = self.decoder.step(state, prenet(frame, step), memory, processed, mask,
                                                          window=window)
            not_finished = not_finished & (jax.nn.sigmoid(gate) <= gate_threshold)
            mel_len = mel_len + not_finished.astype(jnp.int32)
            mels = jax.lax.dynamic_update_index_in_dim(mels, mel, step, axis=1)
            gates = jax.lax.dynamic_update_index_in_dim(gates, gate, step, axis=1)
            aligns = jax.lax.dynamic_update_index_in_dim(aligns, weights, step, axis=1)
            return step + 1, state, mel, not_finished, mel_len, mels, gates, aligns

        init = (jnp.int32(0), self.decoder.initial_state(memory), jnp.zeros((b, n_mel), F32),
                jnp.ones((b,), bool), jnp.zeros((b,), jnp.int32), jnp.zeros((b, max_decoder_steps, n_mel), F32),
                jnp.zeros((b, max_decoder_steps), F32), jnp.zeros((b, max_decoder_steps, t_in), F32))
        n, _, _, _, mel_len, mels, gates, aligns = jax.lax.while_loop(cond, body, init)
        return dict(mel=mels, gate=gates, alignments=aligns, mel_lengths=mel_len, n_steps=n)

    def infer(self, tokens, lengths, *, max_decoder_steps: int | None = None, gate_threshold: float | None = None,
              early_stopping: bool | None = None, prenet_dropout: float = 0.5, key=None,
              attention_window: int | None = None, with_health: bool = False):
        """Text ids -> (mel_postnet (B, 80, T), mel_lengths (B,), alignments (B, T, T_in)), as DLE's infer.

        T is the number of steps the batch ran. Each row is computed as if alone: frames past the ones it
        decoded before stopping (mel_lengths + 1, DLE's own count when run alone) are zero. `key` is one key
        (row b uses fold_in(key, b)) or a (B,) array of per-row keys. max_decoder_steps, gate_threshold and
        early_stopping default to the model's config (max_decoder_steps, gate_threshold, not
        decoder_no_early_stopping). attention_window=K limits each step's attention to the symbols from one
        before to K after the previous step's peak (`jtts.tacotron2.attention_window`).

        with_health=True adds a fourth element: `jtts.health.alignment_health`'s metrics, a dict of (B,) numpy
        arrays, plus "stop": per row "gate" or "max_steps". Computed in the decoder's compiled program.
        """
        tokens = np.asarray(tokens)
        lengths = np.asarray(lengths, np.int32)
        if tokens.ndim != 2 or lengths.shape != tokens.shape[:1]:
            raise ValueError(f"tokens must be (B, T_in) and lengths (B,); got {tokens.shape} and {lengths.shape}")
        if lengths.min() < 1 or lengths.max() > tokens.shape[1]:
            raise ValueError(f"lengths must lie in [1, {tokens.shape[1]}], got {lengths.tolist()}")
        if prenet_dropout > 0 and key is None:
            raise ValueError("prenet dropout is on at inference (as in DLE): pass key= or prenet_dropout=0.0")
        cfg = self.config
        max_decoder_steps = cfg.max_decoder_steps if max_decoder_steps is None else int(max_decoder_steps)
        gate_threshold = cfg.gate_threshold if gate_threshold is None else gate_threshold
        early_stopping = (not cfg.decoder_no_early_stopping) if early_stopping is None else early_stopping
        if max_decoder_steps < 1 or (attention_window is not None and attention_window < 1):
            raise ValueError(f"max_decoder_steps and attention_window must be at least 1, got {max_decoder_steps} "
                             f"and {attention_window}")
        b, t_in = tokens.shape
        keys = None
        if key is not None and prenet_dropout > 0:
            key = as_typed_key(key)
            keys = key if key.shape == (b,) else jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(b))
        padded = np.zeros((b, bucket(t_in)), np.int32)
        padded[:, :t_in] = tokens
        graphdef, state = nnx.split(self)
        out = _infer_decoder(graphdef, state, padded, lengths, keys, max_decoder_steps, float(gate_threshold),
                             bool(early_stopping), float(prenet_dropout),
                             None if attention_window is None else int(attention_window))
        n = int(out["n_steps"])
        alive = jnp.minimum(out["mel_lengths"] + 1, n) if early_stopping else jnp.full((b,), n, jnp.int32)
        t_out = min(bucket(n), max_decoder_steps)
        mel_post = _infer_postnet(graphdef, state, out["mel"][:, :t_out], alive)
        align = jnp.where(_time_mask(alive, n)[..., None], out["alignments"][:, :n, :t_in], 0.0)
        result = (jnp.swapaxes(mel_post[:, :n], 1, 2), out["mel_lengths"], align)
        if not with_health:
            return result
        health = {k: np.asarray(v) for k, v in out["health"].items()}
        health["stop"] = np.where(np.asarray(out["mel_lengths"]) >= max_decoder_steps, "max_steps", "gate")
        return (*result, health)


def as_typed_key(key):
    """Accepts new-style keys (jax.random.key) and legacy uint32 keys (jax.random.PRNGKey)."""
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    return key if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else jax.random.wrap_key_data(key)


def bucket(n: int) -> int:
    """Padded size for a length: 32-step buckets up to 256, then 128: a handful of jit compilations."""
    step = 32 if n <= 256 else 128
    return max(step, -(-n // step) * step)


@functools.partial(jax.jit, static_argnums=(0, 5, 6, 7, 8, 9))
def _infer_decoder(graphdef, state, tokens, lengths, keys, max_steps, threshold, early, prenet_dropout, window):
    from jtts.health import alignment_health

    model = nnx.merge(graphdef, state)
    memory = model.encode(tokens, lengths, isolate=True)
    out = model.decode(memory, lengths, max_decoder_steps=max_steps, gate_threshold=threshold,
                       early_stopping=early, prenet_dropout=prenet_dropout, keys=keys, window=window)
    # health over the steps each row decoded, the one whose gate fired included, whatever early stopping did
    steps = jnp.minimum(out["mel_lengths"] + 1, out["n_steps"])
    out["health"] = alignment_health(out["alignments"], steps, lengths)
    return out


@functools.partial(jax.jit, static_argnums=(0,))
def _infer_postnet(graphdef, state, mel, alive):
    model = nnx.merge(graphdef, state)
    mel = jnp.where(_time_mask(alive, mel.shape[1])[..., None], mel, 0.0)
    return mel + model.postnet(mel, alive)
