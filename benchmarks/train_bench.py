"""Training throughput: jtts' jitted train step against the PyTorch reference's eager step, same weights and batch.

    python benchmarks/train_bench.py --quick            # small models, a few steps (smoke run, ~1 min on 2 cores)
    python benchmarks/train_bench.py                    # NGC-size models (slow on a CPU)
    python benchmarks/train_bench.py --dtype bfloat16   # jtts in bfloat16 (torch stays float32 on a CPU)

One step = forward, DLE's loss, backward, clip_grad_norm_, Adam with weight decay, DLE's dropouts on (prenet
0.5). Reported: median seconds per step after warm-up (jtts' first step, which compiles, apart; each side
timed in its own block), steps/s, and
DLE's throughput unit: mel frames/s for Tacotron 2, audio samples/s for WaveGlow; ratio = jtts / torch.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def _jtts_model(ref, kind):
    from jtts import models
    from jtts.checkpoint import assign
    from jtts.convert import import_state_dict

    state = {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}
    _, cfg, params, _ = import_state_dict(state, ref.config, kind=kind)
    model = models.build(kind, cfg, abstract=True)
    assign(model, params)
    return model


def _batch(kind, quick, batch_size):
    rng = np.random.default_rng(0)
    if kind == "waveglow":
        seg = 4000 if quick else 8000
        return dict(mels=rng.normal(-5, 1, (batch_size, 80, seg // 256 + 1)).astype(np.float32),
                    audio=rng.uniform(-0.3, 0.3, (batch_size, seg)).astype(np.float32))
    t_in, frames = (32, 100) if quick else (96, 400)
    tok_len = np.linspace(t_in, t_in // 2, batch_size).astype(np.int32)
    mel_len = np.linspace(frames, frames // 2, batch_size).astype(np.int32)
    tokens = np.zeros((batch_size, t_in), np.int32)
    mels = np.zeros((batch_size, 80, frames), np.float32)
    gate = np.zeros((batch_size, frames), np.float32)
    for b in range(batch_size):
        tokens[b, :tok_len[b]] = rng.integers(1, 148, tok_len[b])
        mels[b, :, :mel_len[b]] = rng.normal(-5, 1, (80, mel_len[b]))
        gate[b, mel_len[b] - 1:] = 1
    return dict(tokens=tokens, token_lengths=tok_len, mels=mels, mel_lengths=mel_len, gate=gate)


def _torch_step_fn(ref, kind, batch, lr, wd, clip):
    import torch

    ref.train()
    opt = torch.optim.Adam(ref.parameters(), lr=lr, weight_decay=wd)
    tb = {k: torch.from_numpy(v.astype(np.int64) if v.dtype == np.int32 else v) for k, v in batch.items()}

    def step():
        opt.zero_grad()
        if kind == "tacotron2":
            out = ref(tb["tokens"], tb["token_lengths"], tb["mels"], tb["mel_lengths"], prenet_dropout=0.5)
            loss = ref.loss(out, tb["mels"], tb["gate"])
        else:
            loss = ref.loss(*ref(tb["mels"], tb["audio"]))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), clip)
        opt.step()
        return float(loss.detach())

    return step


def bench(kind, *, quick, steps, dtype, batch_size):
    import jax
    import torch

    from jtts.train.optim import make_optimizer
    from jtts.train.step import Trainer
    from reference.tacotron2_torch import tacotron2_config, tacotron2_small_config
    from reference.waveglow_torch import waveglow_config, waveglow_small_config
    from reference.weights import live_tacotron2, live_waveglow

    if kind == "tacotron2":
        ref = live_tacotron2(tacotron2_small_config() if quick else tacotron2_config(), seed=1)
        lr, wd, clip = 1e-3, 1e-6, 1.0
    else:
        ref = live_waveglow(waveglow_small_config() if quick else waveglow_config(256), seed=2)
        lr, wd, clip = 1e-4, 0.0, 65504.0
    batch = _batch(kind, quick, batch_size)
    tx, schedule = make_optimizer(kind, lr=lr, weight_decay=wd, grad_clip=clip)
    trainer = Trainer(_jtts_model(ref, kind), tx, schedule, dtype=dtype)
    items = trainer.items(batch)
    state = trainer.init_state()
    sharded = trainer.shard_batch(batch)
    t0 = time.perf_counter()
    state, m = trainer.train_step(state, sharded, jax.random.key(0))
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    torch_step = _torch_step_fn(ref, kind, batch, lr, wd, clip)
    torch_step()  # warm-up
    time.sleep(1.0)
    # Not interleaved step by step: right after a torch step its OpenMP threads still spin and slow the next
    # XLA step by a quarter or more on a 2-core machine. Each side runs in its own block after a pause.
    jt, tt = [], []
    for i in range(steps):
        t0 = time.perf_counter()
        state, m = trainer.train_step(state, sharded, jax.random.key(i + 1))
        jax.block_until_ready(m)
        jt.append(time.perf_counter() - t0)
    time.sleep(1.0)
    for _ in range(steps):
        t0 = time.perf_counter()
        torch_step()
        tt.append(time.perf_counter() - t0)
    # The loop's host syncs: reading every step's metrics back (the old loop) against reading them once per
    # log_every steps (jtts.train.loop now). Same steps, run back to back; total wall time per step.
    synced = {}
    for every in (1, 10):
        time.sleep(0.5)
        t0, pending = time.perf_counter(), []
        for i in range(2 * steps):
            state, m = trainer.train_step(state, sharded, jax.random.key(100 + i))
            pending.append(m)
            if (i + 1) % every == 0:
                jax.device_get(pending)
                pending = []
        jax.device_get(pending)
        jax.block_until_ready(state)
        synced[every] = (time.perf_counter() - t0) / (2 * steps)
    j, t = statistics.median(jt), statistics.median(tt)
    unit = trainer.task.unit
    return dict(sync_every_step_s=synced[1], sync_every_10_s=synced[10], kind=kind, batch=batch_size, shape={k: list(v.shape) for k, v in batch.items()}, unit=unit,
                compile_s=compile_s, jtts_s=j, torch_s=t, jtts_items=items / j, torch_items=items / t,
                ratio=t / j, threads=torch.get_num_threads())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small models and batches, a few steps")
    ap.add_argument("--steps", type=int, help="timed steps per side (default 3 quick, 5 full)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--models", nargs="*", default=["tacotron2", "waveglow"], choices=("tacotron2", "waveglow"))
    ap.add_argument("--batch-size", type=int, help="default 4 Tacotron 2, 2 WaveGlow")
    args = ap.parse_args(argv)
    import jax
    import torch

    torch.manual_seed(0)
    steps = args.steps or (3 if args.quick else 5)
    print(f"# training step: jtts ({args.dtype}, {jax.devices()[0].platform}) vs PyTorch reference (float32 eager)")
    print(f"# {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
          f"{'quick (small models)' if args.quick else 'NGC-size models'}, median of {steps} steps\n")
    print("| model | batch | jtts s/step | torch s/step | jtts steps/s | jtts items/s | torch items/s | "
          "ratio | jtts first step (compiles) s | loop s/step, read back every step / every 10 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind in args.models:
        bs = args.batch_size or (4 if kind == "tacotron2" else 2)
        r = bench(kind, quick=args.quick, steps=steps, dtype=args.dtype, batch_size=bs)
        print(f"| {kind} | {bs} | {r['jtts_s']:.3f} | {r['torch_s']:.3f} | {1 / r['jtts_s']:.2f} | "
              f"{r['jtts_items']:,.0f} {r['unit']} | {r['torch_items']:,.0f} {r['unit']} | {r['ratio']:.2f}x | "
              f"{r['compile_s']:.1f} | {r['sync_every_step_s']:.4f} / {r['sync_every_10_s']:.4f} "
              f"({r['sync_every_step_s'] / r['sync_every_10_s']:.2f}x) |", flush=True)


if __name__ == "__main__":
    main()
