"""Models and timed runs for benchmarks/gpu_bench.py.

jtts, the PyTorch reference (tests/reference) and, when given, NVIDIA's own DLE modules hold the same random
NGC-shaped weights: the reference draws them, they are written as a DLE training checkpoint and converted with
`jtts.convert` (the path a user's NGC file takes), and DLE loads the same state_dict. Everything runs on the
device JAX and torch see: the GPU on the lent machine, the CPU in the dry run.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import time
from pathlib import Path

import numpy as np

import bench  # the CPU benchmark's timing helpers: first call, interleaved medians, torch sync

HOP, SR = 256, 22050
# 128 characters -> 128 symbols (no digits or abbreviations for the cleaners to expand): the input size of
# NVIDIA's published "128-character" inference figures.
SENTENCE = ("The old lighthouse keeper climbed the spiral stairs every evening, lit the great lamp, and watched "
            "the ships glide into harbour.")


def amp(device, low: bool):
    """The reference's low-precision mode: fp16 autocast on a GPU. On the CPU (dry run) bf16 autocast runs the
    same mixed-dtype code paths (a dtype mismatch shows up here rather than on the GPU) without CPU fp16's
    hundredfold slowdown."""
    import torch

    if not low:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)


def build_weights(work: Path, sizes) -> tuple:
    """Random live weights, written as DLE training checkpoints and converted into work/tacotron2, work/waveglow.

    The Tacotron 2 gate is silenced (weights 0, bias -10) so that every framework decodes exactly the number of
    steps asked for, early stopping on or off. Returns (reference Tacotron 2, reference WaveGlow, timings)."""
    import torch

    from jtts.convert import convert
    from reference.weights import live_tacotron2, live_waveglow, save_dle_checkpoint

    t0 = time.perf_counter()
    taco = live_tacotron2(sizes.taco, seed=0)
    with torch.no_grad():
        gate = taco.decoder.gate_layer.linear_layer
        gate.weight.zero_()
        gate.bias.fill_(-10.0)
    wg = live_waveglow(sizes.wg, seed=0)
    t1 = time.perf_counter()
    for name, model, cfg in (("tacotron2", taco, sizes.taco), ("waveglow", wg, sizes.wg)):
        # no Adam moments: WaveGlow-256's would triple the file to 1 GB and the converter ignores them
        save_dle_checkpoint(work / f"{name}.pt", model, cfg, module_prefix=True, with_optimizer=False)
        convert(work / f"{name}.pt", work / name)
    return taco, wg, {"weights_s": t1 - t0, "convert_s": time.perf_counter() - t1}


class Models:
    """jtts per dtype from the converted directories; the reference and DLE when given."""

    def __init__(self, work: Path, sizes, dtypes, device, refs=None, dle_path=None, dle_amp="half"):
        import jax.numpy as jnp
        import torch

        from jtts import Denoiser, Tacotron2, WaveGlow

        self.sizes, self.device, self.dle_amp, self.timings = sizes, device, dle_amp, {}
        t = time.perf_counter()
        self.taco = {d: Tacotron2.from_checkpoint(work / "tacotron2", dtype=jnp.dtype(d)) for d in dtypes}
        self.wg = {d: WaveGlow.from_checkpoint(work / "waveglow", dtype=jnp.dtype(d)) for d in dtypes}
        self.timings["load_s"] = time.perf_counter() - t
        t = time.perf_counter()
        self.den = {d: Denoiser(self.wg[d]) for d in dtypes}  # compiles WaveGlow once for the bias spectrum
        self.timings["denoiser_setup_s"] = time.perf_counter() - t
        self.ref_taco = self.ref_wg = self.ref_den = None
        self.dle = None
        if refs is not None:
            from reference.waveglow_torch import Denoiser as RefDenoiser

            self.ref_taco, self.ref_wg = (r.to(device).eval() for r in refs)
            with torch.no_grad():
                self.ref_den = RefDenoiser(self.ref_wg).to(device)
            if dle_path:
                self.dle = self._load_dle(dle_path, refs)

    def _load_dle(self, path, refs) -> dict:
        """{low: (Tacotron 2, WaveGlow, Denoiser)} built as DLE's inference.py builds them: weight norm removed
        from WaveGlow; for low precision either .half() (its --fp16) or float32 modules under fp16 autocast."""
        import torch

        from _dle import load

        models, _, dle_denoiser = load(path)
        taco = models.get_model("Tacotron2", dict(self.sizes.taco, decoder_no_early_stopping=False), cpu_run=True)
        taco.load_state_dict(refs[0].state_dict(), strict=True)
        wg = models.get_model("WaveGlow", self.sizes.wg, cpu_run=True)
        wg.load_state_dict(refs[1].state_dict(), strict=True)
        wg = wg.remove_weightnorm(wg)
        out = {}
        for low in (False, True):
            t, w = copy.deepcopy(taco).eval(), copy.deepcopy(wg).eval()
            if low and self.dle_amp == "half":
                # fp16 on a GPU; on the CPU (dry run) bfloat16, for the same reason as in `amp`
                half = torch.float16 if self.device.type == "cuda" else torch.bfloat16
                t, w = t.to(half), w.to(half)
            t, w = t.to(self.device), w.to(self.device)
            with torch.no_grad():
                out[low] = (t, w, dle_denoiser(w).to(self.device))
        return out

    def dle_context(self, low: bool):
        return amp(self.device, low) if self.dle_amp == "autocast" else contextlib.nullcontext()


def _measure(fns: dict, repeats: int) -> tuple[dict, dict]:
    """-> (median seconds, first-call seconds) per key. The first call compiles jtts' programs and warms torch."""
    first = {k: bench._first_call(f) for k, f in fns.items()}
    return bench._median_interleaved(fns, repeats), first


