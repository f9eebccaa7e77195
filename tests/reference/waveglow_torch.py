"""WaveGlow and its denoiser in plain PyTorch, with NVIDIA DeepLearningExamples' (DLE) state-dict layout
and numerics, for parity tests and for writing DLE-format checkpoints without DLE.

Layout: `upsample.*`, `WN.{k}.{in_layers,res_skip_layers,cond_layers}.{i}.*`, `WN.{k}.start.*`,
`WN.{k}.end.{weight,bias}`, `convinv.{k}.conv.weight`. Weight-normed convolutions store either
`weight_g`/`weight_v` (style "old", what DLE's checkpoints hold) or
`parametrizations.weight.original0`/`original1` (style "new", torch's parametrization API).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.signal import get_window
from torch import nn
from torch.nn import functional as F

_NGC_WAVEGLOW = dict(n_mel_channels=80, n_flows=12, n_group=8, n_early_every=4, n_early_size=2,
                     WN_config=dict(n_layers=8, n_channels=256, kernel_size=3))


def waveglow_config(n_channels=256, **overrides) -> dict:
    """NGC configuration (WN with 256 or 512 channels), with optional top-level overrides."""
    cfg = {**_NGC_WAVEGLOW, "WN_config": {**_NGC_WAVEGLOW["WN_config"], "n_channels": n_channels}}
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise TypeError(f"unknown WaveGlow config keys: {sorted(unknown)}")
    return {**cfg, **overrides}


def waveglow_small_config(**overrides) -> dict:
    """Small but structurally complete: 12 flows with early outputs every 4 flows, WN 4 layers x 32 channels."""
    return waveglow_config(**{"WN_config": dict(n_layers=4, n_channels=32, kernel_size=3), **overrides})


def _normed_weight(v, g):
    # torch's own weight-norm kernel (norm over all dims but 0), the one both of torch's weight-norm
    # APIs call, so "old" and "new" style give bit-identical weights.
    return torch._weight_norm(v, g, 0)


class WNConv1d(nn.Module):
    """Conv1d with weight normalisation stored as `bias`, `weight_g`, `weight_v` (torch's legacy names)."""

    def __init__(self, in_ch, out_ch, kernel_size=1, dilation=1, padding=0):
        super().__init__()
        init = nn.Conv1d(in_ch, out_ch, kernel_size)
        # Registered in the order torch's legacy weight_norm leaves them: bias, weight_g, weight_v.
        self.bias = nn.Parameter(init.bias.detach().clone())
        self.weight_g = nn.Parameter(init.weight.detach().norm(dim=(1, 2), keepdim=True))
        self.weight_v = nn.Parameter(init.weight.detach().clone())
        self.dilation, self.padding = dilation, padding

    @property
    def weight(self):
        return _normed_weight(self.weight_v, self.weight_g)

    def forward(self, x):
        return F.conv1d(x, self.weight, self.bias, padding=self.padding, dilation=self.dilation)


def _wn_conv(style, in_ch, out_ch, kernel_size=1, dilation=1, padding=0):
    if style == "old":
        return WNConv1d(in_ch, out_ch, kernel_size, dilation, padding)
    if style == "new":
        conv = nn.Conv1d(in_ch, out_ch, kernel_size, dilation=dilation, padding=padding)
        return nn.utils.parametrizations.weight_norm(conv, name="weight", dim=0)
    raise ValueError(f"weight_norm_style must be 'old' or 'new', not {style!r}")


class Invertible1x1Conv(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv1d(c, c, kernel_size=1, bias=False)
        w = torch.linalg.qr(torch.randn(c, c))[0]
        if torch.det(w) < 0:  # logdet needs a positive determinant
            w[:, 0] = -w[:, 0]
        self.conv.weight.data.copy_(w[:, :, None])

    def forward(self, z):
        B, _, n_groups = z.shape
        # log|det W| in float32 whatever the model dtype, times the number of columns it acts on.
        log_det = B * n_groups * torch.logdet(self.conv.weight[:, :, 0].unsqueeze(0).float()).squeeze()
        return self.conv(z), log_det

    def inverse(self, z):
        w = self.conv.weight[:, :, 0]
        w_inv = w.float().inverse().to(w.dtype)  # inverted in float32, as DLE does once and caches
        return F.conv1d(z, w_inv[:, :, None])


class WN(nn.Module):
    """The coupling network: non-causal WaveNet with gated tanh units, one conditioning conv per layer."""

    def __init__(self, n_in, n_cond, n_layers, n_channels, kernel_size, style="old"):
        super().__init__()
        assert kernel_size % 2 == 1 and n_channels % 2 == 0
        self.n_layers, self.n_channels = n_layers, n_channels
        # Attribute order fixes DLE's state-dict order: the three lists, then start, then end.
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        self.cond_layers = nn.ModuleList()
        self.start = _wn_conv(style, n_in, n_channels)
        self.end = nn.Conv1d(n_channels, 2 * n_in, 1)
        nn.init.zeros_(self.end.weight)  # zero at construction, as in DLE: the coupling starts as identity
        nn.init.zeros_(self.end.bias)
        for i in range(n_layers):
            d = 2 ** i
            self.in_layers.append(_wn_conv(style, n_channels, 2 * n_channels, kernel_size, d,
                                           d * (kernel_size - 1) // 2))
            self.cond_layers.append(_wn_conv(style, n_cond, 2 * n_channels))
            out = 2 * n_channels if i < n_layers - 1 else n_channels  # last layer: skip part only
            self.res_skip_layers.append(_wn_conv(style, n_channels, out))

    def forward(self, audio, spect):
        C = self.n_channels
        audio = self.start(audio)
        output = 0
        for i in range(self.n_layers):
            a = self.in_layers[i](audio) + self.cond_layers[i](spect)
            acts = torch.tanh(a[:, :C]) * torch.sigmoid(a[:, C:])
            rs = self.res_skip_layers[i](acts)
            if i < self.n_layers - 1:
                audio = rs[:, :C] + audio
                output = output + rs[:, C:]
            else:
                output = output + rs
        return self.end(output)


class WaveGlow(nn.Module):
    def __init__(self, n_mel_channels=80, n_flows=12, n_group=8, n_early_every=4, n_early_size=2,
                 WN_config=None, weight_norm_style="old"):
        super().__init__()
        assert n_group % 2 == 0
        wn_cfg = dict(WN_config or _NGC_WAVEGLOW["WN_config"])
        self.config = dict(n_mel_channels=n_mel_channels, n_flows=n_flows, n_group=n_group,
                           n_early_every=n_early_every, n_early_size=n_early_size, WN_config=wn_cfg)
        self.n_mel, self.n_flows, self.n_group = n_mel_channels, n_flows, n_group
        self.n_early_every, self.n_early_size = n_early_every, n_early_size
        self.upsample = nn.ConvTranspose1d(n_mel_channels, n_mel_channels, 1024, stride=256)
        self.WN = nn.ModuleList()
        self.convinv = nn.ModuleList()
        remaining = n_group
        for k in range(n_flows):
            if self._early_output(k):
                remaining -= n_early_size
            self.convinv.append(Invertible1x1Conv(remaining))
            self.WN.append(WN(remaining // 2, n_mel_channels * n_group, style=weight_norm_style, **wn_cfg))
        self.n_remaining_channels = remaining

    def _early_output(self, k):
        """Whether n_early_size channels leave the flow just before flow k (forward direction)."""
        return k > 0 and k % self.n_early_every == 0

    def _group_spect(self, spect):
        """(B, n_mel, T) -> (B, n_mel * n_group, T // n_group); channel index = mel * n_group + j."""
        B, M, T = spect.shape
        G = self.n_group
        s = spect[:, :, : T // G * G].reshape(B, M, T // G, G).permute(0, 2, 1, 3)
        return s.reshape(B, T // G, M * G).permute(0, 2, 1)

    def forward(self, spect, audio):
        """Training direction. spect (B, n_mel, F), audio (B, T) -> (z (B, n_group, T / n_group), log_s list, log_det_W list)."""
        spect = self.upsample(spect)
        assert spect.shape[2] >= audio.shape[1]
        spect = self._group_spect(spect[:, :, : audio.shape[1]])
        B = audio.shape[0]
        audio = audio.reshape(B, -1, self.n_group).permute(0, 2, 1)
        early, log_s_list, log_det_list = [], [], []
        for k in range(self.n_flows):
            if self._early_output(k):
                early.append(audio[:, : self.n_early_size])
                audio = audio[:, self.n_early_size:]
            audio, log_det = self.convinv[k](audio)
            log_det_list.append(log_det)
            h = audio.shape[1] // 2
            out = self.WN[k](audio[:, :h], spect)
            log_s, b = out[:, h:], out[:, :h]
            audio = torch.cat([audio[:, :h], torch.exp(log_s) * audio[:, h:] + b], 1)
            log_s_list.append(log_s)
        early.append(audio)
        return torch.cat(early, 1), log_s_list, log_det_list

    @torch.no_grad()
    def infer(self, spect, sigma=0.9, z=None, sigma_on_early=False):
        """Inverse direction: spect (B, n_mel, F) -> audio (B, 256 * F).

        z=None: noise is drawn with torch.randn in the order of DLE's `infer` (all of it times sigma).
        z given, shape (B, n_group, 256 * F / n_group): consumed in the order of DLE's `infer_onnx`:
        z[:, :n_remaining] (times sigma) first, then the next n_early_size channels at each early-output
        point. DLE's `infer_onnx` does NOT multiply those later chunks by sigma; sigma_on_early=True
        does (which makes z-given inference equal to `infer` fed the same noise).
        """
        spect = self.upsample(spect)
        cut = self.upsample.kernel_size[0] - self.upsample.stride[0]  # ConvTranspose tail, 768 samples
        spect = self._group_spect(spect[:, :, :-cut])
        B, _, T = spect.shape
        if z is None:
            audio = sigma * torch.randn(B, self.n_remaining_channels, T, device=spect.device).to(spect.dtype)
            rest = None
        else:
            assert z.shape == (B, self.n_group, T), (z.shape, (B, self.n_group, T))
            audio = sigma * z[:, : self.n_remaining_channels]
            rest = z[:, self.n_remaining_channels:]
        for k in reversed(range(self.n_flows)):
            h = audio.shape[1] // 2
            out = self.WN[k](audio[:, :h], spect)
            s, b = out[:, h:], out[:, :h]
            audio = torch.cat([audio[:, :h], (audio[:, h:] - b) / torch.exp(s)], 1)
            audio = self.convinv[k].inverse(audio)
            if self._early_output(k):
                if rest is None:
                    e = sigma * torch.randn(B, self.n_early_size, T, device=spect.device).to(spect.dtype)
                else:
                    e, rest = rest[:, : self.n_early_size], rest[:, self.n_early_size:]
                    if sigma_on_early:
                        e = sigma * e
                audio = torch.cat((e, audio), 1)
        return audio.permute(0, 2, 1).reshape(B, -1)

    @staticmethod
    def loss(z, log_s_list, log_det_W_list, sigma=1.0):
        """DLE's loss: (sum z^2 / (2 sigma^2) - sum log_s - sum log_det_W) / z.numel()."""
        log_s_total = sum(torch.sum(ls) for ls in log_s_list)
        log_det_total = sum(log_det_W_list)
        loss = torch.sum(z * z) / (2 * sigma * sigma) - log_s_total - log_det_total
        return loss / (z.shape[0] * z.shape[1] * z.shape[2])


class STFT(nn.Module):
    """STFT / inverse STFT as 1-D convolutions with a windowed Fourier basis (DLE's numerics).

    The forward basis is the real and imaginary parts of the first n_fft/2+1 rows of the DFT matrix;
    the inverse basis is the pseudo-inverse of (n_fft/hop times) that matrix; both windowed (periodic
    Hann, centre-padded to n_fft) and rounded to float32.
    """

    def __init__(self, filter_length=1024, hop_length=256, win_length=1024):
        super().__init__()
        n = self.filter_length = filter_length
        self.hop_length, self.win_length = hop_length, win_length
        cut = n // 2 + 1
        dft = np.fft.fft(np.eye(n))[:cut]  # float64 DFT rows, rounded to float32 below
        basis = np.concatenate([dft.real, dft.imag])  # (2 * cut, n)
        inverse = np.linalg.pinv(n / hop_length * basis).T.astype(np.float32)
        assert n >= win_length
        win = np.zeros(n)
        off = (n - win_length) // 2
        win[off:off + win_length] = get_window("hann", win_length, fftbins=True)
        win32 = torch.from_numpy(win).float()
        self.register_buffer("forward_basis", torch.from_numpy(basis).float()[:, None, :] * win32)
        self.register_buffer("inverse_basis", torch.from_numpy(inverse)[:, None, :] * win32)
        self._win_sq = win ** 2  # float64, as the envelope below is accumulated from it

    def transform(self, x):
        """x (B, T) -> magnitude, phase, each (B, n_fft/2+1, T // hop + 1)."""
        pad = self.filter_length // 2
        x = F.pad(x[:, None, :], (pad, pad), mode="reflect")
        spec = F.conv1d(x, self.forward_basis, stride=self.hop_length)
        cut = self.filter_length // 2 + 1
        re, im = spec[:, :cut], spec[:, cut:]
        return torch.sqrt(re ** 2 + im ** 2), torch.atan2(im, re)

    def _window_sumsquare(self, n_frames):
        # Accumulated into float32, one frame at a time (each add rounded to float32), like librosa 0.6.
        n, hop = self.filter_length, self.hop_length
        total = n + hop * (n_frames - 1)
        env = np.zeros(total, dtype=np.float32)
        for i in range(n_frames):
            a = i * hop
            env[a:min(total, a + n)] += self._win_sq[:max(0, min(n, total - a))]
        return env

    def inverse(self, magnitude, phase):
        """-> (B, 1, hop * (n_frames - 1)): the signal without the n_fft/2 padding at either end."""
        x = torch.cat([magnitude * torch.cos(phase), magnitude * torch.sin(phase)], dim=1)
        # conv_transpose2d on a trailing unit axis, the same kernel DLE calls, for bit-level agreement.
        y = F.conv_transpose2d(x.unsqueeze(-1), self.inverse_basis.unsqueeze(-1),
                               stride=(self.hop_length, 1)).squeeze(-1)
        env = self._window_sumsquare(magnitude.shape[-1])
        idx = torch.from_numpy(np.nonzero(env > np.finfo(np.float32).tiny)[0]).to(y.device)
        y[:, :, idx] /= torch.from_numpy(env).to(y.device, y.dtype)[idx]
        y = y * (float(self.filter_length) / self.hop_length)
        pad = self.filter_length // 2
        return y[:, :, pad:-pad]


class Denoiser(nn.Module):
    """Subtracts WaveGlow's own bias spectrum (its output for an all-zero mel at sigma 0) from audio."""

    def __init__(self, waveglow, filter_length=1024, n_overlap=4, win_length=1024):
        super().__init__()
        p = waveglow.upsample.weight
        self.stft = STFT(filter_length, filter_length // n_overlap, win_length).to(p.device)
        mel = torch.zeros((1, waveglow.n_mel, 88), dtype=p.dtype, device=p.device)
        with torch.no_grad():
            # Zero noise: the same values as DLE's sigma=0 draw (0 * randn), without touching the RNG.
            z = mel.new_zeros(1, waveglow.n_group, 88 * 256 // waveglow.n_group)
            bias_audio = waveglow.infer(mel, sigma=0.0, z=z).float()
            bias_spec, _ = self.stft.transform(bias_audio)
        self.register_buffer("bias_spec", bias_spec[:, :, :1])  # first frame, (1, n_fft/2+1, 1)

    def forward(self, audio, strength=0.1):
        """audio (B, T) -> (B, hop * (T // hop)): DLE returns (B, 1, ...); the unit axis is dropped here."""
        mag, phase = self.stft.transform(audio)
        mag = torch.clamp(mag - self.bias_spec * strength, 0.0)
        return self.stft.inverse(mag, phase)[:, 0]
