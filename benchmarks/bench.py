"""jtts against PyTorch on the same weights, inputs and machine, in one process, interleaved, after warm-up.

    python benchmarks/bench.py --out docs/benchmark-cpu.md          # everything, float32 + bfloat16
    python benchmarks/bench.py --quick                              # short inputs, few repeats (smoke run)
    python benchmarks/bench.py --dle PATH/TO/DLE/PyTorch/SpeechSynthesis/Tacotron2   # NVIDIA's modules too

What is timed (medians over interleaved repeats; the first call of each jtts program is reported apart as
compile time):
  * Tacotron 2 decoder, ms per step at batch 1, 4, 16: 128-symbol inputs, free-running with prenet dropout on
    and early stopping off, so every run decodes the same number of steps (the weights are random).
  * WaveGlow-256 and -512, audio samples per second at batch 1, sigma 0.9.
  * End to end (text ids -> Tacotron 2 -> WaveGlow-256 -> denoiser) for DLE's `phrase_1_128`-sized input,
    600 decoder steps (about 7 s of speech), batch 1 and more: real-time factor = audio seconds / wall seconds.
  * Peak memory of each framework's end-to-end run, each in a fresh subprocess (`--no-memory` skips it).
"PyTorch reference" is tests/reference (DLE's numerics and state-dict layout, eager mode); `--dle` adds
NVIDIA's own classes loaded with the same weights. On a GPU the PyTorch side runs under fp16 autocast (DLE's
AMP inference) when jtts runs in a low-precision dtype.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

SR, HOP = 22050, 256


# Seconds of idleness before every timed call. Both runtimes' worker threads busy-wait for a while after a
# parallel region (libgomp's spin for torch, Eigen's pool for XLA); a call started while the other framework's
# threads still spin loses up to half of a 2-core machine. Measured on the 2-core EPYC: back-to-back
# interleaving showed WaveGlow-256 at 6,100 (jtts) and 2,800 (reference) samples/s against 14,400 and 13,700
# for each alone; with this pause, interleaved figures match the standalone ones.
SETTLE_S = 0.3


def _median_interleaved(fns: dict, repeats: int) -> dict:
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            time.sleep(SETTLE_S)
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def _first_call(fn) -> float:
    time.sleep(SETTLE_S)
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


class Setup:
    """Full-size models with the same random live weights for jtts (per dtype), the reference and DLE."""

    def __init__(self, tmp: Path, dtypes, dle_path, device):
        import jax.numpy as jnp
        import torch

        from jtts import Denoiser, Tacotron2, WaveGlow
        from jtts.convert import convert
        from reference.tacotron2_torch import Tacotron2 as RefTaco
        from reference.tacotron2_torch import tacotron2_config
        from reference.waveglow_torch import Denoiser as RefDenoiser
        from reference.waveglow_torch import waveglow_config
        from reference.weights import live_tacotron2, live_waveglow, save_hub_checkpoint

        self.device = device
        self.taco_cfg = tacotron2_config()
        ref = live_tacotron2(self.taco_cfg, seed=0)
        save_hub_checkpoint(tmp / "t.pt", ref, self.taco_cfg)
        taco_dir = convert(tmp / "t.pt", tmp / "t")
        self.taco = {d: Tacotron2.from_checkpoint(taco_dir, dtype=jnp.dtype(d)) for d in dtypes}
        self.ref_taco = ref.to(device).eval()
        self.wg, self.ref_wg, self.wg_dirs = {}, {}, {}
        for ch in (256, 512):
            cfg = waveglow_config(ch)
            r = live_waveglow(cfg, seed=0)
            save_hub_checkpoint(tmp / f"w{ch}.pt", r, cfg)
            self.wg_dirs[ch] = convert(tmp / f"w{ch}.pt", tmp / f"w{ch}")
            model = WaveGlow.from_checkpoint(self.wg_dirs[ch])
            # folded inference weights per compute dtype; the parameters themselves are not needed after this
            self.wg[ch] = {d: model.inference(jnp.dtype(d)) for d in dtypes}
            del model
            self.ref_wg[ch] = r.to(device).eval()
        self.denoiser = {d: Denoiser(self.wg[256][d]) for d in dtypes}
        with torch.no_grad():
            self.ref_denoiser = RefDenoiser(self.ref_wg[256]).to(device)
        self.dle = None
        if dle_path:
            from _dle import load

            models, _, dle_denoiser = load(dle_path)
            self.dle_models, self.dle_denoiser_cls = models, dle_denoiser
            self.dle = True
        self._ref_taco_cls = RefTaco
        self.jtts_wg_dir = self.wg_dirs[256]

    def dle_tacotron2(self, steps: int):
        net = self.dle_models.get_model("Tacotron2", dict(self.taco_cfg, max_decoder_steps=steps,
                                                          decoder_no_early_stopping=True), cpu_run=True)
        net.load_state_dict(self.ref_taco.state_dict(), strict=True)
        return net.to(self.device).eval()

    def dle_waveglow(self, ch: int):
        from reference.waveglow_torch import waveglow_config

        net = self.dle_models.get_model("WaveGlow", waveglow_config(ch), cpu_run=True)
        net.load_state_dict(self.ref_wg[ch].state_dict(), strict=True)
        return net.to(self.device).eval()


def _autocast(device, low: bool):
    import contextlib

    import torch

    if low and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_tacotron2(s: Setup, dtype: str, batch: int, steps: int, repeats: int) -> dict:
    import jax
    import torch

    g = torch.Generator().manual_seed(batch)
    tokens = torch.randint(1, 148, (batch, 128), generator=g)
    lengths = torch.full((batch,), 128)
    kw = dict(max_decoder_steps=steps, early_stopping=False)
    model = s.taco[dtype]
    tok_np, len_np = tokens.numpy(), lengths.numpy()

    def run_jtts():
        model.infer(tok_np, len_np, key=jax.random.key(0), **kw)[0].block_until_ready()

    td, ld = tokens.to(s.device), lengths.to(s.device)
    low = dtype != "float32"

    def run_ref():
        with _autocast(s.device, low):
            s.ref_taco.infer(td, ld, prenet_dropout=0.5, **kw)
        _sync(s.device)

    fns = {"jtts": run_jtts, "reference": run_ref}
    if s.dle:
        net = s.dle_tacotron2(steps)

        def run_dle():
            with torch.no_grad(), _autocast(s.device, low):
                net.infer(td, ld)
            _sync(s.device)
        fns["DLE"] = run_dle
    compile_s = _first_call(run_jtts)
    run_ref()
    med = _median_interleaved(fns, repeats)
    out = {k: v * 1e3 / steps for k, v in med.items()}
    out["compile_s"] = compile_s - med["jtts"]
    return out


def bench_waveglow(s: Setup, dtype: str, ch: int, frames: int, repeats: int) -> dict:
    import torch

    mel = torch.randn(1, 80, frames, generator=torch.Generator().manual_seed(0)) - 4.0
    z = torch.randn(1, 8, frames * 32, generator=torch.Generator().manual_seed(1))
    model = s.wg[ch][dtype]
    mel_np, z_np = mel.numpy(), z.numpy()
    md, zd = mel.to(s.device), z.to(s.device)
    low = dtype != "float32"

    def run_jtts():
        model.infer(mel_np, sigma=0.9, z=z_np).block_until_ready()

    def run_ref():
        with _autocast(s.device, low):
            s.ref_wg[ch].infer(md, sigma=0.9, z=zd, sigma_on_early=True)
        _sync(s.device)

    fns = {"jtts": run_jtts, "reference": run_ref}
    if s.dle:
        net = s.dle_waveglow(ch)

        def run_dle():
            with torch.no_grad(), _autocast(s.device, low):
                net.infer(md, sigma=0.9)
            _sync(s.device)
        fns["DLE"] = run_dle
    compile_s = _first_call(run_jtts)
    run_ref()
    med = _median_interleaved(fns, repeats)
    samples = frames * HOP
    out = {k: samples / v for k, v in med.items()}
    out["compile_s"] = compile_s - med["jtts"]
    return out


def bench_end_to_end(s: Setup, dtype: str, batch: int, steps: int, repeats: int) -> dict:
    """ids -> mel (steps frames) -> audio -> denoised audio; returns real-time factors."""
    import jax
    import torch

    tokens = torch.randint(1, 148, (batch, 128), generator=torch.Generator().manual_seed(7))
    lengths = torch.full((batch,), 128)
    tok_np, len_np = tokens.numpy(), lengths.numpy()
    taco, wg, den = s.taco[dtype], s.wg[256][dtype], s.denoiser[dtype]
    kw = dict(max_decoder_steps=steps, early_stopping=False)

    def run_jtts():
        mel = taco.infer(tok_np, len_np, key=jax.random.key(0), **kw)[0]
        den(wg.infer(mel, sigma=0.9, key=jax.random.key(1)), strength=0.01).block_until_ready()

    td, ld = tokens.to(s.device), lengths.to(s.device)
    low = dtype != "float32"

    def run_ref():
        with torch.no_grad(), _autocast(s.device, low):
            mel = s.ref_taco.infer(td, ld, prenet_dropout=0.5, **kw)["mel_postnet"]
            s.ref_denoiser(s.ref_wg[256].infer(mel, sigma=0.9).float(), strength=0.01)
        _sync(s.device)

    fns = {"jtts": run_jtts, "reference": run_ref}
    if s.dle:
        taco_net, wg_net = s.dle_tacotron2(steps), s.dle_waveglow(256)
        den_net = s.dle_denoiser_cls(wg_net).to(s.device)

        def run_dle():
            with torch.no_grad(), _autocast(s.device, low):
                mel, _, _ = taco_net.infer(td, ld)
                den_net(wg_net.infer(mel, sigma=0.9).float(), strength=0.01)
            _sync(s.device)
        fns["DLE"] = run_dle
    compile_s = _first_call(run_jtts)
    run_ref()
    med = _median_interleaved(fns, repeats)
    audio_s = batch * steps * HOP / SR
    out = {k: audio_s / v for k, v in med.items()}
    out.update(compile_s=compile_s - med["jtts"], audio_s=audio_s, wall={k: v for k, v in med.items()})
    return out


def _peak_memory_child(which: str, tmp: str, steps: int, dtype: str) -> None:
    """Load one framework's models from the files the parent wrote, run end to end once, print peak RSS (MB)."""

    def high_water_mb() -> float:
        # VmHWM belongs to this process image; getrusage's ru_maxrss would carry the parent's peak over exec
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise SystemExit("no VmHWM in /proc/self/status")

    tmp = Path(tmp)
    tokens = np.random.default_rng(7).integers(1, 148, (1, 128))
    if which == "jtts":
        import jax
        import jax.numpy as jnp

        from jtts import Denoiser, Tacotron2, WaveGlowInference

        dt = jnp.dtype(dtype)
        # as `jtts synthesize` loads them: WaveGlow folded straight from its files
        taco = Tacotron2.from_checkpoint(tmp / "t", dtype=dt)
        wg = WaveGlowInference.from_checkpoint(tmp / "w256", dtype=dt)
        den = Denoiser(wg)
        loaded = high_water_mb()
        mel = taco.infer(tokens, np.array([128]), key=jax.random.key(0), max_decoder_steps=steps,
                         early_stopping=False)[0]
        np.asarray(den(wg.infer(mel, sigma=0.9, key=jax.random.key(1)), strength=0.01))
    else:
        import torch

        from reference.tacotron2_torch import Tacotron2 as RefTaco
        from reference.waveglow_torch import Denoiser as RefDenoiser
        from reference.waveglow_torch import WaveGlow as RefWG

        def build(cls, path):
            ckpt = torch.load(path, weights_only=True)
            m = cls(**ckpt["config"])
            m.load_state_dict(ckpt["state_dict"])
            return m.eval()

        taco, wg = build(RefTaco, tmp / "t.pt"), build(RefWG, tmp / "w256.pt")
        den = RefDenoiser(wg)
        loaded = high_water_mb()
        with torch.no_grad():
            mel = taco.infer(torch.as_tensor(tokens), torch.tensor([128]), max_decoder_steps=steps,
                             early_stopping=False, prenet_dropout=0.5)["mel_postnet"]
            den(wg.infer(mel, sigma=0.9), strength=0.01)
    peak = high_water_mb()
    print(json.dumps({"which": which, "loaded_mb": loaded, "peak_mb": peak}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short inputs and few repeats (a smoke run)")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                   choices=["float32", "bfloat16", "float16"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 4, 16], help="Tacotron 2 batch sizes")
    p.add_argument("--e2e-batches", nargs="+", type=int, default=[1], help="end-to-end batch sizes")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads")
    p.add_argument("--dle", type=Path, help="DLE's PyTorch/SpeechSynthesis/Tacotron2 directory (optional)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocess")
    p.add_argument("--out", help="also write the markdown report here")
    p.add_argument("--_memory-child", dest="memory_child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    import jax
    import torch

    torch.set_num_threads(args.threads)
    if args.memory_child:
        which, tmp, n, dtype = args.memory_child
        _peak_memory_child(which, tmp, int(n), dtype)
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steps, wg_frames, e2e_steps, repeats = (60, 32, 100, 2) if args.quick else (200, 87, 600, 3)
    lines = []
    dev = jax.devices()[0]
    lines.append(f"Device: JAX on {dev.platform} ({dev.device_kind}); PyTorch on {device}"
                 + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else "")
                 + f"; {os.cpu_count()} cores, {platform.machine()}; JAX {jax.__version__}, torch "
                 f"{torch.__version__} ({args.threads} threads). PyTorch runs float32"
                 + (", fp16 autocast in the low-precision rows" if device.type == "cuda" else "") + ".")
    lines.append("")
    cols = ["jtts", "reference"] + (["DLE"] if args.dle else [])
    head = "| what | dtype | " + " | ".join(cols) + " | jtts / reference" + (" | jtts / DLE" if args.dle else "") + " |"
    sep = "|---" * (len(cols) + 3 + bool(args.dle)) + "|"
    compile_lines = []
    with tempfile.TemporaryDirectory() as d:
        s = Setup(Path(d), args.dtypes, args.dle, device)

        def row(what, dtype, r, fmt, higher_is_better):
            cells = [fmt(r[c]) for c in cols]
            ratio = (lambda a, b: a / b) if higher_is_better else (lambda a, b: b / a)
            out = f"| {what} | {dtype} | " + " | ".join(cells) + f" | {ratio(r['jtts'], r['reference']):.2f}x"
            if args.dle:
                out += f" | {ratio(r['jtts'], r['DLE']):.2f}x"
            return out + " |"

        lines += ["Tacotron 2 decoder, ms per step (lower is better; ratio > 1 means jtts is faster):", "", head, sep]
        for dtype in args.dtypes:
            for b in args.batches:
                r = bench_tacotron2(s, dtype, b, steps, repeats)
                lines.append(row(f"batch {b}, {steps} steps, 128 symbols", dtype, r, lambda v: f"{v:.2f}", False))
                compile_lines.append(f"Tacotron 2 batch {b} {dtype}: {r['compile_s']:.1f} s")
                print(lines[-1], file=sys.stderr)
        lines += ["", "WaveGlow, audio samples per second at batch 1 (higher is better):", "", head, sep]
        for dtype in args.dtypes:
            for ch in (256, 512):
                frames = wg_frames if ch == 256 else max(wg_frames // 2, 16)
                r = bench_waveglow(s, dtype, ch, frames, repeats)
                lines.append(row(f"WaveGlow-{ch}, {frames * HOP} samples", dtype, r, lambda v: f"{v:,.0f}", True))
                compile_lines.append(f"WaveGlow-{ch} {dtype}: {r['compile_s']:.1f} s")
                print(lines[-1], file=sys.stderr)
        lines += ["", f"End to end (128 symbols -> {e2e_steps} frames -> WaveGlow-256 -> denoiser), real-time "
                  "factor = audio seconds per wall second (higher is better):", "", head, sep]
        for dtype in args.dtypes:
            for b in args.e2e_batches:
                r = bench_end_to_end(s, dtype, b, e2e_steps, max(2, repeats - 1))
                lines.append(row(f"batch {b}, {r['audio_s']:.2f} s of audio", dtype, r, lambda v: f"{v:.3f}", True))
                walls = ", ".join(f"{k} {v:.2f} s" for k, v in r["wall"].items())
                compile_lines.append(f"end to end batch {b} {dtype}: {r['compile_s']:.1f} s (wall: {walls})")
                print(lines[-1], file=sys.stderr)
        if not args.no_memory and device.type == "cpu" and Path("/proc/self/status").exists():
            mem = []
            for which in ("jtts", "reference"):
                res = subprocess.run([sys.executable, __file__, "--_memory-child", which, d, str(e2e_steps),
                                      "float32"], capture_output=True, text=True)
                if res.returncode != 0:
                    raise SystemExit(f"peak-memory run for {which} failed: {res.stderr.strip()[-400:]}")
                pk = json.loads(res.stdout.strip().splitlines()[-1])
                mem.append(f"{which} {pk['peak_mb']:,.0f} MB ({pk['loaded_mb']:,.0f} MB after loading)")
            memory_line = ("Peak resident memory, fresh process per framework, float32 end to end at batch 1 "
                           "(Tacotron 2 + WaveGlow-256 + denoiser): " + "; ".join(mem) + ".")
        else:
            memory_line = ""
    lines += ["", "jtts compile time (first call minus a warm call; paid once per shape bucket and dtype): "
              + "; ".join(compile_lines) + "."]
    if memory_line:
        lines += ["", memory_line]
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