# -- Tacotron 2 decoder -----------------------------------------------------------------------------------------

def _jtts_decode(taco, tok, ln, key, steps, early):
    taco.infer(tok, ln, key=key, max_decoder_steps=steps, early_stopping=early)[0].block_until_ready()


def _ref_decode(m, tok, ln, steps, low):
    import torch

    with torch.no_grad(), amp(m.device, low):
        m.ref_taco.infer(tok, ln, prenet_dropout=0.5, max_decoder_steps=steps, early_stopping=True)
    bench._sync(m.device)


def _dle_decode(m, tok, ln, steps, low):
    import torch

    net = m.dle[low][0]
    net.decoder.max_decoder_steps = steps
    with torch.no_grad(), m.dle_context(low):
        net.infer(tok, ln)
    bench._sync(m.device)


def decoder(m: Models, dtype: str, repeats: int, early_off: bool = True) -> dict:
    """Decoder cost per step at batch 1 for 128 symbols: the slope of whole-`infer` time between the two step
    counts in sizes.steps, so encoder, postnet and dispatch (paid once per call) drop out. jtts runs with early
    stopping on (its while-loop condition then depends on the data) and, if early_off, off (a known trip count);
    the reference and DLE run as DLE does, checking every step whether all utterances stopped."""
    import jax
    import torch

    s1, s2 = m.sizes.steps
    tokens = torch.randint(1, 148, (1, 128), generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([128])
    tok, ln, key = tokens.numpy(), lengths.numpy(), jax.random.key(0)
    low = dtype != "float32"
    fns = {}
    for early in (True, False) if early_off else (True,):
        for s in (s1, s2):
            fns["jtts", early, s] = functools.partial(_jtts_decode, m.taco[dtype], tok, ln, key, s, early)
    if m.ref_taco is not None:
        td, ld = tokens.to(m.device), lengths.to(m.device)
        for s in (s1, s2):
            fns["reference", True, s] = functools.partial(_ref_decode, m, td, ld, s, low)
            if m.dle:
                fns["DLE", True, s] = functools.partial(_dle_decode, m, td, ld, s, low)
    med, first = _measure(fns, repeats)
    out = {}
    for who, early, s in fns:
        if s != s2:
            continue
        tag = who if early else f"{who}_no_early_stop"
        out[f"{tag}_step_ms"] = (med[who, early, s2] - med[who, early, s1]) / (s2 - s1) * 1e3
        out[f"{tag}_call_ms"] = med[who, early, s2] * 1e3
        if who == "jtts":
            out[f"{tag}_compile_s"] = first[who, early, s1] + first[who, early, s2] - med[who, early, s1] - med[who, early, s2]
    return out


# -- WaveGlow ---------------------------------------------------------------------------------------------------

def waveglow(m: Models, dtype: str, batch: int, repeats: int) -> dict:
    """Audio samples per second for `batch` mels of sizes.wg_frames frames, sigma 0.9; jtts and the reference get
    the same noise z, DLE draws its own."""
    import jax
    import torch

    frames = m.sizes.wg_frames
    g = torch.Generator().manual_seed(2)
    mel = torch.randn(batch, 80, frames, generator=g) - 4.0
    z = torch.randn(batch, 8, frames * HOP // 8, generator=g)
    low = dtype != "float32"
    mel_j, z_j = jax.device_put(mel.numpy()), jax.device_put(z.numpy())
    wg = m.wg[dtype]
    fns = {"jtts": lambda: wg.infer(mel_j, sigma=0.9, z=z_j).block_until_ready()}
    if m.ref_wg is not None:
        md, zd = mel.to(m.device), z.to(m.device)

        def run_ref():
            with torch.no_grad(), amp(m.device, low):
                m.ref_wg.infer(md, sigma=0.9, z=zd, sigma_on_early=True)
            bench._sync(m.device)
        fns["reference"] = run_ref
        if m.dle:
            net = m.dle[low][1]
            md_dle = md.to(net.upsample.weight.dtype)

            def run_dle():
                with torch.no_grad(), m.dle_context(low):
                    net.infer(md_dle, sigma=0.9)
                bench._sync(m.device)
            fns["DLE"] = run_dle
    med, first = _measure(fns, repeats)
    samples = batch * frames * HOP
    out = {f"{k}_msps": samples / v / 1e6 for k, v in med.items()}
    out["jtts_compile_s"] = first["jtts"] - med["jtts"]
    out["samples"] = samples
    return out


# -- end to end ---------------------------------------------------------------------------------------------------

def end_to_end(m: Models, dtype: str, repeats: int) -> dict:
    """SENTENCE -> ids -> Tacotron 2 (sizes.steps[1] frames, early stopping on) -> WaveGlow-256 (sigma 0.9) ->
    denoiser (0.01), batch 1: latency of the whole call, text front end included."""
    import jax
    import torch

    from jtts.text import text_to_sequence

    steps = m.sizes.steps[1]
    low = dtype != "float32"
    taco, wg, den = m.taco[dtype], m.wg[dtype], m.den[dtype]
    k_dec, k_wg = jax.random.key(0), jax.random.key(1)

    def run_jtts():
        ids = np.asarray([text_to_sequence(SENTENCE)], np.int32)
        mel, _, _ = taco.infer(ids, np.array([ids.shape[1]], np.int32), key=k_dec, max_decoder_steps=steps)
        den(wg.infer(mel, sigma=0.9, key=k_wg), strength=0.01).block_until_ready()

    fns = {"jtts": run_jtts}
    if m.ref_taco is not None:
        def ids_on_device():
            ids = torch.tensor([text_to_sequence(SENTENCE)], device=m.device)
            return ids, torch.tensor([ids.shape[1]], device=m.device)

        def run_ref():
            ids, n = ids_on_device()
            with torch.no_grad():
                with amp(m.device, low):
                    mel = m.ref_taco.infer(ids, n, prenet_dropout=0.5, max_decoder_steps=steps,
                                           early_stopping=True)["mel_postnet"]
                    audio = m.ref_wg.infer(mel, sigma=0.9)
                m.ref_den(audio.float(), strength=0.01)
            bench._sync(m.device)
        fns["reference"] = run_ref
        if m.dle:
            t, w, d = m.dle[low]

            def run_dle():
                ids, n = ids_on_device()
                t.decoder.max_decoder_steps = steps
                with torch.no_grad():
                    with m.dle_context(low):
                        mel, _, _ = t.infer(ids, n)
                        audio = w.infer(mel, sigma=0.9)
                    d(audio.float(), strength=0.01)
                bench._sync(m.device)
            fns["DLE"] = run_dle
    med, first = _measure(fns, repeats)
    out = {f"{k}_ms": v * 1e3 for k, v in med.items()}
    out["jtts_compile_s"] = first["jtts"] - med["jtts"]
    out["audio_s"] = steps * HOP / SR
    return out
