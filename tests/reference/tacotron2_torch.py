"""Tacotron 2 in plain PyTorch, laid out so that `state_dict()` has exactly the keys, shapes and order
of NVIDIA DeepLearningExamples' model (DLE), and numerically following DLE's forward/inference.

It exists so the JAX implementation can be tested against a PyTorch model, and DLE-format checkpoints
can be written, without DLE itself. Differences from DLE, all deliberate:
  * the prenet dropout probability is an argument (DLE hard-codes p=0.5 with training=True); with
    p > 0 the same `F.dropout` calls are made in the same order, so a shared seed gives the same masks;
  * batches need not be sorted by length (packing uses enforce_sorted=False);
  * `infer` returns the gate logits as (B, T) and the alignments as (B, T, T_in); decoder-level
    `max_decoder_steps`, `gate_threshold` and early stopping can be overridden per call;
  * no warning print when max_decoder_steps is reached.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# DLE's command-line defaults, which are also the configuration of NVIDIA's published checkpoints.
_NGC_TACOTRON2 = dict(
    mask_padding=False, n_mel_channels=80, n_symbols=148, symbols_embedding_dim=512,
    encoder_kernel_size=5, encoder_n_convolutions=3, encoder_embedding_dim=512,
    attention_rnn_dim=1024, attention_dim=128, attention_location_n_filters=32,
    attention_location_kernel_size=31, n_frames_per_step=1, decoder_rnn_dim=1024, prenet_dim=256,
    max_decoder_steps=2000, gate_threshold=0.5, p_attention_dropout=0.1, p_decoder_dropout=0.1,
    postnet_embedding_dim=512, postnet_kernel_size=5, postnet_n_convolutions=5,
    decoder_no_early_stopping=False,
)


def tacotron2_config(**overrides) -> dict:
    """The full NGC configuration (constructor kwargs), with optional overrides."""
    unknown = set(overrides) - set(_NGC_TACOTRON2)
    if unknown:
        raise TypeError(f"unknown Tacotron2 config keys: {sorted(unknown)}")
    return {**_NGC_TACOTRON2, **overrides}


def tacotron2_small_config(**overrides) -> dict:
    """A small configuration for fast tests; every structural feature of the full model is kept."""
    small = dict(symbols_embedding_dim=64, encoder_embedding_dim=64, attention_rnn_dim=96,
                 decoder_rnn_dim=96, prenet_dim=32, attention_dim=24, attention_location_n_filters=8,
                 attention_location_kernel_size=7, postnet_embedding_dim=64)
    return tacotron2_config(**{**small, **overrides})


class _Linear(nn.Module):
    """nn.Linear one level down, so its parameters are named `<name>.linear_layer.*` like DLE's."""

    def __init__(self, in_dim, out_dim, bias=True):
        super().__init__()
        self.linear_layer = nn.Linear(in_dim, out_dim, bias=bias)

    def forward(self, x):
        return self.linear_layer(x)


