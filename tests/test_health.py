"""Alignment health (jtts.health) on hand-made alignments whose metrics are known by construction, the same
metrics computed inside Tacotron 2's jitted decoder, the attention window of the decoder step, and infer's
defaults taken from the model config."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jtts.health import Limits, alignment_health, judge
from jtts.tacotron2 import attention_window
from robust_helpers import tiny


def from_peaks(peaks, symbols: int, w: float = 0.8) -> np.ndarray:
    """An alignment whose step s puts weight w on symbol peaks[s] and 1 - w on the next symbol (the previous
    one for the last symbol)."""
    a = np.zeros((len(peaks), symbols), np.float32)
    for s, p in enumerate(peaks):
        a[s, p] = w
        a[s, p + 1 if p + 1 < symbols else p - 1] = 1 - w
    return a


def metrics(align: np.ndarray, steps: int | None = None, length: int | None = None) -> dict:
    steps = len(align) if steps is None else steps
    length = align.shape[1] if length is None else length
    out = alignment_health(align[None], np.array([steps]), np.array([length]))
    return {k: np.asarray(v)[0].item() for k, v in out.items()}


def test_clean_diagonal_is_healthy():
    m = metrics(from_peaks(np.repeat(np.arange(10), 3), 10))
    assert m["focus"] == pytest.approx(0.8, abs=1e-6)
    assert (m["backtrack"], m["end_gap"], m["skip"], m["dwell"]) == (0, 0, 0, 3)
    assert judge(30, "gate", m).ok


def test_looping_attention_is_babble():
    peaks = np.concatenate([np.repeat(np.arange(9), 2), np.repeat(np.arange(2, 10), 2)])  # 0..8, then 2..9 again
    m = metrics(from_peaks(peaks, 10))
    assert (m["backtrack"], m["end_gap"], m["skip"], m["dwell"]) == (6, 0, 0, 2)
    h = judge(len(peaks), "gate", m)
    assert h.problems == ("looping",) and "fell back 6 symbols" in h.describe()


def test_gate_firing_before_the_end_is_an_early_stop():
    m = metrics(from_peaks(np.repeat(np.arange(7), 3), 12))  # reaches symbol 6 of 0..11
    assert m["end_gap"] == 5 and m["skip"] == 0 and m["backtrack"] == 0
    assert judge(21, "gate", m).problems == ("early_stop",)
    # stopped by max_decoder_steps instead: babble, not an early stop
    assert judge(21, "max_steps", m).problems == ("max_steps",)
    assert judge(21, "gate", m, Limits(max_end_gap=5)).ok
    # all the way to the end, but in 3 frames for 10 symbols: no speech is that fast
    fast = metrics(from_peaks([0, 4, 9], 10))
    assert (fast["end_gap"], fast["symbols"]) == (0, 10)
    h = judge(3, "gate", fast)
    assert h.problems == ("early_stop",) and "3 frames for 10 symbols" in h.describe()


def test_jumping_over_symbols_is_a_skip():
    peaks = [0, 0, 1, 1, 2, 2, 10, 10, 11, 11, 12, 12, 13, 13]
    m = metrics(from_peaks(peaks, 14))
    # symbol 3 still gets 0.2 twice as symbol 2's neighbour; 4..9 get nothing
    assert (m["skip"], m["end_gap"], m["backtrack"]) == (6, 0, 0)
    assert judge(len(peaks), "gate", m).problems == ("skip",)


def test_stalled_attention_is_babble():
    peaks = [0, 1, 2] + [3] * 70 + [4, 5]
    m = metrics(from_peaks(peaks, 6))
    assert m["dwell"] == 70 and m["backtrack"] == 0 and m["end_gap"] == 0
    assert judge(len(peaks), "gate", m).problems == ("stalled",)


def test_uniform_attention_is_unfocused():
    m = metrics(np.full((40, 20), 1 / 20, np.float32))
    assert m["focus"] == pytest.approx(0.05, abs=1e-6)
    # argmax of a uniform row is symbol 0: the peak never moves
    assert (m["end_gap"], m["dwell"], m["skip"]) == (19, 40, 0)
    assert judge(40, "gate", m).problems == ("early_stop", "unfocused")


def test_padding_and_steps_past_the_end_are_ignored_and_jit_agrees():
    rows = [from_peaks(np.repeat(np.arange(10), 3), 10), from_peaks([0, 1, 2, 3, 3, 1, 2, 3], 5),
            from_peaks([0, 0, 1, 5, 6], 7)]
    steps, lengths = np.array([30, 8, 5]), np.array([10, 5, 7])
    batch = np.zeros((3, 40, 12), np.float32)
    batch[:, :, :] = 0.9  # garbage everywhere that is not a decoded step of a real symbol
    for r, a in enumerate(rows):
        batch[r, :steps[r], :lengths[r]] = a
        batch[r, :steps[r], lengths[r]:] = 0.0  # the decoder's softmax gives padding exactly 0
    alone = [metrics(a) for a in rows]
    for fn in (alignment_health, jax.jit(alignment_health)):
        out = {k: np.asarray(v) for k, v in fn(batch, steps, lengths).items()}
        for r in range(3):
            for k in alone[r]:
                assert out[k][r] == pytest.approx(alone[r][k], abs=1e-6), (r, k)


def test_attention_window_mask():
    prev = jnp.asarray([[0.1, 0.7, 0.2, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0.0], [0, 0, 0, 0, 0, 0.3, 0.6]])
    allowed = np.asarray(attention_window(prev, 2))
    np.testing.assert_array_equal(allowed, [[1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1, 1]])


# -- inside Tacotron 2 -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def taco():
    return tiny("tacotron2", seed=3, max_decoder_steps=60)


def batch():
    rng = np.random.default_rng(5)
    return rng.integers(11, 60, (3, 24)), np.array([24, 17, 9])


def test_health_from_the_jitted_decoder_matches_its_alignments(taco):
    tokens, lengths = batch()
    mel, mel_lengths, align, health = taco.infer(tokens, lengths, key=jax.random.key(1), with_health=True)
    assert list(health["stop"]) == ["max_steps"] * 3 and list(np.asarray(mel_lengths)) == [60] * 3
    again = alignment_health(np.asarray(align), np.minimum(np.asarray(mel_lengths) + 1, align.shape[1]), lengths)
    for k, v in again.items():
        np.testing.assert_allclose(health[k], np.asarray(v), atol=1e-5, err_msg=k)
    assert all(not judge(60, s, {k: health[k][r] for k in again}).ok for r, s in enumerate(health["stop"]))


def test_attention_window_bounds_every_step_of_the_peak(taco):
    tokens, lengths = batch()
    steps = {}
    for window in (None, 1):
        _, _, align, _ = taco.infer(tokens, lengths, key=jax.random.key(1), attention_window=window,
                                    with_health=True)
        steps[window] = [np.diff(np.asarray(align)[r].argmax(-1)) for r in range(3)]
    assert all(d.min() >= -1 and d.max() <= 1 for d in steps[1])
    # without the window this random model's attention jumps: the bound above is the window's doing
    assert any(d.min() < -1 or d.max() > 1 for d in steps[None])


def test_infer_defaults_come_from_the_config():
    tokens, lengths = np.arange(11, 21)[None], np.array([10])
    never = tiny("tacotron2", seed=3, max_decoder_steps=9)
    mel, n, _, health = never.infer(tokens, lengths, key=jax.random.key(0), with_health=True)
    assert mel.shape[2] == 9 and int(n[0]) == 9 and health["stop"][0] == "max_steps"
    assert never.infer(tokens, lengths, key=jax.random.key(0), max_decoder_steps=4)[0].shape[2] == 4
    # gate bias +10: sigmoid 0.99995 passes the default threshold at step 0, not a threshold of 0.99999
    stops = tiny("tacotron2", seed=3, gate_bias=10.0, max_decoder_steps=9)
    assert int(stops.infer(tokens, lengths, key=jax.random.key(0))[1][0]) == 0
    high = tiny("tacotron2", seed=3, gate_bias=10.0, max_decoder_steps=9, gate_threshold=0.99999)
    assert int(high.infer(tokens, lengths, key=jax.random.key(0))[1][0]) == 9
    assert int(high.infer(tokens, lengths, key=jax.random.key(0), gate_threshold=0.5)[1][0]) == 0
    # decoder_no_early_stopping: the loop runs all steps although the gate fired at once
    late = tiny("tacotron2", seed=3, gate_bias=10.0, max_decoder_steps=9, decoder_no_early_stopping=True)
    mel, n, _ = late.infer(tokens, lengths, key=jax.random.key(0))
    assert mel.shape[2] == 9 and int(n[0]) == 0

