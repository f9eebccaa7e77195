"""WaveGlow (mel -> audio), a normalising flow numerically matched to NVIDIA DeepLearningExamples' PyTorch model.

Layout: inside the model, activations are channels-last, (batch, groups, channels), where a "group" is
`n_group` consecutive audio samples (channel j of group g is sample g * n_group + j). The public methods take
DLE's (batch, channels, time) mels and return z / log_s in DLE's (batch, channels, groups) layout, so arrays
compare with PyTorch directly.

Parameters are float32 and keep DLE's weight normalisation (`g`, `v` stored apart, so training can go on from
a converted checkpoint); convolution kernels are (taps, in, out), 1x1 kernels (in, out), weight-norm
magnitudes (out,). The stored parameters follow DLE's channel order exactly; reorderings that speed up the
computation happen when the weights are folded (see `fold_params`).

Precision (`dtype` = float32, bfloat16 or float16 picks the compute dtype):
  * rounded to `dtype`: the operands of the big matmuls only -- the upsampling kernel and mel, the WN
    start/dilated/conditioning/res-skip kernels and their inputs. Every matmul accumulates in float32.
  * always float32: the audio-rate state that flows between couplings (z, audio), the 1x1 invertible convs and
    their inverses (computed from W in float32, with full matmul precision), the log-determinants, log_s and
    exp(log_s) and the division by it, the WN residual stream, skip sums, gates (tanh/sigmoid) and biases.
  * a float32 model asks for full float32 matmul precision (`Precision.HIGHEST`), so accelerators that would
    otherwise use TF32 give the same numbers as the CPU.

Inference: `WaveGlow.inference()` folds the parameters once into a `WaveGlowInference` (weight norm applied,
1x1 convs inverted, `end` folded into the skip paths), an immutable object that the pipeline and the denoiser
hold. Its `infer` runs one jitted program per (batch, bucketed mel length, dtype): mels are padded to a few
lengths per octave (`_bucket`) and the dilated convs are masked past the real length, which keeps the result
exact (the padding never reaches the real samples). Flows between two early outputs share their shapes and run
under one `lax.scan`.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jtts.frontend import AudioConfig, model_audio
from jtts.models import FromCheckpoint

F32 = jnp.float32
UPSAMPLE_KERNEL = 1024  # DLE's ConvTranspose1d kernel and stride, fixed there (not in the config)
UPSAMPLE_STRIDE = 256


@dataclass(frozen=True)
class WaveGlowConfig:
    """Hyperparameters; the defaults are NVIDIA's NGC WaveGlow (use n_channels=512 for the torch-hub model)."""
    n_mel_channels: int = 80
    n_flows: int = 12
    n_group: int = 8
    n_early_every: int = 4
    n_early_size: int = 2
    n_layers: int = 8
    n_channels: int = 256
    kernel_size: int = 3
    # The front end of the mels it vocodes (not a DLE constructor argument). None or a dict (model.json)
    # becomes an AudioConfig, DLE's by default, with n_mels = n_mel_channels; its hop must be the upsampling
    # stride, which DLE fixes at 256.
    audio: AudioConfig | None = None

    def __post_init__(self):
        object.__setattr__(self, "audio", model_audio(self, self.n_mel_channels))
        problems = []
        if self.audio.hop != UPSAMPLE_STRIDE:
            problems.append(f"audio.hop must be the upsampling stride {UPSAMPLE_STRIDE}, got {self.audio.hop}")
        if self.n_group % 2:
            problems.append(f"n_group must be even, got {self.n_group}")
        if self.n_early_size % 2:
            problems.append(f"n_early_size must be even, got {self.n_early_size}")
        if self.kernel_size % 2 == 0:
            problems.append(f"kernel_size must be odd, got {self.kernel_size}")
        if self.n_channels % 2:
            problems.append(f"n_channels must be even, got {self.n_channels}")
        if min(self.n_flows, self.n_early_every, self.n_layers, self.n_channels, self.n_mel_channels) < 1:
            problems.append("n_flows, n_early_every, n_layers, n_channels and n_mel_channels must be positive")
        elif self.remaining_channels[-1] < 2:
            problems.append(f"early outputs leave {self.remaining_channels[-1]} channels for the last flow")
        if UPSAMPLE_STRIDE % self.n_group:
            problems.append(f"n_group must divide the upsampling stride {UPSAMPLE_STRIDE}, got {self.n_group}")
        if problems:
            raise ValueError("invalid WaveGlowConfig: " + "; ".join(problems))

    @property
    def remaining_channels(self) -> tuple[int, ...]:
        """Channels each flow transforms (8, 8, 8, 8, 6, ..., 4 for the NGC model)."""
        out, c = [], self.n_group
        for k in range(self.n_flows):
            if self.is_early(k):
                c -= self.n_early_size
            out.append(c)
        return tuple(out)

    @property
    def n_half(self) -> tuple[int, ...]:
        """Size of each flow's coupling halves (its WN's input channels)."""
        return tuple(c // 2 for c in self.remaining_channels)

    @property
    def n_remaining_channels(self) -> int:
        """Channels left after the last early output: where reverse flows start."""
        return self.remaining_channels[-1]

    def is_early(self, k: int) -> bool:
        """Whether n_early_size channels leave (forward) / join (reverse) just before flow k."""
        return k > 0 and k % self.n_early_every == 0

    @property
    def cond_channels(self) -> int:
        return self.n_mel_channels * self.n_group

    @classmethod
    def from_dle(cls, config: Mapping[str, Any]) -> "WaveGlowConfig":
        """DLE's constructor kwargs (WN settings nested in `WN_config`, or flat); unknown keys are ignored."""
        flat = {**{k: v for k, v in config.items() if k != "WN_config"}, **dict(config.get("WN_config") or {})}
        names = {f.name for f in fields(cls)} - {"audio"}
        return cls(**{k: int(v) for k, v in flat.items() if k in names}, audio=config.get("audio"))

    def to_dle(self) -> dict[str, Any]:
        return dict(n_mel_channels=self.n_mel_channels, n_flows=self.n_flows, n_group=self.n_group,
                    n_early_every=self.n_early_every, n_early_size=self.n_early_size,
                    WN_config=dict(n_layers=self.n_layers, kernel_size=self.kernel_size,
                                   n_channels=self.n_channels))


# -- parameters -------------------------------------------------------------------------------------------------
# The nnx module tree below is the only parameter layout: checkpoints name parameters by its attribute paths
# (upsample.kernel, flows.3.wn.in_layers.5.v, ...), and `fold_params` reads its `nnx.state`.

def _draw(key, make, *shapes):
    """make(numpy Generator) -> float32 arrays of `shapes`, seeded by `key`.

    The draws are numpy's: on this project's CPU they are ~8x faster than jax.random (0.5 s against 3.8 s for
    WaveGlow-256's 88M weights). Under a transform (nnx.jit, nnx.eval_shape) the same numpy code runs in a host
    callback, so a model built either way gets the same weights, bit for bit.
    """
    def host(data):
        rng = np.random.default_rng(np.asarray(data, np.uint32).ravel().tolist())
        out = tuple(np.asarray(a, np.float32) for a in make(rng))
        assert [a.shape for a in out] == [tuple(s) for s in shapes]
        return out

    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    if isinstance(data, jax.core.Tracer):
        return jax.pure_callback(host, tuple(jax.ShapeDtypeStruct(s, F32) for s in shapes), data,
                                 vmap_method="sequential")
    return tuple(jnp.asarray(a) for a in host(data))


def _torch_default(rng, shape, fan_in):
    """torch's default conv initialisation: kernel and bias ~ U(+-1/sqrt(fan_in))."""
    bound = np.float32(1.0 / np.sqrt(fan_in))

    def uniform(s):
        x = rng.random(s, dtype=np.float32)
        x *= 2
        x -= 1
        x *= bound
        return x
    return uniform(shape), uniform(shape[-1:])


class Conv(nnx.Module):
    """A plain conv's parameters: kernel (taps, in, out) or (in, out), optional bias (out,)."""

    def __init__(self, kernel, bias=None):
        self.kernel = nnx.Param(kernel)
        if bias is not None:
            self.bias = nnx.Param(bias)


class WNConv(nnx.Module):
    """A weight-normalised conv's parameters: direction v (taps, in, out) or (in, out), magnitude g (out,), bias.

    Initialised as torch initialises DLE's convs: torch's default for v and bias, then weight norm's g = |v|.
    """

    def __init__(self, d_in: int, d_out: int, taps: int | None = None, *, key: jax.Array):
        shape = (d_in, d_out) if taps is None else (taps, d_in, d_out)

        def make(rng):
            v, bias = _torch_default(rng, shape, d_in * (taps or 1))
            return np.linalg.norm(v.reshape(-1, d_out), axis=0), v, bias
        g, v, bias = _draw(key, make, (d_out,), shape, (d_out,))
        self.g, self.v, self.bias = nnx.Param(g), nnx.Param(v), nnx.Param(bias)


class WN(nnx.Module):
    """The WaveNet-like network of one affine coupling: n_half audio channels + grouped mel -> (b, log_s)."""

    def __init__(self, n_half: int, cfg: WaveGlowConfig, *, key: jax.Array):
        c, n_layers = cfg.n_channels, cfg.n_layers
        keys = iter(jax.random.split(key, 1 + 3 * n_layers))
        self.start = WNConv(n_half, c, key=next(keys))
        self.in_layers = nnx.List([WNConv(c, 2 * c, cfg.kernel_size, key=next(keys)) for _ in range(n_layers)])
        self.cond_layers = nnx.List([WNConv(cfg.cond_channels, 2 * c, key=next(keys)) for _ in range(n_layers)])
        # the last layer has no residual half
        self.res_skip_layers = nnx.List([WNConv(c, 2 * c if i < n_layers - 1 else c, key=next(keys))
                                         for i in range(n_layers)])
        # zero at construction (as in DLE): every coupling starts as the identity
        self.end = Conv(jnp.zeros((c, 2 * n_half), F32), jnp.zeros((2 * n_half,), F32))


def _rotation(rng, n: int) -> np.ndarray:
    """A uniformly random n x n rotation (orthogonal, determinant +1)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    q = q * np.where(np.diag(r) < 0, -1.0, 1.0)
    q[:, 0] *= np.sign(np.linalg.det(q))
    return q


class Flow(nnx.Module):
    """One step of the flow: invertible 1x1 conv (kernel = W.T), then an affine coupling driven by a WN."""

    def __init__(self, n: int, cfg: WaveGlowConfig, *, key: jax.Array):
        k_rotation, k_wn = jax.random.split(key)
        (kernel,) = _draw(k_rotation, lambda rng: (_rotation(rng, n).T,), (n, n))
        self.convinv = Conv(kernel)
        self.wn = WN(n // 2, cfg, key=k_wn)


# -- pure computation -------------------------------------------------------------------------------------------

class FoldedWN(NamedTuple):
    """One coupling's WN as the matrices it multiplies by. In `Folded`, every leaf gains a leading flow axis."""
    start_w: jax.Array  # (n_half, C) dtype
    start_b: jax.Array  # (C,) f32
    in_w: tuple  # per layer (taps*C, 2C) dtype: the taps stacked along the input
    cond_w: jax.Array  # (n_group*n_mel, n_layers*2C) dtype, rows in (sample, mel) order
    cond_b: jax.Array  # (n_layers*2C,) f32: cond and in_layer biases together
    res_w: tuple  # per layer: (C, C + 2*n_half) [residual | skip @ end]; last layer (C, 2*n_half)
    res_b: tuple  # per layer but the last: (C,) f32 residual bias
    out_b: jax.Array  # (2*n_half,) f32: end bias + all skip biases through `end`


class Folded(NamedTuple):
    """A WaveGlow's weights as `fold_params` makes them for the computation."""
    up_w: jax.Array  # (n_mel, kernel*n_mel) dtype: x @ up_w gives every tap's contribution
    up_b: jax.Array  # (n_mel,) f32
    stages: tuple  # per stage (flows between two early outputs): (convinv (n, c, c) f32, FoldedWN stacked)


def _precision(dtype):
    return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else jax.lax.Precision.DEFAULT


def _dot(x, w):
    """x (..., K) @ w (K, N), operands in w's dtype, float32 accumulation and result."""
    return jnp.dot(x.astype(w.dtype), w, precision=_precision(w.dtype), preferred_element_type=F32)


def _weight_norm(conv):
    """DLE's weight norm of a WNConv's state: v scaled per output channel (the last axis here) to have norm g."""
    v = conv.v[...]
    norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=tuple(range(v.ndim - 1))))
    return v * (conv.g[...] / norm)