class _Conv(nn.Module):
    """'same'-padded nn.Conv1d one level down (`<name>.conv.*`)."""

    def __init__(self, in_ch, out_ch, kernel_size, bias=True):
        super().__init__()
        self.conv = nn.Conv1d(in_ch, out_ch, kernel_size, padding=(kernel_size - 1) // 2, bias=bias)

    def forward(self, x):
        return self.conv(x)


def _conv_bn(in_ch, out_ch, kernel_size):
    # Sequential indices give DLE's `.0.conv.*` (conv) and `.1.*` (BatchNorm) names.
    return nn.Sequential(_Conv(in_ch, out_ch, kernel_size), nn.BatchNorm1d(out_ch))


def _length_mask(lengths, max_len):
    """True at padded positions (t >= length)."""
    ids = torch.arange(max_len, device=lengths.device)
    return ids[None, :] >= lengths[:, None]


class Encoder(nn.Module):
    def __init__(self, n_convolutions, embedding_dim, kernel_size):
        super().__init__()
        self.convolutions = nn.ModuleList(
            [_conv_bn(embedding_dim, embedding_dim, kernel_size) for _ in range(n_convolutions)])
        self.lstm = nn.LSTM(embedding_dim, embedding_dim // 2, 1, batch_first=True, bidirectional=True)

    def forward(self, x, lengths, isolate=False):
        """x: (B, E, T) embedded tokens -> (B, max(lengths), E); padded steps are 0.

        isolate=True zeroes each row past its length before every conv: the row then computes exactly what
        it would alone (DLE's batched encoder lets the convs see the pad tokens' embeddings)."""
        pad = _length_mask(lengths.to(x.device), x.shape[2])[:, None, :]
        for conv in self.convolutions:
            if isolate:
                x = x.masked_fill(pad, 0.0)
            x = F.dropout(F.relu(conv(x)), 0.5, self.training)
        packed = nn.utils.rnn.pack_padded_sequence(
            x.transpose(1, 2), lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True)
        return out


class Prenet(nn.Module):
    def __init__(self, in_dim, dim):
        super().__init__()
        self.layers = nn.ModuleList([_Linear(in_dim, dim, bias=False), _Linear(dim, dim, bias=False)])

    def forward(self, x, p):
        for layer in self.layers:
            x = F.relu(layer(x))
            if p > 0:  # DLE keeps this dropout on at inference too, hence training=True
                x = F.dropout(x, p, training=True)
        return x


class LocationLayer(nn.Module):
    def __init__(self, n_filters, kernel_size, attention_dim):
        super().__init__()
        self.location_conv = _Conv(2, n_filters, kernel_size, bias=False)
        self.location_dense = _Linear(n_filters, attention_dim, bias=False)

    def forward(self, weights_cat):  # (B, 2, T_in) -> (B, T_in, A)
        return self.location_dense(self.location_conv(weights_cat).transpose(1, 2))


class Attention(nn.Module):
    def __init__(self, rnn_dim, embedding_dim, attention_dim, n_filters, kernel_size):
        super().__init__()
        self.query_layer = _Linear(rnn_dim, attention_dim, bias=False)
        self.memory_layer = _Linear(embedding_dim, attention_dim, bias=False)
        self.v = _Linear(attention_dim, 1, bias=False)
        self.location_layer = LocationLayer(n_filters, kernel_size, attention_dim)

    def forward(self, query, memory, processed_memory, weights_cat, mask):
        # The sum is formed in DLE's order (query + location) + memory, for bit-level agreement.
        energies = self.v(torch.tanh(self.query_layer(query.unsqueeze(1))
                                     + self.location_layer(weights_cat) + processed_memory)).squeeze(2)
        weights = F.softmax(energies.masked_fill(mask, float("-inf")), dim=1)
        context = torch.bmm(weights.unsqueeze(1), memory).squeeze(1)
        return context, weights


class Decoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        enc = cfg["encoder_embedding_dim"]
        self.n_mel = cfg["n_mel_channels"]
        self.step_dim = cfg["n_mel_channels"] * cfg["n_frames_per_step"]
        self.attention_rnn_dim = cfg["attention_rnn_dim"]
        self.decoder_rnn_dim = cfg["decoder_rnn_dim"]
        self.p_attention_dropout = cfg["p_attention_dropout"]
        self.p_decoder_dropout = cfg["p_decoder_dropout"]
        self.prenet = Prenet(self.step_dim, cfg["prenet_dim"])
        self.attention_rnn = nn.LSTMCell(cfg["prenet_dim"] + enc, cfg["attention_rnn_dim"])
        self.attention_layer = Attention(cfg["attention_rnn_dim"], enc, cfg["attention_dim"],
                                         cfg["attention_location_n_filters"],
                                         cfg["attention_location_kernel_size"])
        self.decoder_rnn = nn.LSTMCell(cfg["attention_rnn_dim"] + enc, cfg["decoder_rnn_dim"])
        self.linear_projection = _Linear(cfg["decoder_rnn_dim"] + enc, self.step_dim)
        self.gate_layer = _Linear(cfg["decoder_rnn_dim"] + enc, 1)

    def initial_state(self, memory):
        """(att_h, att_c, dec_h, dec_c, att_weights, att_weights_cum, context), all zeros."""
        B, T_in, E = memory.shape
        z = lambda *s: memory.new_zeros(*s)  # noqa: E731
        return (z(B, self.attention_rnn_dim), z(B, self.attention_rnn_dim),
                z(B, self.decoder_rnn_dim), z(B, self.decoder_rnn_dim), z(B, T_in), z(B, T_in), z(B, E))

    def step(self, prenet_out, state, memory, processed_memory, mask):
        """One decoder step -> (mel (B, step_dim), gate logit (B, 1), attention weights (B, T_in), state)."""
        att_h, att_c, dec_h, dec_c, w, w_cum, ctx = state
        att_h, att_c = self.attention_rnn(torch.cat((prenet_out, ctx), -1), (att_h, att_c))
        att_h = F.dropout(att_h, self.p_attention_dropout, self.training)
        weights_cat = torch.cat((w.unsqueeze(1), w_cum.unsqueeze(1)), dim=1)
        ctx, w = self.attention_layer(att_h, memory, processed_memory, weights_cat, mask)
        w_cum = w_cum + w
        dec_h, dec_c = self.decoder_rnn(torch.cat((att_h, ctx), -1), (dec_h, dec_c))
        dec_h = F.dropout(dec_h, self.p_decoder_dropout, self.training)
        hc = torch.cat((dec_h, ctx), dim=1)
        return (self.linear_projection(hc), self.gate_layer(hc), w,
                (att_h, att_c, dec_h, dec_c, w, w_cum, ctx))

    def to_mel(self, steps):
        """List of (B, step_dim) -> (B, n_mel, T * n_frames_per_step)."""
        # (B, T, step_dim) contiguous before the final transpose: DLE's memory layout, which fixes the
        # summation order of reductions over the result (the losses) to the last bit.
        mel = torch.stack(steps, dim=1)
        return mel.reshape(mel.shape[0], -1, self.n_mel).transpose(1, 2)


class Postnet(nn.Module):
    def __init__(self, n_mel, dim, kernel_size, n_convolutions):
        super().__init__()
        chans = [n_mel] + [dim] * (n_convolutions - 1) + [n_mel]
        self.convolutions = nn.ModuleList(
            [_conv_bn(chans[i], chans[i + 1], kernel_size) for i in range(n_convolutions)])

    def forward(self, x):
        last = len(self.convolutions) - 1
        for i, conv in enumerate(self.convolutions):
            x = conv(x)
            if i < last:
                x = torch.tanh(x)
            x = F.dropout(x, 0.5, self.training)
        return x


class Tacotron2(nn.Module):
    def __init__(self, **config):
        super().__init__()
        cfg = tacotron2_config(**config)
        self.config = cfg
        self.embedding = nn.Embedding(cfg["n_symbols"], cfg["symbols_embedding_dim"])
        self.encoder = Encoder(cfg["encoder_n_convolutions"], cfg["encoder_embedding_dim"],
                               cfg["encoder_kernel_size"])
        self.decoder = Decoder(cfg)
        self.postnet = Postnet(cfg["n_mel_channels"], cfg["postnet_embedding_dim"],
                               cfg["postnet_kernel_size"], cfg["postnet_n_convolutions"])

    def encode(self, tokens, lengths, isolate=False):
        """tokens (B, T_in) int64, lengths (B,) -> encoder outputs (B, max(lengths), E)."""
        return self.encoder(self.embedding(tokens).transpose(1, 2), lengths, isolate)

    def forward(self, tokens, lengths, mels, output_lengths=None, prenet_dropout=0.0):
        """Teacher forcing. mels (B, n_mel, T) -> (mel, mel_postnet, gate_logits (B, T), alignments (B, T, T_in))."""
        memory = self.encode(tokens, lengths)
        dec = self.decoder
        B = memory.shape[0]
        frames = mels.transpose(1, 2).reshape(B, -1, dec.step_dim).transpose(0, 1)  # (T, B, step_dim)
        go = memory.new_zeros(1, B, dec.step_dim)
        # The prenet sees all T+1 inputs in one call, as in DLE (same dropout draws, same GEMM shapes).
        inputs = dec.prenet(torch.cat((go, frames), dim=0), prenet_dropout)
        mask = _length_mask(lengths.to(memory.device), memory.shape[1])
        processed = dec.attention_layer.memory_layer(memory)
        state = dec.initial_state(memory)
        mel_steps, gates, aligns = [], [], []
        for t in range(frames.shape[0]):
            m, g, w, state = dec.step(inputs[t], state, memory, processed, mask)
            mel_steps.append(m)
            gates.append(g[:, 0])
            aligns.append(w)
        mel = dec.to_mel(mel_steps)
        gate = torch.stack(gates, dim=1)
        align = torch.stack(aligns, dim=1)
        mel_post = mel + self.postnet(mel)
        if self.config["mask_padding"] and output_lengths is not None:
            # DLE's parse_output: zero both mels past each length, gate logits there become 1e3.
            pad = _length_mask(output_lengths.to(mel.device), mel.shape[2])
            mel = mel.masked_fill(pad[:, None, :], 0.0)
            mel_post = mel_post.masked_fill(pad[:, None, :], 0.0)
            gate = gate.masked_fill(pad, 1e3)
        return mel, mel_post, gate, align

    @torch.no_grad()
    def infer(self, tokens, lengths, max_decoder_steps=None, gate_threshold=None, early_stopping=None,
              prenet_dropout=0.0, isolate=False):
        """Free-running decoding with DLE's loop semantics (None -> the value in self.config).

        Returns a dict: mel and mel_postnet (B, n_mel, T), gate_logits (B, T), alignments (B, T, T_in),
        mel_lengths (B,) int32. T is the number of steps run for the whole batch. isolate: see Encoder.
        """
        cfg = self.config
        max_steps = cfg["max_decoder_steps"] if max_decoder_steps is None else max_decoder_steps
        threshold = cfg["gate_threshold"] if gate_threshold is None else gate_threshold
        if early_stopping is None:
            early_stopping = not cfg["decoder_no_early_stopping"]
        memory = self.encode(tokens, lengths, isolate)
        dec = self.decoder
        B = memory.shape[0]
        mask = _length_mask(lengths.to(memory.device), memory.shape[1])
        processed = dec.attention_layer.memory_layer(memory)
        state = dec.initial_state(memory)
        frame = memory.new_zeros(B, dec.step_dim)
        mel_lengths = torch.zeros(B, dtype=torch.int32, device=memory.device)
        not_finished = torch.ones(B, dtype=torch.int32, device=memory.device)
        mel_steps, gates, aligns = [], [], []
        while True:
            m, g, w, state = dec.step(dec.prenet(frame, prenet_dropout), state, memory, processed, mask)
            mel_steps.append(m)
            gates.append(g[:, 0])
            aligns.append(w)
            # Length counts the steps before the gate first fires (a gate firing at step 0 gives 0).
            not_finished = not_finished * (torch.sigmoid(g[:, 0]) <= threshold).to(torch.int32)
            mel_lengths += not_finished
            if early_stopping and int(not_finished.sum()) == 0:
                break
            if len(mel_steps) == max_steps:
                break
            frame = m
        mel = dec.to_mel(mel_steps)
        return dict(mel=mel, mel_postnet=mel + self.postnet(mel), gate_logits=torch.stack(gates, dim=1),
                    alignments=torch.stack(aligns, dim=1), mel_lengths=mel_lengths)

    @staticmethod
    def loss(outputs, mel_target, gate_target):
        """DLE's training loss: MSE(mel) + MSE(postnet mel) + BCEWithLogits(gate), means over padded tensors."""
        mel, mel_post, gate = outputs[0], outputs[1], outputs[2]
        return (F.mse_loss(mel, mel_target) + F.mse_loss(mel_post, mel_target)
                + F.binary_cross_entropy_with_logits(gate.reshape(-1, 1), gate_target.reshape(-1, 1)))


def guided_attention_loss(align, token_lengths, mel_lengths, g: float = 0.2):
    """Tachibana et al. 2017's diagonal prior, the term jtts' `--guided-attention` adds (DLE has none): the mean
    over valid (step, symbol) cells of A * (1 - exp(-(n/N - t/T)^2 / (2 g^2))). align (B, T_out, T_in)."""
    _, t_out, t_in = align.shape
    n_len = token_lengths.clamp(min=1).to(torch.float32)[:, None, None]
    t_len = mel_lengths.clamp(min=1).to(torch.float32)[:, None, None]
    n = torch.arange(t_in, dtype=torch.float32)[None, None, :]
    t = torch.arange(t_out, dtype=torch.float32)[None, :, None]
    w = 1.0 - torch.exp(-((n / n_len - t / t_len) ** 2) / (2.0 * g * g))
    valid = (t < mel_lengths[:, None, None]) & (n < token_lengths[:, None, None])
    return torch.where(valid, align * w, 0.0).sum() / valid.sum().clamp(min=1)
