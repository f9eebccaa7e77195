"""PyTorch reference for jtts.audio: the STFT as NVIDIA's Tacotron 2 code computes it.

Forward: a strided conv1d of the reflect-padded signal with the windowed real/imaginary DFT rows.
Inverse: conv_transpose1d with the windowed pseudo-inverse of (n_fft / hop) times those rows, then
division by the window's overlap-added square where that is not ~0, times n_fft / hop, and half a
frame trimmed from each end. Both bases are built in float64 and used in float32, as NVIDIA's are.
It shares no code with jtts.audio (which uses FFTs), so agreement between the two means something.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def periodic_hann(n_fft: int, win: int) -> np.ndarray:
    """float64 periodic Hann of length win, zero-padded on both sides to n_fft."""
    w = np.hanning(win + 1)[:-1]  # the symmetric window of win+1 points, last dropped: periodic
    left = (n_fft - win) // 2
    return np.pad(w, (left, n_fft - win - left))


class ConvSTFT:
    def __init__(self, n_fft: int = 1024, hop: int = 256, win: int = 1024):
        self.n_fft, self.hop, self.win = n_fft, hop, win
        bins = n_fft // 2 + 1
        k = np.arange(bins)[:, None]
        n = np.arange(n_fft)[None, :]
        angle = -2.0 * np.pi * k * n / n_fft
        dft = np.concatenate([np.cos(angle), np.sin(angle)])  # (2 * bins, n_fft): rows of Re, Im
        window = torch.from_numpy(periodic_hann(n_fft, win)).float()
        self.window64 = periodic_hann(n_fft, win)
        self.fwd = torch.from_numpy(dft).float()[:, None, :] * window
        inv = np.linalg.pinv(n_fft / hop * dft).T  # (2 * bins, n_fft)
        self.inv = torch.from_numpy(inv.astype(np.float32))[:, None, :] * window

    def transform(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) float32 -> magnitude, phase, each (B, n_fft // 2 + 1, 1 + T // hop)."""
        pad = self.n_fft // 2
        xp = F.pad(x[:, None, :], (pad, pad), mode="reflect")
        out = F.conv1d(xp, self.fwd, stride=self.hop)
        bins = self.n_fft // 2 + 1
        re, im = out[:, :bins], out[:, bins:]
        return torch.sqrt(re ** 2 + im ** 2), torch.atan2(im, re)

    def window_sumsquare(self, n_frames: int) -> np.ndarray:
        """Squared window overlap-added over n_frames frames, accumulated in float32 frame by frame."""
        total = np.zeros(self.n_fft + self.hop * (n_frames - 1), np.float32)
        sq = self.window64 ** 2
        for i in range(n_frames):
            total[i * self.hop:i * self.hop + self.n_fft] += sq
        return total

    def inverse(self, magnitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        """(B, bins, F) -> (B, (F - 1) * hop) float32."""
        coeffs = torch.cat([magnitude * torch.cos(phase), magnitude * torch.sin(phase)], dim=1)
        y = F.conv_transpose1d(coeffs, self.inv, stride=self.hop)[:, 0]
        wss = self.window_sumsquare(magnitude.shape[-1])
        keep = torch.from_numpy(np.flatnonzero(wss > np.finfo(np.float32).tiny))
        y[:, keep] /= torch.from_numpy(wss)[keep]
        y = y * (self.n_fft / self.hop)
        pad = self.n_fft // 2
        return y[:, pad:y.shape[-1] - pad]


def log_mel(x: torch.Tensor, mel_basis: np.ndarray, stft: ConvSTFT | None = None) -> torch.Tensor:
    """(B, T) float32 audio -> (B, n_mels, frames) log(max(mel_basis @ |STFT|, 1e-5))."""
    magnitude, _ = (stft or ConvSTFT()).transform(x)
    mel = torch.matmul(torch.from_numpy(np.array(mel_basis, np.float32)), magnitude)
    return torch.log(torch.clamp(mel, min=1e-5))
