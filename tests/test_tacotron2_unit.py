"""Tacotron 2's building blocks on small hand-set weights against the same arithmetic done by hand in numpy
(float64): the PyTorch-layout LSTM cell, location-sensitive attention, and the per-row reversal behind the
encoder's backward LSTM. Bounds: float32 ulps of the operands' magnitude (gates, tanh and softmax outputs are
at most 1; the cell state and the context say what their scale is)."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import ulps
from jtts.tacotron2 import F32, Attention, Decoder, LSTMCell, Tacotron2Config, _reverse_within

ULPS = 16

# PyTorch layout (4H, in): rows are the gates i, f, g, o. H = 2, in = 3; every entry distinct.
W_IH = np.array([[0.1, -0.2, 0.3], [0.4, 0.5, -0.6], [-0.7, 0.8, 0.9], [0.2, -0.1, 0.05],
                 [0.6, 0.3, -0.4], [-0.5, 0.7, 0.1], [0.35, -0.45, 0.55], [-0.25, 0.15, 0.65]])
W_HH = np.array([[-0.5, 0.25], [0.6, -0.3], [-0.7, 0.2], [0.8, 0.1],
                 [0.15, -0.35], [0.45, 0.55], [-0.65, 0.75], [0.05, -0.95]])
B_IH = np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08])
B_HH = np.array([1.0, -1.0, 0.5, -0.5, 0.25, -0.25, 0.75, -0.75])


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def lstm_step(x, h, c, order=(0, 1, 2, 3), b_hh=B_HH):
    """torch.nn.LSTMCell by hand: a = W_ih x + b_ih + W_hh h + b_hh, split into (i, f, g, o) -> (h', c', |f c| +
    |i g|). `order` and `b_hh` change the cell (to show that the test tells such cells apart)."""
    a = np.split(W_IH @ x + B_IH + W_HH @ h + b_hh, 4)
    i, f, g, o = (a[k] for k in order)
    c_new = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    return _sigmoid(o) * np.tanh(c_new), c_new, np.abs(_sigmoid(f) * c) + np.abs(_sigmoid(i) * np.tanh(g))


def _set(layer, kernel, bias=None):
    layer.kernel.set_value(jnp.asarray(kernel, F32))
    if bias is not None:
        layer.bias.set_value(jnp.asarray(bias, F32))


@pytest.fixture
def cell():
    cell = LSTMCell(3, 2, F32, nnx.Rngs(0))
    _set(cell.ih, W_IH.T, B_IH)  # jtts keeps (in, out) kernels
    _set(cell.hh, W_HH.T, B_HH)
    return cell


def test_lstm_cell_gate_order_and_two_biases(cell):
    x, h, c = np.array([1.0, -0.5, 0.25]), np.array([0.5, -0.25]), np.array([2.0, -1.5])
    h_ours, c_ours = cell(cell.ih(jnp.asarray(x[None], F32)), jnp.asarray(h[None], F32), jnp.asarray(c[None], F32))
    h_ref, c_ref, c_scale = lstm_step(x, h, c)
    assert ulps(h_ours[0], h_ref, 1.0) <= ULPS
    assert ulps(c_ours[0], c_ref, c_scale) <= ULPS
    # any other gate order, or the second bias left out, gives another cell state, far outside the bound
    for order in [(1, 0, 2, 3), (0, 1, 3, 2), (2, 1, 0, 3), (3, 2, 1, 0)]:
        assert ulps(c_ours[0], lstm_step(x, h, c, order)[1], c_scale) > 1e4, order
    assert ulps(c_ours[0], lstm_step(x, h, c, b_hh=0 * B_HH)[1], c_scale) > 1e4


def test_lstm_scan_runs_the_cell_from_zero_state(cell):
    xs = np.array([[[0.5, 0.1, -0.3], [1.0, -1.0, 0.5], [-0.2, 0.4, 0.8], [0.0, 0.3, -0.6]]])
    ours = np.asarray(cell.scan(jnp.asarray(xs, F32)))[0]
    h, c = np.zeros(2), np.zeros(2)
    for t in range(4):
        h, c, _ = lstm_step(xs[0, t], h, c)
        assert ulps(ours[t], h, 1.0) <= ULPS, t


def test_reverse_within_keeps_padding_in_place():
    x = (10 * np.arange(3)[:, None] + np.arange(5)[None, :]).astype(np.float32)[..., None]
    lengths = jnp.asarray([5, 3, 1])
    out = np.asarray(_reverse_within(jnp.asarray(x), lengths))[..., 0]
    np.testing.assert_array_equal(out, [[4, 3, 2, 1, 0], [12, 11, 10, 13, 14], [20, 21, 22, 23, 24]])
    np.testing.assert_array_equal(np.asarray(_reverse_within(jnp.asarray(out[..., None]), lengths)), x)


def test_backward_lstm_on_padded_rows_sees_only_its_own_steps(cell):
    """The encoder's backward direction: reverse each row within its length, run forward, reverse back.
    Padding (filled with 100 here) must not reach a row's outputs."""
    rng = np.random.default_rng(0)
    lengths = [4, 2]
    x = rng.uniform(-1, 1, (2, 4, 3))
    x[1, 2:] = 100.0
    bwd = np.asarray(_reverse_within(cell.scan(_reverse_within(jnp.asarray(x, F32), jnp.asarray(lengths))),
                                     jnp.asarray(lengths)))
    for b, n in enumerate(lengths):
        h, c = np.zeros(2), np.zeros(2)
        for t in reversed(range(n)):  # output t has seen x[n-1], ..., x[t]
            h, c, _ = lstm_step(x[b, t], h, c)
            assert ulps(bwd[b, t], h, 1.0) <= ULPS, (b, t)


