"""jtts vs the project's PyTorch reference on the same weights, inputs and machine, in one run.

    python benchmarks/bench.py                 # full NGC sizes, float32, prints a markdown table
    python benchmarks/bench.py --quick         # fewer repeats / shorter inputs

Tacotron 2: milliseconds per decoder step at batch 1 (free-running, prenet dropout on, early stopping off so
every run decodes the same number of steps). WaveGlow-256: audio samples per second at batch 1, sigma 0.9.
Timings are medians over interleaved repeats after a warm-up (compile time is reported separately).
The PyTorch side is tests/reference (DLE's numerics and layout, eager mode).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _median_interleaved(fns: dict, repeats: int) -> dict:
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_tacotron2(tmp: Path, steps: int, repeats: int, threads: int) -> dict:
    import jax
    import torch

    from jtts import Tacotron2
    from jtts.convert import convert
    from reference.tacotron2_torch import tacotron2_config
    from reference.weights import live_tacotron2, save_hub_checkpoint

    cfg = tacotron2_config()
    ref = live_tacotron2(cfg, seed=0)
    save_hub_checkpoint(tmp / "t.pt", ref, cfg)
    model = Tacotron2.from_checkpoint(convert(tmp / "t.pt", tmp / "t"))
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 148, (1, 128), generator=g)
    lengths = torch.tensor([128])
    kw = dict(max_decoder_steps=steps, early_stopping=False)
    t = time.perf_counter()
    model.infer(tokens.numpy(), lengths.numpy(), key=jax.random.key(0), **kw)[0].block_until_ready()
    compile_s = time.perf_counter() - t
    torch.set_num_threads(threads)
    med = _median_interleaved({
        "jtts": lambda: model.infer(tokens.numpy(), lengths.numpy(), key=jax.random.key(0), **kw)[0]
        .block_until_ready(),
        "torch": lambda: ref.infer(tokens, lengths, prenet_dropout=0.5, **kw),
    }, repeats)
    return {"jtts_ms_per_step": med["jtts"] * 1e3 / steps, "torch_ms_per_step": med["torch"] * 1e3 / steps,
            "compile_s": compile_s - med["jtts"]}


def bench_waveglow(tmp: Path, frames: int, repeats: int, threads: int, channels: int = 256) -> dict:
    import torch

    from jtts import WaveGlow
    from jtts.convert import convert
    from reference.waveglow_torch import waveglow_config
    from reference.weights import live_waveglow, save_hub_checkpoint

    cfg = waveglow_config(channels)
    ref = live_waveglow(cfg, seed=0)
    save_hub_checkpoint(tmp / "w.pt", ref, cfg)
    model = WaveGlow.from_checkpoint(convert(tmp / "w.pt", tmp / "w"))
    mel = torch.randn(1, 80, frames, generator=torch.Generator().manual_seed(0)) - 4.0
    z = torch.randn(1, 8, frames * 32, generator=torch.Generator().manual_seed(1))
    mel_np, z_np = mel.numpy(), z.numpy()
    t = time.perf_counter()
    np.asarray(model.infer(mel_np, sigma=0.9, z=z_np))
    compile_s = time.perf_counter() - t
    torch.set_num_threads(threads)
    med = _median_interleaved({
        "jtts": lambda: np.asarray(model.infer(mel_np, sigma=0.9, z=z_np)),
        "torch": lambda: ref.infer(mel, sigma=0.9, z=z, sigma_on_early=True),
    }, repeats)
    samples = frames * 256
    return {"jtts_samples_per_s": samples / med["jtts"], "torch_samples_per_s": samples / med["torch"],
            "compile_s": compile_s - med["jtts"], "samples": samples}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads")
    p.add_argument("--out", help="also write the markdown table here")
    args = p.parse_args(argv)
    import jax
    import torch

    steps, frames, repeats = (100, 43, 3) if args.quick else (400, 87, 5)
    with tempfile.TemporaryDirectory() as d:
        taco = bench_tacotron2(Path(d), steps, repeats, args.threads)
        wg = bench_waveglow(Path(d), frames, repeats, args.threads)
    dev = jax.devices()[0]
    lines = [
        f"Device: {dev.platform} ({dev.device_kind}), {os.cpu_count()} cores, {platform.processor() or platform.machine()};"
        f" JAX {jax.__version__}, torch {torch.__version__} ({args.threads} threads); float32, batch 1.",
        "",
        "| stage | jtts | PyTorch reference | jtts speed-up |",
        "|---|---|---|---|",
        f"| Tacotron 2 decoder, ms/step ({steps} steps, 128-symbol input) | {taco['jtts_ms_per_step']:.2f} | "
        f"{taco['torch_ms_per_step']:.2f} | {taco['torch_ms_per_step'] / taco['jtts_ms_per_step']:.2f}x |",
        f"| WaveGlow-256, samples/s ({wg['samples']} samples) | {wg['jtts_samples_per_s']:,.0f} | "
        f"{wg['torch_samples_per_s']:,.0f} | {wg['jtts_samples_per_s'] / wg['torch_samples_per_s']:.2f}x |",
        "",
        f"Compile time (first call, not in the figures above): Tacotron 2 {taco['compile_s']:.1f} s, "
        f"WaveGlow {wg['compile_s']:.1f} s.",
    ]
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
