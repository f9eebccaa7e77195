"""Training across frameworks: a small Tacotron 2 (the reference's `tacotron2_small_config`) trained for N steps
in jtts and in our PyTorch reference (tests/reference) from the same weights, on the same batches of real
(espeak-ng) speech, dropout off on both sides, with DLE's optimizer on both sides: clip_grad_norm_ +
torch.optim.Adam(weight_decay=1e-6) against jtts.train's Optax chain. One step of this is
tests/test_train_parity.py; this shows how the two runs drift apart over many.

    python benchmarks/train_curves.py --steps 200 --plot docs/learning-curves-torch-jtts.png --json out.json

Prints per logged step both losses and |l_jtts - l_torch| / l_torch, then the max and final relative loss
difference and the relative difference of all parameters (||p_jtts - p_torch|| / ||p_torch||) after N steps.
What float32 rounding alone does to a run is the yardstick: a control run of the reference from weights moved by
about one float32 ulp (--no-control skips it). At some steps (--grads-at) jtts' gradients are also compared with
the reference's at the same parameters, which separates the implementations from their trajectories.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from helpers import EPS32, global_norm, tensor_errors  # noqa: E402
from learning_helpers import LearnConfig, sentences  # noqa: E402

SUMMARY_STEPS = (1, 10, 50, 100, 200)


def make_cache(work: Path, n_sentences: int, seed: int) -> Path:
    """espeak-ng corpus and its mel cache, made with the project's CLI (a few seconds: never reused)."""
    texts, corpus, cache = work / "texts.txt", work / "corpus", work / "cache"
    texts.write_text("\n".join(sentences()[:n_sentences]) + "\n", encoding="utf-8")
    jtts = [sys.executable, "-m", "jtts"]
    subprocess.run(jtts + ["corpus", "espeak", str(texts), "-o", str(corpus), "--voice", "en-us", "--rate",
                           str(LearnConfig.rate), "--seed", str(seed), "--overwrite", "-q"], check=True)
    shutil.rmtree(cache, ignore_errors=True)
    subprocess.run(jtts + ["preprocess", str(corpus), "-o", str(cache), "-q"], check=True)
    return cache


def torch_grads(ref, batch):
    """Reference forward and backward in training mode -> (loss, parts, gradients by parameter name)."""
    import torch
    import torch.nn.functional as F

    t = {k: torch.from_numpy(v).long() if v.dtype.kind == "i" else torch.from_numpy(v) for k, v in batch.items()}
    ref.train()
    ref.zero_grad()
    out = ref(t["tokens"], t["token_lengths"], t["mels"], t["mel_lengths"], prenet_dropout=0.0)
    loss = ref.loss(out, t["mels"], t["gate"])
    loss.backward()
    with torch.no_grad():
        parts = dict(mel=float(F.mse_loss(out[0], t["mels"])), postnet=float(F.mse_loss(out[1], t["mels"])),
                     gate=float(F.binary_cross_entropy_with_logits(out[2], t["gate"])))
    return float(loss.detach()), parts, {k: p.grad.detach().numpy().copy() for k, p in ref.named_parameters()}


def torch_step(ref, opt, batch, clip):
    """DLE's iteration: loss.backward(), clip_grad_norm_, Adam step -> (loss, parts, unclipped gradients, norm)."""
    import torch

    loss, parts, grads = torch_grads(ref, batch)
    norm = float(torch.nn.utils.clip_grad_norm_(ref.parameters(), clip))
    opt.step()
    return loss, parts, grads, norm


def global_rel(ours: dict, ref: dict) -> float:
    return global_norm({k: np.float64(ours[k]) - ref[k] for k in ref}) / global_norm(ref)


def worst(per: dict, n: int = 3) -> dict:
    return {k: per[k] for k in sorted(per, key=per.get, reverse=True)[:n]}


def fmt(d: dict) -> str:
    return ", ".join(f"{k} {v:.1e}" for k, v in d.items())


def compare_grads(trainer, state, batch, table, ref, run_grads) -> dict:
    """jtts' gradients on its state before a step against (a) the reference run's on the same step and (b) the
    reference's at jtts' own parameters (a copy of `ref` given them): (b) is what the implementations differ by
    at one point, (a) adds how far the two trajectories have drifted apart."""
    import jax

    from jtts.train.optim import flat_params_to_torch, load_into_torch

    _, _, grads = trainer.loss_and_grads(state, batch, jax.random.key(0))
    ours = flat_params_to_torch(jax.device_get(grads), table)
    twin = copy.deepcopy(ref)
    load_into_torch(twin, jax.device_get({**state["params"], **state["stats"]}), table)
    same_point = torch_grads(twin, batch)[2]
    return dict(vs_torch_run=global_rel(ours, run_grads), same_params=global_rel(ours, same_point),
                worst_same_params=worst(tensor_errors(ours, same_point)))


