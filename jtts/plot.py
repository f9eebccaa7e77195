"""The picture Tacotron 2 users judge a model by: the mel spectrogram above the attention alignment.

A healthy model shows one clean diagonal per sentence in the alignment; a blurred or broken diagonal means
the decoder lost its place in the text (mumbling, skipped or repeated words). Drawn with matplotlib's Agg
canvas directly, so no GUI backend or pyplot global state is involved.
"""
from __future__ import annotations

import numpy as np

from jtts.files import atomic_write


def plot_utterance(path, mel: np.ndarray, alignments: list[np.ndarray], title: str = "", dpi: int = 100) -> None:
    """Write a PNG: mel (80, frames) on top, the alignments (frames_j, symbols_j) below, one block per sentence
    placed along the diagonal. Written under a temporary name and renamed, like the WAV files."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    frames = max(mel.shape[1], 1)
    width = float(np.clip(frames / 60, 6, 24))
    fig = Figure(figsize=(width, 6.5), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(1, 1.2))
    im = top.imshow(mel, origin="lower", aspect="auto", interpolation="none", cmap="magma",
                    extent=(0, mel.shape[1], 0, mel.shape[0]))
    top.set_ylabel("mel channel")
    top.set_title(title if len(title) <= 100 else title[:97] + "...", fontsize=9, loc="left")
    fig.colorbar(im, ax=top, label="log energy", pad=0.01)

    bottom.set_facecolor("#440154")  # viridis at 0: blank space off the diagonal blocks reads as zero weight
    r = c = 0
    last = None
    for a in alignments:
        # transposed: text position up, decoder step along the same time axis as the mel above
        last = bottom.imshow(a.T, origin="lower", aspect="auto", interpolation="none", cmap="viridis",
                             vmin=0.0, vmax=1.0, extent=(r, r + a.shape[0], c, c + a.shape[1]))
        r, c = r + a.shape[0], c + a.shape[1]
    bottom.set_xlim(0, frames)
    bottom.set_ylim(0, max(c, 1))
    bottom.set_xlabel("decoder step (frame)")
    bottom.set_ylabel("text symbol")
    if last is not None:
        fig.colorbar(last, ax=bottom, label="attention weight", pad=0.01)

    with atomic_write(path) as f:
        fig.savefig(f, format="png")