def _fold_wn(p, cfg: WaveGlowConfig, dtype) -> FoldedWN:
    """One WN's state (`nnx.state(WN)`) -> FoldedWN."""
    hi = jax.lax.Precision.HIGHEST
    n_mel, c, layers = cfg.n_mel_channels, cfg.n_channels, range(cfg.n_layers)
    end_w, end_b = p.end.kernel[...], p.end.bias[...]
    in_w = tuple(_weight_norm(p.in_layers[i]).reshape(-1, 2 * c).astype(dtype) for i in layers)
    cond = jnp.concatenate([_weight_norm(p.cond_layers[i]) for i in layers], axis=1)
    # DLE's grouped-mel channel is mel * n_group + sample; ours is sample * n_mel + mel
    cond_w = cond.reshape(n_mel, cfg.n_group, -1).transpose(1, 0, 2).reshape(cfg.cond_channels, -1)
    cond_b = jnp.concatenate([p.cond_layers[i].bias[...] + p.in_layers[i].bias[...] for i in layers])
    res_w, res_b, out_b = [], [], end_b
    for i in layers:
        w, rb = _weight_norm(p.res_skip_layers[i]), p.res_skip_layers[i].bias[...]
        if i < cfg.n_layers - 1:
            res_w.append(jnp.concatenate([w[:, :c], jnp.dot(w[:, c:], end_w, precision=hi)], axis=1))
            res_b.append(rb[:c])
            out_b = out_b + jnp.dot(rb[c:], end_w, precision=hi)
        else:
            res_w.append(jnp.dot(w, end_w, precision=hi))
            out_b = out_b + jnp.dot(rb, end_w, precision=hi)
    return FoldedWN(_weight_norm(p.start).astype(dtype), p.start.bias[...], in_w, cond_w.astype(dtype), cond_b,
                    tuple(w.astype(dtype) for w in res_w), tuple(res_b), out_b)


