"""Does a tiny Tacotron 2 learn to align on real (espeak-ng) speech, and how fast? The CI learning test's run
(tests/learning_helpers.py), with any setting changed, over several seeds.

    python benchmarks/learn.py                                  # the CI test's settings, seeds 0 1 2
    python benchmarks/learn.py --guided-attention 0 --steps 600 # DLE's loss alone
    taskset -c 1 env XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \\
        python benchmarks/learn.py --json runs/learn.json       # pinned to one core, as docs/learning.md

Prints, per seed, held-out loss and attention focus every --eval-every steps and the wall time.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from learning_helpers import LearnConfig, learn  # noqa: E402


def plot_alignments(path: Path, shots, history, columns: int = 4) -> None:
    """Rows: measurements over training (at most 5); columns: the first held-out sentences."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from jtts.files import atomic_write

    keep = [shots[round(i * (len(shots) - 1) / 4)] for i in range(5)] if len(shots) > 5 else shots
    focus = {row[0]: row[3] for row in history}
    fig = Figure(figsize=(3 * columns, 2.2 * len(keep)), dpi=70, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(keep), columns, squeeze=False)
    for r, (step, align, batch) in enumerate(keep):
        for c in range(columns):
            t, n = int(batch["mel_lengths"][c]), int(batch["token_lengths"][c])
            ax = axes[r, c]
            ax.imshow(align[c, :t, :n].T, origin="lower", aspect="auto", interpolation="none", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"step {step}\nfocus {focus[step]:.2f}", fontsize=9)
    with atomic_write(path) as f:
        fig.savefig(f, format="png")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = LearnConfig()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    for f in dataclasses.fields(LearnConfig):
        if f.name in ("seed", "model"):
            continue
        p.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(d, f.name)), default=getattr(d, f.name))
    p.add_argument("--model", default="", help="overrides of the model config, e.g. attention_dim=64,prenet_dim=64")
    p.add_argument("--json", type=Path, help="append the results here (one JSON object per line)")
    p.add_argument("--infer", action="store_true", help="also decode the held-out sentences free-running")
    p.add_argument("--plot", type=Path, help="PNG of held-out alignments over training (first seed)")
    args = p.parse_args(argv)
    model = dict(d.model)
    for item in filter(None, args.model.split(",")):
        k, v = item.split("=")
        model[k] = int(v)
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(LearnConfig) if f.name not in ("seed", "model")}
    for seed in args.seeds:
        cfg = LearnConfig(seed=seed, model=tuple(sorted(model.items())), **kw)
        shots = []
        with tempfile.TemporaryDirectory() as tmp:
            res = learn(Path(tmp), cfg, log=lambda line: print(f"seed {seed}: {line}", flush=True),
                        on_eval=lambda step, align, batch: shots.append((step, align, batch)))
        if args.infer:
            import jax

            from learning_helpers import free_running

            fr = free_running(res["trainer"], res["state"], res["heldout"], jax.random.key(20_000 + seed))
            r = fr["length_ratio"]
            print(f"seed {seed}: free-running focus {fr['focus']:.3f}, decoded/true length {np.round(r, 2).tolist()}, "
                  f"within 10%: {np.mean(np.abs(r - 1) <= 0.1):.0%}, reached the step limit: {fr['capped']}",
                  flush=True)
        if args.plot and seed == args.seeds[0]:
            plot_alignments(args.plot, shots, res["history"])
        hist = res["history"]
        print(f"seed {seed}: {res['utterances']} utterances, corpus {res['corpus_seconds']:.1f} s, "
              f"total {res['seconds']:.0f} s; focus {hist[0][3]:.3f} -> {hist[-1][3]:.3f}, held-out loss "
              f"{hist[0][2]:.3f} -> {hist[-1][2]:.3f}", flush=True)
        if args.json:
            with open(args.json, "a", encoding="utf-8") as f:
                row = dict(config=dataclasses.asdict(cfg), history=hist, seconds=res["seconds"])
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
