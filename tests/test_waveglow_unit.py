"""WaveGlow unit tests in pure JAX on a small model (no PyTorch): initialisation, invertibility, log-determinants,
noise handling, the folded inference object, reduced precision, and the DLE name table / shape-inferred config of
`jtts.convert.waveglow`."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jtts.checkpoint import flat_state
from jtts.convert import waveglow as cw
from jtts.convert.tables import CheckpointError, to_jtts, to_torch
from jtts.waveglow import WaveGlow, WaveGlowConfig, WaveGlowInference, _infer_jit, waveglow_loss

SMALL = WaveGlowConfig(n_flows=12, n_layers=4, n_channels=16)  # 3 stages: 8, 6, 4 channels
# Measured on this model (relative L2 of infer vs float32, see test_low_precision): bf16 8.2e-4, fp16 1.2e-4.
LOW_PRECISION_BOUNDS = {"bfloat16": 1e-2, "float16": 1.5e-3}


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def live(cfg: WaveGlowConfig, seed: int = 0, dtype=jnp.float32) -> WaveGlow:
    """Random model whose couplings do something: non-zero `end`, 1x1 convs with log|det| != 0."""
    model = WaveGlow(cfg, dtype=dtype, rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    for flow in model.flows:
        end = flow.wn.end
        std = 0.4 / np.sqrt(cfg.n_channels)  # log_s of order 0.1: lively couplings, tame dynamics
        end.kernel.set_value(jnp.asarray(rng.normal(0, std, end.kernel.shape), jnp.float32))
        end.bias.set_value(jnp.asarray(rng.normal(0, 0.05, end.bias.shape), jnp.float32))
        w = np.asarray(flow.convinv.kernel.get_value()) * 1.25
        w = w + rng.normal(0, 0.05, w.shape)
        assert np.linalg.det(w) > 0
        flow.convinv.kernel.set_value(jnp.asarray(w, jnp.float32))
    return model


@pytest.fixture(scope="module")
def model():
    return live(SMALL)


@pytest.fixture(scope="module")
def mel():
    return (np.random.default_rng(1).standard_normal((2, 80, 7)) * 0.5 - 4.0).astype(np.float32)


def forward_z_to_infer_layout(z, cfg: WaveGlowConfig):
    """Forward's z holds [first early output, second, ..., last flow's channels]; infer_onnx's layout wants the
    last flow's channels first, then the early outputs in the order the reverse pass rejoins them (latest first)."""
    z = np.asarray(z)
    n_rem, e = cfg.n_remaining_channels, cfg.n_early_size
    early = [z[:, i * e:(i + 1) * e] for i in range((cfg.n_group - n_rem) // e)]
    return np.concatenate([z[:, -n_rem:]] + early[::-1], axis=1)


def test_initialisation_follows_dle():
    """torch's default conv init (U(+-1/sqrt(fan_in))) with weight norm's g = |v|, random rotations with det +1
    for the 1x1 convs, zero `end`."""
    m = WaveGlow(SMALL, rngs=nnx.Rngs(0))
    for flow in m.flows:
        w = np.asarray(flow.convinv.kernel.get_value(), np.float64)
        assert np.abs(w @ w.T - np.eye(len(w))).max() < 1e-5  # float32 rounding of an orthogonal matrix: ~1e-7
        assert abs(np.linalg.det(w) - 1.0) < 1e-5
        assert not np.any(flow.wn.end.kernel.get_value()) and not np.any(flow.wn.end.bias.get_value())
    for conv, fan_in in ((m.flows[0].wn.cond_layers[0], 80 * 8), (m.flows[0].wn.in_layers[0], 16 * 3)):
        bound = 1.0 / np.sqrt(fan_in)
        v, g, b = (np.asarray(p.get_value(), np.float64) for p in (conv.v, conv.g, conv.bias))
        assert np.abs(v).max() <= bound and np.abs(b).max() <= bound
        # U(-b, b) has standard deviation b / sqrt(3); these 1536 and 20480 draws come within 0.6% and 0.2%
        assert abs(v.std() / (bound / np.sqrt(3)) - 1.0) < 0.06, v.std()
        norm = np.sqrt(np.sum(v * v, axis=tuple(range(v.ndim - 1))))
        assert np.abs(g - norm).max() <= 1e-5 * norm.max()  # g is |v| in float32: 4e-7 here
    up = np.asarray(m.upsample.kernel.get_value())
    assert np.abs(up).max() <= 1.0 / np.sqrt(80 * 1024)  # torch's ConvTranspose1d fan-in: out channels * taps


def test_initialisation_is_the_same_under_a_transform():
    """nnx.jit (and nnx.eval_shape, which from_checkpoint uses) build the model with the same weights."""
    model = WaveGlow(SMALL, rngs=nnx.Rngs(5))
    eager = flat_state(model)
    traced = flat_state(nnx.jit(lambda: WaveGlow(SMALL, rngs=nnx.Rngs(5)))())
    assert set(eager) == set(traced)
    for k, var in eager.items():
        np.testing.assert_array_max_ulp(np.asarray(var.get_value()), np.asarray(traced[k].get_value()), maxulp=2)
    abstract = flat_state(nnx.eval_shape(lambda: WaveGlow(SMALL, rngs=nnx.Rngs(5))))
    assert {k: tuple(v.shape) for k, v in abstract.items()} == {k: tuple(v.shape) for k, v in eager.items()}
    other = WaveGlow(SMALL, rngs=nnx.Rngs(6))  # another seed, other weights
    assert rel(other.flows[0].wn.start.v.get_value(), model.flows[0].wn.start.v.get_value()) > 0.5


def test_config_derived_and_dle_round_trip():
    cfg = WaveGlowConfig()
    assert cfg.remaining_channels == (8,) * 4 + (6,) * 4 + (4,) * 4
    assert cfg.n_half == (4,) * 4 + (3,) * 4 + (2,) * 4
    assert cfg.n_remaining_channels == 4
    assert WaveGlowConfig.from_dle(cfg.to_dle()) == cfg
    assert cfg.to_dle()["WN_config"] == dict(n_layers=8, kernel_size=3, n_channels=256)
    with pytest.raises(ValueError, match="n_early_size"):
        WaveGlowConfig(n_early_size=3)


@pytest.fixture(scope="module")
def audio(mel):
    return (np.random.default_rng(2).standard_normal((2, mel.shape[2] * 256)) * 0.3).astype(np.float32)


@pytest.fixture(scope="module")
def forward(model, mel, audio):
    return model(mel, audio)


def test_forward_then_infer_reconstructs_audio(model, mel, audio, forward):
    z, log_s, log_det = forward
    tg = audio.shape[1] // 8
    assert z.shape == (2, 8, tg) and len(log_s) == len(log_det) == SMALL.n_flows
    assert [s.shape for s in log_s] == [(2, h, tg) for h in SMALL.n_half]
    assert float(jnp.std(jnp.concatenate([s.ravel() for s in log_s]))) > 0.05  # the couplings are live
    back = model.infer(mel, sigma=1.0, z=forward_z_to_infer_layout(z, SMALL))
    assert back.dtype == jnp.float32 and back.shape == audio.shape
    assert rel(back, audio) < 1e-4


def test_log_det_matches_float64(model, audio, forward):
    tg = audio.shape[1] // 8
    for flow, got in zip(model.flows, forward[2]):
        w = np.asarray(flow.convinv.kernel.get_value(), np.float64)
        sign, want = np.linalg.slogdet(w)
        assert sign > 0 and abs(want) > 1e-2
        assert abs(float(got) - 2 * tg * want) <= 1e-5 * abs(2 * tg * want)


def test_loss_formula(forward):
    z, log_s, log_det = forward
    z64 = np.asarray(z, np.float64)
    want = (np.sum(z64 ** 2) / (2 * 0.7 ** 2) - sum(np.sum(np.asarray(s, np.float64)) for s in log_s)
            - sum(float(d) for d in log_det)) / z64.size
    assert abs(float(waveglow_loss(z, log_s, log_det, sigma=0.7)) - want) <= 1e-5 * abs(want)


def test_training_gradients_are_finite(mel):
    model = live(WaveGlowConfig(n_flows=4, n_early_every=2, n_layers=2, n_channels=8))
    audio = (np.random.default_rng(4).standard_normal((2, 4 * 256 + 13)) * 0.2).astype(np.float32)

    def loss_fn(m):
        out = m(mel, audio)
        return waveglow_loss(*out), out[0]

    (loss, z), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    assert z.shape == (2, 8, 4 * 32 + 1)  # ragged: trailing samples dropped, as in DLE
    leaves = [np.asarray(g) for g in jax.tree.leaves(nnx.state(grads))]
    assert np.isfinite(float(loss)) and all(np.all(np.isfinite(g)) for g in leaves)
    assert sum(np.count_nonzero(g) for g in leaves) > 0.9 * sum(g.size for g in leaves)


def test_seeded_noise(model, mel):
    a = model.infer(mel, sigma=0.9, key=jax.random.key(3))
    b = model.infer(mel, sigma=0.9, key=jax.random.key(3))
    c = model.infer(mel, sigma=0.9, key=jax.random.key(4))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert rel(c, a) > 0.05
    # the key means the same noise as z = normal(key, (B, n_group, T_groups)), scaled by sigma
    z = jax.random.normal(jax.random.key(3), (2, 8, mel.shape[2] * 32))
    assert rel(model.infer(mel, sigma=0.9, z=z), a) < 1e-6
    with pytest.raises(ValueError, match="key"):
        model.infer(mel, sigma=0.9)


def test_sigma_zero_is_deterministic(model, mel):
    a = model.infer(mel, sigma=0.0)
    b = model.infer(mel, sigma=0.0, key=jax.random.key(1))
    c = model.infer(mel, sigma=0.0, z=np.random.default_rng(0).standard_normal((2, 8, mel.shape[2] * 32)))
    assert np.array_equal(np.asarray(a), np.asarray(b)) and np.array_equal(np.asarray(a), np.asarray(c))
    assert float(jnp.std(a)) > 0


def test_bucketed_length_is_exact(model):
    """infer pads 21 mel frames to a 22-frame bucket; the dilated convs must not see the padding."""
    mel = (np.random.default_rng(5).standard_normal((1, 80, 21)) * 0.5 - 4.0).astype(np.float32)
    z = np.random.default_rng(6).standard_normal((1, 8, 21 * 32)).astype(np.float32)
    got = model.infer(mel, sigma=0.8, z=z)
    unpadded = _infer_jit(model.inference().weights, jnp.asarray(mel), jnp.asarray(z), jnp.float32(0.8),
                          jnp.int32(21 * 32), cfg=SMALL)
    assert got.shape == unpadded.shape == (1, 21 * 256)
    assert rel(got, unpadded) < 1e-6


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision(model, mel, dtype):
    low = live(SMALL, dtype=jnp.dtype(dtype))  # same seed: same weights
    key = jax.random.key(7)
    ref = model.infer(mel, sigma=0.9, key=key)
    out = low.infer(mel, sigma=0.9, key=key)  # the key gives the same noise whatever the dtype
    assert out.dtype == jnp.float32 and low.inference().dtype == jnp.dtype(dtype)
    # folding for another dtype is the same as a model of that dtype
    assert np.array_equal(np.asarray(model.inference(dtype).infer(mel, sigma=0.9, key=key)), np.asarray(out))
    err = rel(out, ref)
    print(f"{dtype}: relative L2 error vs float32 {err:.2e}")
    assert 0 < err <= LOW_PRECISION_BOUNDS[dtype], err


def test_inference_is_a_snapshot(mel):
    m = live(SMALL, seed=3)
    vocoder = m.inference()
    assert isinstance(vocoder, WaveGlowInference) and vocoder.inference() is vocoder
    before = np.asarray(vocoder.infer(mel, sigma=0.0))
    assert np.array_equal(np.asarray(m.infer(mel, sigma=0.0)), before)  # the convenience folds the same weights
    m.flows[0].wn.end.bias.set_value(m.flows[0].wn.end.bias.get_value() + 0.1)
    assert np.array_equal(np.asarray(vocoder.infer(mel, sigma=0.0)), before)  # folded weights do not change
    assert rel(m.inference().infer(mel, sigma=0.0), before) > 1e-3  # a new fold sees the new parameters
    # a pytree: it passes through jit whole, the weights as its leaves
    through = jax.jit(lambda v: v)(vocoder)
    assert isinstance(through, WaveGlowInference) and through.config == SMALL


def test_from_checkpoint(tmp_path, model, mel):
    from jtts.checkpoint import save_model

    params = {k: np.asarray(v.get_value()) for k, v in flat_state(model).items()}
    save_model(tmp_path / "wg", "waveglow", dataclasses.asdict(SMALL), params)
    loaded = WaveGlow.from_checkpoint(tmp_path / "wg")
    assert loaded.config == SMALL
    assert np.array_equal(np.asarray(loaded.infer(mel, sigma=0.0)), np.asarray(model.infer(mel, sigma=0.0)))

    # folded straight from the files, flow by flow, without the module: the same weights up to rounding (a
    # per-flow program sums in another order than the whole-model fold: measured 2 float32 ulps of the leaf's
    # largest magnitude; a float32 difference can flip a bfloat16 rounding, one bfloat16 ulp)
    for dtype in ("float32", "bfloat16"):
        direct = WaveGlowInference.from_checkpoint(tmp_path / "wg", dtype=dtype)
        assert isinstance(direct, WaveGlowInference) and direct.config == SMALL and direct.dtype == dtype
        via_module = model.inference(dtype)
        leaves, ref_leaves = jax.tree.leaves(direct), jax.tree.leaves(via_module)
        assert [(a.shape, a.dtype) for a in leaves] == [(a.shape, a.dtype) for a in ref_leaves]
        for a, b in zip(leaves, ref_leaves):
            a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
            bound = (1e-5 if dtype == "float32" else 2.0 ** -8) * np.abs(b).max()
            assert np.abs(a - b).max() <= bound, (np.abs(a - b).max(), bound)
        err = rel(direct.infer(mel, sigma=0.0), via_module.infer(mel, sigma=0.0))
        assert err <= (1e-6 if dtype == "float32" else 5e-3), (dtype, err)


def test_param_reader_reads_only_what_is_asked(tmp_path, model, monkeypatch):
    """`ParamReader` restores the named arrays only (Orbax's partial restore), and an Orbax without partial
    restore falls back to one whole read that gives the same arrays."""
    import orbax.checkpoint as ocp

    from jtts.checkpoint import ParamReader, load_model, save_model

    params = {k: np.asarray(v.get_value()) for k, v in flat_state(model).items()}
    save_model(tmp_path / "wg", "waveglow", dataclasses.asdict(SMALL), params)
    reader = ParamReader(tmp_path / "wg")
    assert reader.shapes == {k: v.shape for k, v in params.items()}
    part = reader.read(["upsample.bias", "flows.3.convinv.kernel"])
    assert sorted(part) == ["flows.3.convinv.kernel", "upsample.bias"]
    assert all(np.array_equal(part[k], params[k]) and part[k].dtype == np.float32 for k in part)
    _, everything = load_model(tmp_path / "wg")
    assert sorted(everything) == sorted(params)
    assert all(np.array_equal(everything[k], params[k]) for k in params)
    # smaller groups than one array each: still every array once
    assert all(np.array_equal(v, params[k]) for k, v in ParamReader(tmp_path / "wg").read_all(1).items())

    class NoPartial(ocp.args.PyTreeRestore):
        def __init__(self, *a, partial_restore=False, **k):
            if partial_restore:
                raise TypeError("unexpected keyword argument 'partial_restore'")
            super().__init__(*a, **k)

    monkeypatch.setattr(ocp.args, "PyTreeRestore", NoPartial)
    old = ParamReader(tmp_path / "wg")
    got = old.read(["upsample.bias"])
    assert list(got) == ["upsample.bias"] and np.array_equal(got["upsample.bias"], params["upsample.bias"])
    rest = old.read_all()
    assert sorted(rest) == sorted(params) and all(np.array_equal(rest[k], params[k]) for k in params)


# -- jtts.convert.waveglow --------------------------------------------------------------------------------------

def _shapes(cfg):
    abstract = nnx.eval_shape(lambda: WaveGlow(cfg, rngs=nnx.Rngs(0)))
    return {k: tuple(v.shape) for k, v in flat_state(abstract).items()}


def _torch_shapes(cfg):
    """A stand-in state_dict with DLE's shapes (zero-stride arrays: no memory for the full-size model)."""
    shapes = _shapes(cfg)
    return {r.torch: r.layout.to_torch(np.broadcast_to(np.float32(0), shapes[r.jtts])) for r in cw.table(cfg)}


def test_table_round_trip_is_bit_exact(model):
    params = {k: np.asarray(v.get_value()) for k, v in flat_state(model).items()}
    rng = np.random.default_rng(0)
    params = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
    state = to_torch(params, cw.table(SMALL))
    assert state["upsample.weight"].shape == (80, 80, 1024)
    assert state["WN.0.in_layers.1.weight_v"].shape == (32, 16, 3)
    assert state["WN.0.in_layers.1.weight_g"].shape == (32, 1, 1)
    assert state["WN.11.end.weight"].shape == (4, 16, 1)
    assert state["convinv.4.conv.weight"].shape == (6, 6, 1)
    back = to_jtts(state, cw.table(SMALL), _shapes(SMALL), source="test")
    assert set(back) == set(params)
    for k in params:
        assert back[k].dtype == np.float32 and np.array_equal(back[k], params[k]), k


@pytest.mark.parametrize("cfg", [WaveGlowConfig(n_channels=256), WaveGlowConfig(n_channels=512), SMALL,
                                 WaveGlowConfig(n_flows=6, n_group=16, n_early_every=2, n_early_size=4,
                                                n_layers=3, n_channels=8, kernel_size=5)])
def test_infer_config_from_shapes(cfg):
    state = _torch_shapes(cfg)
    assert cw.infer_config(state) == cfg
    assert cw.infer_config(state, cfg.to_dle(), "x.pt") == cfg
    bad = {**cfg.to_dle(), "WN_config": {**cfg.to_dle()["WN_config"], "n_channels": cfg.n_channels * 2}}
    with pytest.raises(CheckpointError, match="n_channels"):
        cw.infer_config(state, bad, "x.pt")
    with pytest.raises(CheckpointError, match="n_flows"):
        cw.check_against_dle_config(cfg, {**cfg.to_dle(), "n_flows": cfg.n_flows + 1}, "x.pt")


def test_infer_config_rejects_incomplete_state():
    state = _torch_shapes(SMALL)
    del state["WN.0.start.weight_v"]
    with pytest.raises(CheckpointError, match="WN.0.start.weight_v"):
        cw.infer_config(state, source="x.pt")


def _random_state(cfg, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in _torch_shapes(cfg).items()}


def test_legacy_shared_cond_layer_is_split_exactly():
    state = _random_state(SMALL)
    legacy = {k: v for k, v in state.items() if ".cond_layers." not in k}
    for k in range(SMALL.n_flows):
        for part in ("weight_g", "weight_v", "bias"):
            rows = [state[f"WN.{k}.cond_layers.{i}.{part}"] for i in range(SMALL.n_layers)]
            legacy[f"WN.{k}.cond_layer.{part}"] = np.concatenate(rows)  # layer i: rows [2C*i, 2C*(i+1))
    assert legacy["WN.0.cond_layer.weight_v"].shape == (2 * 16 * 4, 640, 1)
    split = cw.prepare_state_dict(legacy)
    assert set(split) == set(state)
    assert all(np.array_equal(split[k], state[k]) for k in state)


def test_removed_weight_norm_is_restored():
    state = _random_state(SMALL, seed=1)
    plain = {}
    for k, v in state.items():
        if k.endswith(".weight_v"):
            g = state[k[:-1] + "g"]
            plain[k[: -len("_v")]] = v * (g / np.linalg.norm(v, axis=(1, 2), keepdims=True))
        elif not k.endswith(".weight_g"):
            plain[k] = v
    restored = cw.prepare_state_dict(plain)
    assert set(restored) == set(state)
    for k in state:
        if k.endswith(".weight_v"):
            g, v = restored[k[:-1] + "g"], restored[k]
            want = state[k] * (state[k[:-1] + "g"] / np.linalg.norm(state[k], axis=(1, 2), keepdims=True))
            np.testing.assert_allclose(v * (g / np.linalg.norm(v, axis=(1, 2), keepdims=True)), want, rtol=1e-5,
                                       atol=1e-6)
        elif not k.endswith(".weight_g"):
            assert np.array_equal(restored[k], state[k])


# -- jtts.denoiser ----------------------------------------------------------------------------------------------

def test_denoiser(model):
    from jtts.audio import stft
    from jtts.denoiser import Denoiser

    den = Denoiser(model)
    assert den.bias_spec.shape == (1, 513, 1) and float(jnp.min(den.bias_spec)) >= 0
    assert np.array_equal(np.asarray(Denoiser(model.inference()).bias_spec), np.asarray(den.bias_spec))
    silent = model.infer(np.zeros((1, 80, 88), np.float32), sigma=0.0)
    assert np.allclose(np.asarray(stft(silent)[0][:, :, :1]), np.asarray(den.bias_spec))
    audio = (np.random.default_rng(8).standard_normal((2, 20 * 256)) * 0.1).astype(np.float32)
    same = den(audio, strength=0.0)  # nothing subtracted: the STFT round trip
    assert same.shape == audio.shape and same.dtype == jnp.float32
    assert rel(same, audio) < 1e-5
    cleaned = den(audio, strength=0.5)
    assert rel(cleaned, audio) > 1e-3
    mag_in, mag_out = np.asarray(stft(audio)[0]), np.asarray(stft(cleaned)[0])
    assert mag_out.sum() < mag_in.sum()  # energy was taken out
    # one frame of audio (256 samples) is shorter than the STFT window: padded inside, cut back to its length
    short = den(audio[:, :256], strength=0.0)
    assert short.shape == (2, 256) and rel(short, audio[:, :256]) < 1e-5