def _fold_stage(flows, cfg: WaveGlowConfig, dtype, inverse: bool):
    """The `Flow` states of one stage -> (1x1 convs (n, c, c) f32, FoldedWN with a leading flow axis)."""
    ws = [f.convinv.kernel[...] for f in flows]
    ws = [jnp.linalg.inv(w) for w in ws] if inverse else ws
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *[f.wn for f in flows])
    return jnp.stack(ws), jax.vmap(lambda p: _fold_wn(p, cfg, dtype))(stacked)


def fold_params(params: nnx.State, cfg: WaveGlowConfig, dtype, *, inverse: bool) -> Folded:
    """A WaveGlow's parameters (`nnx.state(model)`) -> the matrices the computation multiplies by (differentiable).

    Weight norm is applied; all layers' conditioning convs of a WN are concatenated into one matrix whose rows
    are reordered to the grouped mel's (sample, mel) order; the `end` conv is multiplied into each layer's skip
    half (skip outputs are only ever summed and then passed through `end`, a linear map); in_layer biases are
    added to the conditioning biases. With inverse=True the 1x1 convs are inverted (float32, full precision).
    Flows of equal width are stacked (one `lax.scan` each: a quarter of the code to compile).
    """
    up_k = params.upsample.kernel[...]
    up_w = jnp.transpose(up_k, (1, 0, 2)).reshape(cfg.n_mel_channels, -1).astype(dtype)
    stages = tuple(_fold_stage([params.flows[k] for k in flows], cfg, dtype, inverse) for flows in _stages(cfg))
    return Folded(up_w, params.upsample.bias[...], stages)