# Location-sensitive attention: query 2 -> 2, memory 2 -> 2, location conv 2 channels -> 1 filter of width 3
# ('same' padding), location dense 1 -> 2, v 2 -> 1. jtts layouts: dense (in, out), conv (width, in, out).
W_Q = np.array([[0.5, -0.3], [0.2, 0.4]])
W_M = np.array([[1.0, 0.5], [-0.5, 0.25]])
W_V = np.array([[1.5], [-2.0]])
W_CONV = np.array([[0.3, -0.2], [0.5, 0.1], [-0.4, 0.6]])[..., None]  # [tap, (previous, cumulative), filter]
W_LOC = np.array([[0.7, -0.9]])


def _attention_by_hand(query, memory, prev, cum, lengths):
    """-> (energies, weights, context) in float64."""
    cat = np.pad(np.stack([prev, cum], -1), ((0, 0), (1, 1), (0, 0)))  # zero 'same' padding
    t_in = memory.shape[1]
    filt = np.stack([np.einsum("bkc,kc->b", cat[:, t:t + 3], W_CONV[..., 0]) for t in range(t_in)], 1)
    location = filt[..., None] * W_LOC[0]
    energies = np.tanh((query @ W_Q)[:, None] + location + memory @ W_M) @ W_V[:, 0]
    mask = np.arange(t_in)[None] < np.asarray(lengths)[:, None]
    e = np.where(mask, energies, -np.inf)
    w = np.exp(e - e.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    return energies, w, np.einsum("bt,btd->bd", w, memory)


@pytest.fixture
def attention():
    cfg = Tacotron2Config(attention_rnn_dim=2, encoder_embedding_dim=2, attention_dim=2,
                          attention_location_n_filters=1, attention_location_kernel_size=3)
    att = Attention(cfg, F32, nnx.Rngs(0))
    for layer, w in [(att.query, W_Q), (att.memory, W_M), (att.v, W_V), (att.location_conv, W_CONV),
                     (att.location_dense, W_LOC)]:
        _set(layer, w)
    return att


def test_attention_energies_mask_softmax_context(attention):
    query = np.array([[0.3, -0.6], [1.0, 0.2]])
    memory = np.array([[[0.2, -0.4], [0.9, 0.1], [-0.3, 0.7], [0.5, 0.5]],
                       [[-0.8, 0.3], [0.4, -0.2], [50.0, 50.0], [-50.0, 50.0]]])  # row 1: 2 steps, then padding
    prev = np.array([[0.1, 0.6, 0.2, 0.1], [0.3, 0.7, 0.0, 0.0]])
    cum = np.array([[0.5, 1.2, 0.2, 0.1], [1.0, 1.0, 0.0, 0.0]])
    lengths = [4, 2]
    mask = jnp.asarray(np.arange(4)[None] < np.asarray(lengths)[:, None])
    mem = jnp.asarray(memory, F32)
    context, weights = attention(jnp.asarray(query, F32), mem, attention.memory(mem),
                                 jnp.asarray(np.stack([prev, cum], -1), F32), mask)
    energies, w_ref, c_ref = _attention_by_hand(query, memory, prev, cum, lengths)
    weights, context = np.asarray(weights), np.asarray(context)
    assert np.all(weights[1, 2:] == 0.0)  # -inf before the softmax: exactly zero, whatever the memory holds
    assert ulps(weights, w_ref, 1.0) <= ULPS and ulps(weights.sum(1), [1.0, 1.0], 1.0) <= ULPS
    # softmax ratios give the energies back (log w_t - log w_0 = e_t - e_0), to the rounding of w's logs
    log_ratio = np.log(weights[0]) - np.log(weights[0, 0])
    assert ulps(log_ratio, energies[0] - energies[0, 0], 1.0 + np.abs(energies[0])) <= 4 * ULPS
    assert ulps(context, c_ref, np.einsum("bt,btd->bd", w_ref, np.abs(memory))) <= ULPS
    # the location features matter: other cumulative weights move the attention well beyond rounding
    other = _attention_by_hand(query, memory, prev, cum[::-1] * [[1, 1, 1, 1], [1, 1, 0, 0]], lengths)[1]
    assert ulps(weights, other, 1.0) > 1e4


def test_decoder_step_accumulates_attention_weights():
    cfg = Tacotron2Config(n_mel_channels=4, prenet_dim=3, attention_rnn_dim=5, decoder_rnn_dim=5,
                          encoder_embedding_dim=4, attention_dim=3, attention_location_n_filters=2,
                          attention_location_kernel_size=3)
    dec = Decoder(cfg, F32, nnx.Rngs(0))
    memory = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (1, 6, 4)), F32)
    mask = jnp.asarray([[True] * 4 + [False] * 2])
    cum = np.array([[0.5, 1.5, 0.25, 0.0, 0.0, 0.0]], np.float32)
    state = dec.initial_state(memory)._replace(weights_cum=jnp.asarray(cum))
    prenet = jnp.asarray([[0.2, -0.1, 0.4]], F32)
    # one compiled program: eager mode would compile each of the step's ~100 operations on its own
    step = nnx.jit(lambda d, *args: d.step(*args))
    new, mel, gate, weights = step(dec, state, prenet, memory, dec.attention.memory(memory), mask)
    weights = np.asarray(weights)
    assert mel.shape == (1, 4) and gate.shape == (1,) and np.all(weights[0, 4:] == 0.0)
    np.testing.assert_array_equal(np.asarray(new.weights), weights)
    np.testing.assert_array_equal(np.asarray(new.weights_cum), cum + weights)  # one float32 addition