def plot(path: Path, rows) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from jtts.files import atomic_write

    steps = [r["step"] for r in rows]
    fig = Figure(figsize=(7, 5.5), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    top.plot(steps, [r["torch"] for r in rows], label="PyTorch reference", lw=2.5, alpha=0.6)
    top.plot(steps, [r["jtts"] for r in rows], label="jtts", lw=1, ls="--", color="k")
    top.set(yscale="log", ylabel="training loss (DLE's)",
            title="Tacotron 2 (small config), same weights and batches, dropout off")
    top.legend()
    bottom.plot(steps, [max(r["rel"], 1e-9) for r in rows], color="C3", label="jtts vs reference")
    if "control" in rows[0]:
        bottom.plot(steps, [max(r["rel_control"], 1e-9) for r in rows], color="C7", lw=1,
                    label="reference vs reference from weights 1 ulp away")
    bottom.set(yscale="log", ylabel="relative loss difference", xlabel="step")
    bottom.legend(fontsize=8)
    for ax in (top, bottom):
        ax.grid(alpha=0.3, which="both")
    with atomic_write(path) as f:
        fig.savefig(f, format="png")


def param_diff(ours: dict, ref) -> tuple[float, dict]:
    """-> (||ours - ref|| / ||ref|| over all parameters, the three worst tensors by their own relative error)."""
    theirs = {k: p.detach().numpy() for k, p in ref.named_parameters()}
    return global_rel(ours, theirs), worst(tensor_errors(ours, theirs))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=1e-3, help="DLE's default")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="weights, corpus variation and batch order")
    p.add_argument("--sentences", type=int, default=40)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--grads-at", type=int, nargs="*", default=list(SUMMARY_STEPS),
                   help="steps whose gradients are compared (each costs a compilation and a torch step)")
    p.add_argument("--no-control", action="store_true", help="skip the perturbed reference run")
    p.add_argument("--work", type=Path, help="make the corpus and cache here (kept) instead of in a temp dir")
    p.add_argument("--plot", type=Path)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    import jax
    import pytest
    import torch

    torch.set_num_threads(1)  # 2 threads on 2 busy cores made some steps 100x slower; jtts runs in between anyway
    from jtts.train.data import tacotron2_batches
    from jtts.train.datasets import load_cache
    from jtts.train.optim import flat_params_to_torch, make_optimizer
    from jtts.train.step import Trainer
    from jtts.train.tasks import task_for
    from reference.tacotron2_torch import tacotron2_small_config
    from reference.weights import live_tacotron2
    from test_train_parity import _table, _to_jtts, no_torch_dropout

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        it = tacotron2_batches(load_cache(make_cache(work, args.sentences, args.seed)), args.batch_size,
                               seed=args.seed, buckets=1)
        # one host copy per batch, fed unchanged to both frameworks
        batches = [{k: np.ascontiguousarray(v) for k, v in next(it).items()} for _ in range(args.steps)]
        it.close()
    data_s = time.perf_counter() - t0
    print(f"{args.steps} batches of {args.batch_size}: tokens {batches[0]['tokens'].shape}, mels "
          f"{batches[0]['mels'].shape} ({data_s:.0f} s for corpus, cache and batches)", flush=True)

    with pytest.MonkeyPatch.context() as mp:
        no_torch_dropout.__wrapped__(mp)  # the parity test's fixture: torch's F.dropout is the identity
        ref = live_tacotron2(tacotron2_small_config(), seed=args.seed)
        model, cfg = _to_jtts(ref, "tacotron2")  # the reference's config and weights through jtts.convert
        table = _table("tacotron2", cfg)
        differ = {k: (v, getattr(cfg, k)) for k, v in ref.config.items() if getattr(cfg, k) != v}
        assert not differ, f"jtts config differs from the reference's: {differ}"
        dle = task_for("tacotron2").optimizer  # DLE's weight decay (1e-6) and clip (1.0), for both sides
        tx, schedule = make_optimizer(dle, lr=args.lr)
        trainer = Trainer(model, tx, schedule, dropout=False, prenet_dropout=0.0)
        state, key = trainer.init_state(), jax.random.key(args.seed)
        runs = {"torch": ref}
        if not args.no_control:
            runs["control"] = copy.deepcopy(ref)
            g = torch.Generator().manual_seed(args.seed + 1)
            with torch.no_grad():
                for w in runs["control"].parameters():
                    w.mul_(1 + EPS32 * torch.randn(w.shape, generator=g))
        opts = {k: torch.optim.Adam(m.parameters(), lr=args.lr, weight_decay=dle["weight_decay"])
                for k, m in runs.items()}
        rows, grad_checks, secs = [], {}, dict(torch=0.0, jtts=0.0)
        for step, batch in enumerate(batches, 1):
            t = time.perf_counter()
            l_t, parts_t, grads_t, norm_t = torch_step(ref, opts["torch"], batch, dle["grad_clip"])
            secs["torch"] += time.perf_counter() - t
            if step in args.grads_at:  # before the jtts step: the state is donated to it
                grad_checks[step] = compare_grads(trainer, state, batch, table, ref, grads_t)
            t = time.perf_counter()
            state, m = trainer.train_step(state, batch, jax.random.fold_in(key, step))
            m = jax.device_get(m)
            secs["jtts"] += time.perf_counter() - t
            l_j = float(m["loss"])
            row = dict(step=step, torch=l_t, jtts=l_j, rel=abs(l_j - l_t) / l_t, grad_norm_torch=norm_t,
                       grad_norm_jtts=float(m["grad_norm"]), **{f"{k}_torch": v for k, v in parts_t.items()},
                       **{f"{k}_jtts": float(m[k]) for k in parts_t})
            if "control" in runs:
                row["control"] = torch_step(runs["control"], opts["control"], batch, dle["grad_clip"])[0]
                row["rel_control"] = abs(row["control"] - l_t) / l_t
            rows.append(row)
            if step in SUMMARY_STEPS or step % args.log_every == 0 or step == args.steps:
                print(f"step {step:4d}  torch {l_t:.6f}  jtts {l_j:.6f}  rel {row['rel']:.2e}  (control "
                      f"{row.get('rel_control', np.nan):.2e}; mel {row['mel_torch']:.4f}/{row['mel_jtts']:.4f}, "
                      f"gate {row['gate_torch']:.4f}/{row['gate_jtts']:.4f}, grad norm {norm_t:.3f}/"
                      f"{row['grad_norm_jtts']:.3f})", flush=True)
            if step in grad_checks:
                g = grad_checks[step]
                print(f"step {step:4d}  gradients: jtts vs torch run {g['vs_torch_run']:.2e}; vs torch at jtts' "
                      f"parameters {g['same_params']:.2e} (worst {fmt(g['worst_same_params'])})", flush=True)

    ours = flat_params_to_torch(jax.device_get(state["params"]), table)
    param_rel, param_worst = param_diff(ours, ref)
    rels = [r["rel"] for r in rows]
    at = lambda name: {s: rows[s - 1][name] for s in SUMMARY_STEPS if s <= len(rows)}  # noqa: E731
    summary = dict(max_rel_loss=max(rels), max_rel_loss_step=int(np.argmax(rels)) + 1, final_rel_loss=rels[-1],
                   rel_loss_at=at("rel"), param_rel=param_rel, param_worst=param_worst,
                   seconds=dict(total=time.perf_counter() - t0, data=data_s, **secs))
    print(f"relative loss difference: max {summary['max_rel_loss']:.2e} (step {summary['max_rel_loss_step']}), "
          f"final {rels[-1]:.2e}; at steps {fmt(at('rel'))}")
    print(f"parameters after {args.steps} steps: ||p_jtts - p_torch|| / ||p_torch|| = {param_rel:.2e}; "
          f"worst tensors {fmt(param_worst)}")
    if "control" in runs:
        controls = {k: p.detach().numpy() for k, p in runs["control"].named_parameters()}
        summary.update(control_max_rel_loss=max(r["rel_control"] for r in rows), control_rel_loss_at=at("rel_control"),
                       control_param_rel=param_diff(controls, ref)[0])
        print(f"control (reference from weights 1 ulp away): relative loss difference max "
              f"{summary['control_max_rel_loss']:.2e}; at steps {fmt(at('rel_control'))}; parameters "
              f"{summary['control_param_rel']:.2e}")
    print(f"wall time {summary['seconds']['total']:.0f} s (data {data_s:.0f} s, torch steps {secs['torch']:.0f} s, "
          f"jtts steps {secs['jtts']:.0f} s incl. compilation)")
    if args.plot:
        plot(args.plot, rows)
    if args.json:
        from jtts.files import atomic_write

        with atomic_write(args.json, "w") as f:
            json.dump(dict(args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                           config=dataclasses.asdict(cfg), rows=rows, grad_checks=grad_checks, summary=summary),
                      f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
