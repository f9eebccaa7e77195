"""How well a decoded sentence went, read off its attention alignment, and the verdict that triggers repair.

Tacotron 2 fails on arbitrary text in a few recognisable ways, and each leaves a mark in the alignment
(decoder steps x input symbols; row t is the attention at step t):

  * babble: the gate never fires and decoding runs to max_decoder_steps; or the attention jumps back and
    reads part of the text again (looping); or it sits on one symbol for a long time (stalled).
  * early stop: the gate fires before the attention has reached the end of the text (words lost at the end),
    or after fewer frames than the text has symbols (no speech is that fast: 86 symbols a second).
  * skip: a stretch of symbols that the attention passed over without looking at them (words lost inside).
  * unfocused: no symbol gets a clear share of the attention (mumbling).

The metrics (`alignment_health`) are computed in jnp, batched, on the padded buffers of the jitted decoder,
so they run inside the same compiled program (jtts.tacotron2's `_infer_decoder`); tests call the same function
on hand-made alignments. Each decoded row counts the steps up to and including the one whose gate fired.

The limits are provisional defaults that a good model passes with a wide margin (a clean diagonal moves
about one symbol per 2-10 frames, and its peak weight is mostly above 0.5); docs/robustness.md has what they
flag on real text.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

# A symbol counts as seen once the attention weights it received add up to this much over the sentence.
SKIP_MASS = 0.1
METRICS = ("symbols", "focus", "backtrack", "end_gap", "skip", "dwell")


@dataclass(frozen=True)
class Limits:
    """What `judge` tolerates. Symbols are text symbols (characters or ARPAbet phonemes), frames decoder steps."""
    min_focus: float = 0.2     # mean of the largest attention weight per step
    max_backtrack: int = 4     # symbols the attention peak may fall back behind the furthest it reached
    max_end_gap: int = 3       # symbols after the furthest peak when the gate fires (final punctuation)
    min_frames_per_symbol: float = 1.0  # fewer frames when the gate fires: an early stop
    max_skip: int = 4          # symbols in a row that received less than SKIP_MASS attention in all
    max_dwell: int = 60        # frames the peak may stay on one symbol (0.7 s)


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Health:
    """One decoded sentence (or piece of one): its metrics and the problems they show under the limits used."""
    frames: int            # mel frames kept (Tacotron 2's mel_lengths)
    stop: str              # "gate", or "max_steps" when the gate never fired
    symbols: int           # text symbols decoded
    focus: float
    backtrack: int
    end_gap: int
    skip: int
    dwell: int
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        """The problems in words, e.g. 'babble (reached max steps; attention fell back 6 symbols), skip (...)'."""
        babble = {"max_steps": "reached max steps", "looping": f"attention fell back {self.backtrack} symbols",
                  "stalled": f"attention stuck {self.dwell} frames on one symbol"}
        why = [babble[p] for p in self.problems if p in babble]
        words = [f"babble ({'; '.join(why)})"] if why else []
        words += [{"early_stop": f"early stop ({self.end_gap} symbols never reached, {self.frames} frames for "
                                 f"{self.symbols} symbols)",
                   "skip": f"skip ({self.skip} symbols passed over)",
                   "unfocused": f"unfocused attention (focus {self.focus:.2f})"}[p]
                  for p in self.problems if p not in babble]
        return ", ".join(words) or "ok"


def judge(frames: int, stop: str, metrics: dict, limits: Limits = DEFAULT_LIMITS) -> Health:
    """Metrics of one row (plain numbers) -> Health with its problems."""
    m = {k: metrics[k] for k in METRICS}
    problems = []
    if stop == "max_steps":
        problems.append("max_steps")
    if m["backtrack"] > limits.max_backtrack:
        problems.append("looping")
    if m["dwell"] > limits.max_dwell:
        problems.append("stalled")
    too_short = frames < limits.min_frames_per_symbol * m["symbols"]
    if stop == "gate" and (m["end_gap"] > limits.max_end_gap or too_short):
        problems.append("early_stop")
    if m["skip"] > limits.max_skip:
        problems.append("skip")
    if m["focus"] < limits.min_focus:
        problems.append("unfocused")
    return Health(int(frames), stop, int(m["symbols"]), float(m["focus"]), int(m["backtrack"]), int(m["end_gap"]),
                  int(m["skip"]), int(m["dwell"]), tuple(problems))


def _cummax(x):
    return jax.lax.cummax(x, axis=x.ndim - 1)


def _longest_run(flags):
    """Longest run of True along the last axis of a boolean (B, N) array."""
    idx = jnp.arange(flags.shape[-1])
    last_false = _cummax(jnp.where(flags, -1, idx))
    return jnp.max(jnp.where(flags, idx - last_false, 0), axis=-1, initial=0)


def alignment_health(align, steps, lengths) -> dict:
    """align (B, S, T) attention weights (rows past `steps[b]` and columns past `lengths[b]` are ignored),
    steps (B,) decoded steps, lengths (B,) symbols -> dict of (B,) arrays:

      symbols    lengths, as given
      focus      mean over steps of the largest weight
      backtrack  largest distance (symbols) from the furthest peak reached so far back to the current peak
      end_gap    symbols after the furthest peak: lengths - 1 - max peak
      skip       longest run of symbols, before the furthest peak, whose summed weight is below SKIP_MASS
      dwell      longest run of consecutive steps whose peak is the same symbol
    """
    align = jnp.asarray(align, jnp.float32)
    steps, lengths = jnp.asarray(steps), jnp.asarray(lengths)
    _, s, t = align.shape
    live = jnp.arange(s)[None, :] < steps[:, None]
    align = jnp.where(live[..., None] & (jnp.arange(t)[None, None, :] < lengths[:, None, None]), align, 0.0)
    peak = jnp.argmax(align, axis=-1)
    focus = jnp.sum(jnp.max(align, axis=-1), axis=-1) / jnp.maximum(steps, 1)
    furthest = _cummax(jnp.where(live, peak, 0))
    backtrack = jnp.max(jnp.where(live, furthest - peak, 0), axis=-1)
    reach = furthest[:, -1]
    mass = jnp.sum(align, axis=1)
    unseen = (mass < SKIP_MASS) & (jnp.arange(t)[None, :] <= reach[:, None])
    same = jnp.concatenate([jnp.zeros_like(live[:, :1]), (peak[:, 1:] == peak[:, :-1]) & live[:, 1:]], axis=1)
    dwell = jnp.where(steps > 0, _longest_run(same) + 1, 0)
    return dict(symbols=lengths, focus=focus, backtrack=backtrack, end_gap=lengths - 1 - reach, skip=_longest_run(unseen),
                dwell=dwell)


def rows(health: dict, frames, stops, limits: Limits = DEFAULT_LIMITS) -> list[Health]:
    """`alignment_health`'s batched output (any array type) -> one judged Health per row."""
    host = {k: np.asarray(v) for k, v in health.items()}
    return [judge(int(f), str(st), {k: host[k][r].item() for k in METRICS}, limits)
            for r, (f, st) in enumerate(zip(frames, stops))]