_fold_stage_jit = jax.jit(_fold_stage, static_argnames=("cfg", "dtype", "inverse"))


def fold_flat(reader, cfg: WaveGlowConfig, dtype) -> Folded:
    """`fold_params(..., inverse=True)` from flat arrays in `jtts.checkpoint` names, read one flow at a time
    from `reader` (a `jtts.checkpoint.ParamReader`: `.shapes` {name: shape}, `.read(names)` {name: array}),
    each flow's arrays dropped once folded and each stage's folded flows stacked.

    Why not build the module and fold it: that keeps three copies of the weights alive at once (the restored
    arrays, the module's and the folded ones; 335 MB each for WaveGlow-256). Here only the folded weights
    accumulate, and loading peaks at about one copy plus one stage (its folded flows and their stack).
    """
    from flax import traverse_util

    from jtts.checkpoint import release_freed_memory

    def take(prefix):  # the arrays under `prefix`, nested as the module's state (list indices as ints)
        arrays = reader.read([n for n in reader.shapes if n.startswith(prefix)])
        return nnx.State(traverse_util.unflatten_dict(
            {tuple(int(k) if k.isdigit() else k for k in n[len(prefix):].split(".")): v for n, v in arrays.items()}))

    up = take("upsample.")
    up_w = jnp.asarray(np.transpose(up.kernel, (1, 0, 2)).reshape(cfg.n_mel_channels, -1), dtype)
    up_b = jnp.asarray(up.bias, F32)
    del up
    stages = []
    for flows in _stages(cfg):
        # flow by flow (a stage of WaveGlow-256 is 110 MB), then stacked as `fold_params` stacks them
        folded = [jax.block_until_ready(_fold_stage_jit([take(f"flows.{k}.")], cfg=cfg, dtype=jnp.dtype(dtype),
                                                        inverse=True)) for k in flows]
        stages.append(jax.tree.map(lambda *a: jnp.concatenate(a), *folded))
        del folded
        release_freed_memory()
    return Folded(up_w, up_b, tuple(stages))


