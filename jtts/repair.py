"""Decode sentences, judge each by its alignment (jtts.health) and repair the ones that failed.

A failed sentence is decoded again with a new prenet dropout key, up to `tries` decodes in all; if it still
fails it is split in two at the clause mark (else the space) nearest its middle, and each half is repaired the
same way, down to `max_depth` splits. Failures are decoded again together, in batches, round after round.
Every decode but a sentence's first reads its text ended by a full stop (`closed`): models trained on
punctuated sentences (LJSpeech, espeak corpora) often never fire their stop gate on text that just ends.

What is kept: a sentence that passes on some try keeps that decode; a split sentence keeps its pieces when at
least one piece passes; otherwise the sentence keeps its first decode and is reported as failed (its status is
"failed", with the problems of what was kept): nothing that fails is kept silently.

Keys (see jtts.pipeline): a sentence or piece with key k is decoded with fold_in(k, 0) on its first try and
fold_in(fold_in(k, 2), n) on try n + 1, and vocoded with fold_in(k, 1); piece i of a split has the key
fold_in(fold_in(k, 3), i). So the audio depends on the seed and the text only, never on the batch.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import jax
import numpy as np

from jtts.health import DEFAULT_LIMITS, Health, Limits, rows
from jtts.text import DLE_TEXT, TextFrontend

_CLAUSE_END = re.compile(r"[,;:]\s+|\s+(?=[\u2014\u2013]|-\s)")


class Cancelled(Exception):
    """Raised by `repair` when its `stop` event is set (the consumer of a decode-ahead thread went away)."""


@dataclass
class Decoded:
    """One decode of one piece of text: mel (80, frames), alignment (frames, symbols), health."""
    mel: np.ndarray
    alignment: np.ndarray
    health: Health


@dataclass
class Piece:
    """What is kept of (part of) a sentence: its text, its key (the vocoder's is fold_in(key, 1)), its decode."""
    text: str
    key: jax.Array
    decoded: Decoded


@dataclass
class Outcome:
    """What became of one sentence: the pieces kept (one unless it was split), decodes made, and a status:
    "ok" (first try), "retried" (passed on a later try), "split" (its pieces pass), "failed"."""
    pieces: list[Piece]
    tries: int
    status: str

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    @property
    def mel(self) -> np.ndarray:
        return np.concatenate([p.decoded.mel for p in self.pieces], axis=1)

    @property
    def alignment(self) -> np.ndarray:
        """The pieces' alignments as one block-diagonal (frames, symbols) matrix."""
        return block_diagonal([p.decoded.alignment for p in self.pieces])

    @property
    def health(self) -> Health:
        """The pieces' health in one: frames added up, the worst of each metric, all problems."""
        hs = [p.decoded.health for p in self.pieces]
        if len(hs) == 1:
            return hs[0]
        problems = tuple(dict.fromkeys(q for h in hs for q in h.problems))
        return Health(sum(h.frames for h in hs), "max_steps" if any(h.stop == "max_steps" for h in hs) else "gate",
                      sum(h.symbols for h in hs), min(h.focus for h in hs), max(h.backtrack for h in hs), max(h.end_gap for h in hs),
                      max(h.skip for h in hs), max(h.dwell for h in hs), problems)

    def failing(self) -> list[Piece]:
        return [p for p in self.pieces if not p.decoded.health.ok]


def block_diagonal(blocks: list[np.ndarray]) -> np.ndarray:
    out = np.zeros((sum(a.shape[0] for a in blocks), sum(a.shape[1] for a in blocks)), np.float32)
    r = c = 0
    for a in blocks:
        out[r:r + a.shape[0], c:c + a.shape[1]] = a
        r, c = r + a.shape[0], c + a.shape[1]
    return out


def closed(text: str) -> str:
    """`text` ending with sentence punctuation: a trailing comma, semicolon, colon or dash becomes a full stop,
    and a full stop is added after a bare word (closing quotes and brackets stay last)."""
    body = text.rstrip()
    tail = len(body) - len(body.rstrip("\"')]\u201d\u2019"))
    core, quotes = body[:len(body) - tail], body[len(body) - tail:]
    if core.endswith((".", "!", "?", "\u2026")):
        return body
    return core.rstrip(",;:-\u2013\u2014 ") + "." + quotes


def split_in_two(text: str, text_frontend: TextFrontend = DLE_TEXT) -> tuple[str, str] | None:
    """Two halves of `text` at the clause mark nearest its middle if one lies in the middle half, else at the
    space nearest the middle; None for a single word. Both halves must hold something to speak (to the model's
    text front end)."""
    middle = len(text) / 2
    clauses = [m.end() for m in _CLAUSE_END.finditer(text) if len(text) / 4 <= m.end() <= 3 * len(text) / 4]
    spaces = [m.end() for m in re.finditer(r"\s+", text)]
    for cuts in (clauses, spaces):
        for cut in sorted(cuts, key=lambda c: abs(c - middle)):
            left, right = text[:cut].strip(), text[cut:].strip()
            if left and right and all(text_frontend.speakable(text_frontend.ids(h)) for h in (left, right)):
                return left, right
    return None


# -- decoding ----------------------------------------------------------------------------------------------------

def decode_rows(tacotron2, seqs: list[list[int]], keys: list[jax.Array], *, max_decoder_steps=None,
                gate_threshold=None, attention_window=None, limits: Limits = DEFAULT_LIMITS,
                prenet_dropout: float = 0.5) -> list[Decoded]:
    """One Tacotron 2 batch: symbol ids and each row's prenet key -> a judged Decoded per row (each row decoded
    as if alone, `Tacotron2.infer`). A gate firing at the first step still leaves one frame. prenet_dropout:
    DLE's 0.5 at inference; other rates are for diagnostics (benchmarks/learn_speech.py)."""
    lengths = np.array([len(s) for s in seqs], np.int32)
    tokens = np.zeros((len(seqs), lengths.max()), np.int32)
    for r, s in enumerate(seqs):
        tokens[r, :len(s)] = s
    mel, mel_lengths, align, health = tacotron2.infer(
        tokens, lengths, max_decoder_steps=max_decoder_steps, gate_threshold=gate_threshold,
        attention_window=attention_window, prenet_dropout=prenet_dropout, key=jax.numpy.stack(keys),
        with_health=True)
    mel, mel_lengths, align = np.asarray(mel), np.asarray(mel_lengths), np.asarray(align)
    judged = rows(health, mel_lengths, health["stop"], limits)
    out = []
    for r in range(len(seqs)):
        n = max(int(mel_lengths[r]), 1)
        out.append(Decoded(mel[r, :, :n], align[r, :n, :lengths[r]], judged[r]))
    return out


@dataclass
class _Node:
    text: str
    ids: list[int]   # the text's ids as given; later tries (and split pieces) read `closed(text)`
    key: jax.Array
    depth: int
    text_frontend: TextFrontend = DLE_TEXT  # the model's
    attempts: int = 0
    first: Decoded | None = None
    good: Decoded | None = None
    children: list["_Node"] = field(default_factory=list)

    def decode_ids(self) -> list[int]:
        if self.attempts == 0 and self.depth == 0:
            return self.ids
        return self.text_frontend.ids(closed(self.text))

    def decode_key(self) -> jax.Array:
        if self.attempts == 0:
            return jax.random.fold_in(self.key, 0)
        return jax.random.fold_in(jax.random.fold_in(self.key, 2), self.attempts)


def repair(decode: Callable[[list[list[int]], list[jax.Array]], list[Decoded]],
           sentences: list[tuple[str, list[int], jax.Array]], *, tries: int = 3, max_depth: int = 1,
           batch_size: int = 8, stop=None, text_frontend: TextFrontend = DLE_TEXT) -> list[Outcome]:
    """sentences: (text, symbol ids, sentence key) -> an Outcome each. decode(seqs, prenet keys) decodes one
    batch (`decode_rows` with the settings bound). tries=1 and max_depth=0 turn repair off. stop: None, or a
    threading.Event checked before every batch (raises Cancelled). text_frontend: the model's, for the ids of
    split and closed text."""
    roots = [_Node(text, ids, key, 0, text_frontend) for text, ids, key in sentences]
    pending = list(roots)
    while pending:
        decoded: list[Decoded] = []
        for b in range(0, len(pending), batch_size):
            if stop is not None and stop.is_set():
                raise Cancelled
            part = pending[b:b + batch_size]
            decoded += decode([n.decode_ids() for n in part], [n.decode_key() for n in part])
        retry = []
        for node, d in zip(pending, decoded):
            node.attempts += 1
            node.first = node.first or d
            if d.health.ok:
                node.good = d
            elif node.attempts < tries:
                retry.append(node)
            elif node.depth < max_depth and (halves := split_in_two(node.text, text_frontend)):
                node.children = [_Node(t, [], jax.random.fold_in(jax.random.fold_in(node.key, 3), i), node.depth + 1,
                                       text_frontend) for i, t in enumerate(halves)]
                retry += node.children
        pending = retry
    return [_outcome(root) for root in roots]


def _kept(node: _Node) -> tuple[list[Piece], bool, bool]:
    """-> (pieces kept, all of them pass, some piece passes)."""
    if node.good is not None:
        return [Piece(node.text, node.key, node.good)], True, True
    if node.children:
        parts = [_kept(c) for c in node.children]
        if any(some for _, _, some in parts):
            return [p for pieces, _, _ in parts for p in pieces], all(a for _, a, _ in parts), True
    return [Piece(node.text, node.key, node.first)], False, False


def _tries(node: _Node) -> int:
    return node.attempts + sum(_tries(c) for c in node.children)


def _outcome(root: _Node) -> Outcome:
    pieces, passed, _ = _kept(root)
    if not passed:
        status = "failed"
    elif len(pieces) > 1:
        status = "split"
    else:
        status = "ok" if root.attempts == 1 else "retried"
    return Outcome(pieces, _tries(root), status)