def _stages(cfg: WaveGlowConfig) -> list[range]:
    """Flow indices between early outputs: [0, every), [every, 2*every), ..."""
    bounds = [k for k in range(cfg.n_flows) if k == 0 or cfg.is_early(k)] + [cfg.n_flows]
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def _upsample(f: Folded, mel, n_out: int):
    """DLE's ConvTranspose1d(kernel 1024, stride 256) on mel (B, n_mel, F), first n_out samples -> (B, n_out, n_mel).

    One matmul gives every frame's 1024-sample contribution; the 4 overlapping 256-sample blocks are added.
    """
    b, n_mel, frames = mel.shape
    taps = UPSAMPLE_KERNEL // UPSAMPLE_STRIDE
    p = _dot(jnp.swapaxes(mel, 1, 2), f.up_w).reshape(b, frames, taps, UPSAMPLE_STRIDE, n_mel)
    n_blocks = -(-n_out // UPSAMPLE_STRIDE)
    y = 0.0
    for q in range(taps):  # block n receives tap q of frame n - q
        y = y + jnp.pad(p[:, :, q], ((0, 0), (q, taps - 1 - q), (0, 0), (0, 0)))[:, :n_blocks]
    return y.reshape(b, n_blocks * UPSAMPLE_STRIDE, n_mel)[:, :n_out] + f.up_b


def _group(x, n_group: int):
    """(B, T, C) -> (B, T // n_group, n_group * C), trailing samples dropped (channel = sample * C + c)."""
    b, t, c = x.shape
    tg = t // n_group
    return x[:, :tg * n_group].reshape(b, tg, n_group * c)


def _shift(x, s: int):
    """y[:, t] = x[:, t + s], zero where t + s falls outside."""
    t = x.shape[1]
    if s == 0:
        return x
    if s > 0:
        return jnp.pad(x, ((0, 0), (0, s), (0, 0)))[:, s:s + t]
    return jnp.pad(x, ((0, 0), (-s, 0), (0, 0)))[:, :t]


# Above this many float32 conditioning values per WN, each layer's conditioning is computed where it is used
# (~5% slower on CPU) instead of all layers' in one matmul up front.
_COND_AT_ONCE_LIMIT = 1 << 26


def _wn(p: FoldedWN, cfg: WaveGlowConfig, a0, spect, valid=None):
    """One coupling's WN: a0 (B, Tg, n_half) f32, spect (B, Tg, n_group*n_mel) -> (B, Tg, 2*n_half) f32.

    valid: None, or the number of real groups: the dilated convs then see zeros from there on (as if the
    input ended there), so padding a batch to a bucketed length leaves the first `valid` groups exact.
    """
    c, k = cfg.n_channels, cfg.kernel_size
    x = _dot(a0, p.start_w) + p.start_b
    b, tg, _ = x.shape
    keep = None if valid is None else (jnp.arange(tg) < valid)[None, :, None]
    at_once = b * tg * p.cond_w.shape[1] <= _COND_AT_ONCE_LIMIT
    cond_all = _dot(spect, p.cond_w) + p.cond_b if at_once else None
    skip = None
    for i in range(cfg.n_layers):
        d = 2 ** i
        cols = slice(i * 2 * c, (i + 1) * 2 * c)
        cond = cond_all[..., cols] if at_once else _dot(spect, p.cond_w[:, cols]) + p.cond_b[cols]
        xd = (x if keep is None else jnp.where(keep, x, 0.0)).astype(p.in_w[i].dtype)
        taps = jnp.concatenate([_shift(xd, (j - (k - 1) // 2) * d) for j in range(k)], axis=-1)
        y = _dot(taps, p.in_w[i]) + cond
        acts = jnp.tanh(y[..., :c]) * jax.nn.sigmoid(y[..., c:])
        rs = _dot(acts, p.res_w[i])
        if i < cfg.n_layers - 1:
            x = x + rs[..., :c] + p.res_b[i]
            rs = rs[..., c:]
        skip = rs if skip is None else skip + rs
    return skip + p.out_b


def _forward(params, mel, audio, *, cfg: WaveGlowConfig, dtype):
    """DLE's training direction -> (z (B, n_group, Tg), [log_s (B, n_half, Tg)], [log_det_W ()])."""
    f = fold_params(params, cfg, dtype, inverse=False)
    bsz, t = audio.shape
    tg = t // cfg.n_group
    spect = _group(_upsample(f, mel, tg * cfg.n_group), cfg.n_group)
    x = _group(audio[..., None], cfg.n_group)

    def flow(x, p):
        w, wn = p
        x = jnp.dot(x, w, precision=jax.lax.Precision.HIGHEST)
        # log|det W|: DLE's logdet(W) wherever that is defined (det W > 0)
        log_det = bsz * tg * jnp.linalg.slogdet(w)[1]
        h = x.shape[-1] // 2
        out = _wn(wn, cfg, x[..., :h], spect)
        log_s = out[..., h:]
        x = jnp.concatenate([x[..., :h], jnp.exp(log_s) * x[..., h:] + out[..., :h]], axis=-1)
        return x, (jnp.swapaxes(log_s, 1, 2), log_det)

    outputs, log_s_list, log_det_list = [], [], []
    for s, stage in enumerate(f.stages):
        if s > 0:
            outputs.append(x[..., :cfg.n_early_size])
            x = x[..., cfg.n_early_size:]
        x, (log_s, log_det) = jax.lax.scan(flow, x, stage)
        log_s_list += list(log_s)
        log_det_list += list(log_det)
    z = jnp.concatenate(outputs + [x], axis=-1)
    return jnp.swapaxes(z, 1, 2), log_s_list, log_det_list


def _infer(f: Folded, mel, z, sigma, valid, *, cfg: WaveGlowConfig):
    """Reverse flows. z (B, n_group, Tg) in DLE infer_onnx's layout, all of it scaled by sigma -> (B, Tg*n_group).

    valid: number of groups that are real (the rest pads mel and z to a bucketed size).
    """
    bsz, _, frames = mel.shape
    n_out = frames * UPSAMPLE_STRIDE  # DLE trims kernel - stride samples off the end
    spect = _group(_upsample(f, mel, n_out), cfg.n_group)
    z = jnp.swapaxes(z, 1, 2) * sigma
    used = cfg.n_remaining_channels

    def flow(x, p):
        w_inv, wn = p
        h = x.shape[-1] // 2
        out = _wn(wn, cfg, x[..., :h], spect, valid)
        x1 = (x[..., h:] - out[..., :h]) / jnp.exp(out[..., h:])
        x = jnp.dot(jnp.concatenate([x[..., :h], x1], axis=-1), w_inv, precision=jax.lax.Precision.HIGHEST)
        return x, None

    x = z[..., :used]
    for s in reversed(range(len(f.stages))):
        x, _ = jax.lax.scan(flow, x, f.stages[s], reverse=True)
        if s > 0:
            x = jnp.concatenate([z[..., used:used + cfg.n_early_size], x], axis=-1)
            used += cfg.n_early_size
    return x.reshape(bsz, -1)


def _bucket(frames: int) -> int:
    """Mel lengths are padded to a few sizes per octave (at most 1/8 more work) so that few shapes compile."""
    step = 1 << max(0, frames.bit_length() - 4)
    return -(-frames // step) * step


def _check_mel(mel, cfg: WaveGlowConfig):
    if mel.ndim != 3 or mel.shape[1] != cfg.n_mel_channels or mel.shape[2] < 1:
        raise ValueError(f"mel must be (B, {cfg.n_mel_channels}, frames), got {mel.shape}")


_forward_jit = jax.jit(_forward, static_argnames=("cfg", "dtype"))
_infer_jit = jax.jit(_infer, static_argnames=("cfg",))
_fold_jit = jax.jit(fold_params, static_argnames=("cfg", "dtype", "inverse"))


@dataclass(frozen=True)
class WaveGlowInference:
    """A WaveGlow ready to synthesise: its config and its folded inference weights (weight norm applied, 1x1
    convs inverted, `end` folded into the skip paths), made by `WaveGlow.inference()`.

    Immutable: a snapshot of the parameters it was folded from (changing the WaveGlow afterwards does not reach
    it; fold again). A JAX pytree whose leaves are the weights. The compute dtype is that of the weights.
    """
    config: WaveGlowConfig
    weights: Folded

    @property
    def dtype(self) -> jnp.dtype:
        return self.weights.up_w.dtype

    def inference(self) -> "WaveGlowInference":
        """Itself, so that code taking a WaveGlow or a WaveGlowInference calls `.inference()` and folds at most once."""
        return self

    @classmethod
    def from_checkpoint(cls, path, *, dtype=None) -> "WaveGlowInference":
        """The folded WaveGlow of a model directory, without building the trainable module first (a third of
        the peak memory of `WaveGlow.from_checkpoint(path).inference()`, the same weights)."""
        from jtts.models import load

        return load(path, kind="waveglow", dtype=dtype, inference=True)

    def infer(self, mel, *, sigma: float = 0.9, z=None, key=None) -> jax.Array:
        """Mel (B, n_mel, F) -> float32 audio (B, F * 256), as DLE's `infer`.

        The noise is z (B, n_group, F * 256 // n_group) in DLE `infer_onnx`'s layout and order: z[:, :n_rem]
        starts the reverse flows, then the next n_early_size channels join at each early-output point. As in
        DLE's `infer`, ALL of z is scaled by sigma (DLE's `infer_onnx` scales only the first n_rem channels), so
        `infer(mel, sigma=s, z=z)` equals DLE `infer_onnx(mel, z2, s)` where z2 is z with channels n_rem: times s.
        Without z, z = jax.random.normal(key, ...) in float32, so a key gives the same noise whatever the
        compute dtype. sigma == 0 needs no key and is deterministic.
        """
        cfg = self.config
        mel = jnp.asarray(mel, F32)
        _check_mel(mel, cfg)
        shape = (mel.shape[0], cfg.n_group, mel.shape[2] * UPSAMPLE_STRIDE // cfg.n_group)
        if z is None:
            if sigma == 0:
                z = jnp.zeros(shape, F32)
            elif key is None:
                raise ValueError("infer draws noise: pass key= (or z=, or sigma=0)")
            else:
                z = jax.random.normal(key, shape, F32)
        z = jnp.asarray(z, F32)
        if z.shape != shape:
            raise ValueError(f"z must have shape {shape} for this mel, got {z.shape}")
        frames, padded = mel.shape[2], _bucket(mel.shape[2])
        if padded > frames:  # exact: see _wn's `valid`; the padding's output is cut off
            mel = jnp.pad(mel, ((0, 0), (0, 0), (0, padded - frames)))
            z = jnp.pad(z, ((0, 0), (0, 0), (0, padded * UPSAMPLE_STRIDE // cfg.n_group - shape[2])))
        audio = _infer_jit(self.weights, mel, z, jnp.asarray(sigma, F32), jnp.asarray(shape[2], jnp.int32), cfg=cfg)
        return audio[:, :frames * UPSAMPLE_STRIDE]


jax.tree_util.register_dataclass(WaveGlowInference, data_fields=["weights"], meta_fields=["config"])


class WaveGlow(FromCheckpoint, nnx.Module):
    """WaveGlow's parameters (float32, DLE's weight norm kept) and its training direction; `inference()` folds
    them into the object that synthesises."""

    def __init__(self, config: WaveGlowConfig = WaveGlowConfig(), *, dtype=F32, rngs: nnx.Rngs):
        self.config = config
        self.dtype = jnp.dtype(dtype)
        # Submodules take plain keys split from one: under a transform, each draw from nnx.Rngs costs time
        # proportional to the program traced so far (flax 0.12), which made nnx.eval_shape 3x slower.
        k_up, *k_flows = jax.random.split(rngs.params(), 1 + config.n_flows)
        n_mel = config.n_mel_channels
        shape = (UPSAMPLE_KERNEL, n_mel, n_mel)
        # torch counts a ConvTranspose1d's fan-in over (out, kernel)
        up = _draw(k_up, lambda rng: _torch_default(rng, shape, n_mel * UPSAMPLE_KERNEL), shape, (n_mel,))
        self.upsample = Conv(*up)
        self.flows = nnx.List([Flow(n, config, key=k) for n, k in zip(config.remaining_channels, k_flows)])

    def __call__(self, mel, audio):
        """DLE's forward (training direction): mel (B, n_mel, F), audio (B, T) with T <= (F + 3) * 256 ->
        (z (B, n_group, T // n_group), log_s_list [(B, n_half_k, T // n_group)], log_det_W_list [()])."""
        mel, audio = jnp.asarray(mel, F32), jnp.asarray(audio, F32)
        _check_mel(mel, self.config)
        if audio.ndim != 2 or audio.shape[0] != mel.shape[0]:
            raise ValueError(f"audio must be (B, T) with B = {mel.shape[0]}, got {audio.shape}")
        longest = (mel.shape[2] - 1) * UPSAMPLE_STRIDE + UPSAMPLE_KERNEL
        if audio.shape[1] > longest:
            raise ValueError(f"audio of {audio.shape[1]} samples is longer than {mel.shape[2]} mel frames cover "
                             f"({longest})")
        if audio.shape[1] < self.config.n_group:
            raise ValueError(f"audio needs at least n_group={self.config.n_group} samples")
        return _forward_jit(nnx.state(self), mel, audio, cfg=self.config, dtype=self.dtype)

    def inference(self, dtype=None) -> WaveGlowInference:
        """Folds the current parameters into a WaveGlowInference that computes in `dtype` (default: the model's).

        Folding reads every weight: ~0.3 s for WaveGlow-256 on a 2-core CPU, a quarter of the time one second of
        audio takes. Fold once and call the result's `infer` for every mel.
        """
        dtype = self.dtype if dtype is None else jnp.dtype(dtype)
        return WaveGlowInference(self.config, _fold_jit(nnx.state(self), cfg=self.config, dtype=dtype, inverse=True))

    @staticmethod
    def inference_from_flat(config: WaveGlowConfig, reader, dtype=F32) -> WaveGlowInference:
        """What `jtts.models.load(..., inference=True)` returns: the WaveGlowInference of a model directory
        (`reader`: its `jtts.checkpoint.ParamReader`), folded flow by flow without the module (`fold_flat`)."""
        return WaveGlowInference(config, fold_flat(reader, config, jnp.dtype(dtype)))

    def infer(self, mel, *, sigma: float = 0.9, z=None, key=None) -> jax.Array:
        """`self.inference().infer(mel, ...)` (see WaveGlowInference.infer): convenient for one call, but it folds
        the weights every time (~0.3 s for WaveGlow-256 on CPU); hold `inference()` to synthesise repeatedly."""
        return self.inference().infer(mel, sigma=sigma, z=z, key=key)


def waveglow_loss(z, log_s_list, log_det_W_list, sigma: float = 1.0):
    """DLE's WaveGlow NLL: (sum z^2 / (2 sigma^2) - sum log_s - sum log_det_W) / z.size, in float32."""
    z = jnp.asarray(z, F32)
    log_s_total = sum(jnp.sum(jnp.asarray(s, F32)) for s in log_s_list)
    log_det_total = sum(jnp.asarray(d, F32) for d in log_det_W_list)
    loss = jnp.sum(z * z) / (2.0 * sigma * sigma) - log_s_total - log_det_total
    return loss / z.size
