"""Does a Tacotron 2 that `jtts train` learnt from scratch speak its held-out sentences? Free-running `infer`
(prenet dropout on, as at inference) on every sentence of a held-out mel cache, for checkpoints of a run:

    python benchmarks/learn_speech.py RUN_DIR --val CACHE [--steps 500 1000 ...] [--json out.json]
           [--plot-alignments docs/x.png] [--plot-curves docs/y.png]

Per checkpoint it reports, over the held-out sentences:
  focus      mean over decoder steps of the largest attention weight (mean and lowest sentence)
  stop       share of sentences whose mel length lies within +-10% of the ground truth's, and the range of ratios
  max steps  sentences that reached max_decoder_steps (the gate never fired)
  MCD        mel cepstral distortion after dynamic time warping, in dB (see `mcd`), and log-mel L1 after DTW
  end reached  share of sentences whose attention peak first reaches the last two symbols within +-10% of the
             ground truth's length: the timing the gate has to learn to act on

The recipe that makes the run, and its figures, are in docs/learning.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

N_CEPSTRA = 13  # c1..c13; c0 (loudness) left out, as usual for MCD


def dtw_path(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Steps (i, j) of the cheapest monotonic path through a (N, M) cost matrix from (0, 0) to (N-1, M-1), with
    moves (1, 0), (0, 1), (1, 1). Each row in O(M) numpy: D[i, j] = S[j] + min_{k<=j}(a[k] - S[k]), where S is
    the running sum of row i's costs and a[k] = cost[i, k] + min(D[i-1, k], D[i-1, k-1])."""
    n, m = cost.shape
    acc = np.empty((n, m))
    acc[0] = np.cumsum(cost[0])
    for i in range(1, n):
        prev = acc[i - 1]
        diag = np.concatenate([[np.inf], prev[:-1]])
        a = cost[i] + np.minimum(prev, diag)
        s = np.cumsum(cost[i])
        acc[i] = s + np.minimum.accumulate(a - s)
    i, j, path = n - 1, m - 1, [(n - 1, m - 1)]
    while i or j:
        moves = [(i - 1, j - 1), (i - 1, j), (i, j - 1)]
        i, j = min((p for p in moves if p[0] >= 0 and p[1] >= 0), key=lambda p: acc[p])
        path.append((i, j))
    path.reverse()
    return tuple(np.array(x) for x in zip(*path))


def cepstra(log_mel: np.ndarray) -> np.ndarray:
    """(80, T) natural-log mel magnitudes -> (T, N_CEPSTRA) orthonormal DCT-II coefficients c1..c13."""
    n = log_mel.shape[0]
    k = np.arange(1, N_CEPSTRA + 1)[:, None]
    basis = np.sqrt(2.0 / n) * np.cos(np.pi * k * (np.arange(n)[None, :] + 0.5) / n)
    return (basis @ log_mel).T


def mcd(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """(MCD in dB, log-mel L1) between two (80, T) log-mels after aligning their frames by DTW on cepstral
    distance. MCD = 10 / ln 10 * sqrt(2 * sum_k (c_k - c'_k)^2), averaged over the path's steps, with c the
    cepstra of the natural-log mel magnitudes (DLE's mels), so the value is in the usual dB scale of the
    log-magnitude; it compares runs of this benchmark, not papers that use other front ends."""
    a, b = cepstra(pred), cepstra(true)
    cost = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    i, j = dtw_path(cost)
    mcd_db = float(np.mean(10.0 / np.log(10.0) * np.sqrt(2.0) * cost[i, j]))
    l1 = float(np.mean(np.abs(pred[:, i] - true[:, j])))
    return mcd_db, l1


def checkpoint_steps(run: Path) -> list[int]:
    return sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())


def load_params(run: Path, step: int) -> tuple[dict, dict[str, np.ndarray]]:
    """(config, {"a.b.c": array} of weights and BatchNorm statistics) of checkpoint `step` of a `jtts train` run."""
    import orbax.checkpoint as ocp

    from jtts.checkpoint import quiet_orbax

    folder = (run / "checkpoints" / str(step)).absolute()
    with quiet_orbax():
        state = ocp.StandardCheckpointer().restore(folder / "state")
    meta = json.loads((folder / "meta" / "metadata").read_text())
    train = state["train"]
    return meta["config"], {k: np.asarray(v) for k, v in {**train["params"], **train["stats"]}.items()}


def load_step(run: Path, step: int):
    from jtts import models
    from jtts.checkpoint import assign

    config, params = load_params(run, step)
    model = models.build("tacotron2", config, abstract=True)
    assign(model, params)
    return model


def export(run: Path, step: int, out: Path) -> Path:
    """A checkpoint of the run as a jtts model directory (`jtts synthesize --tacotron2 OUT`)."""
    from jtts.checkpoint import save_model

    config, params = load_params(run, step)
    return save_model(out, "tacotron2", config, params,
                      source={"trained_by": "jtts train", "run": str(run.absolute()), "step": step})


def end_reached(alignment: np.ndarray, n_symbols: int, otherwise: int) -> int:
    """Frames up to and including the first whose attention peak is on one of the last two symbols (the length
    the gate should give), or `otherwise` if the peak never gets there. alignment: (frames, symbols)."""
    reached = np.flatnonzero(alignment.argmax(axis=1) >= n_symbols - 2)
    return int(reached[0]) + 1 if reached.size else otherwise


def evaluate(model, val, *, seed: int = 0, batch: int = 10, max_decoder_steps: int | None = None,
             gate_threshold: float | None = None, prenet_dropout: float = 0.5) -> dict:
    """Free-running decoding of every held-out sentence (prenet dropout on, DLE's 0.5 unless a diagnostic asks
    for another rate) and the metrics above."""
    import jax

    from jtts.repair import decode_rows

    utts = sorted(val, key=lambda u: len(u.tokens))  # similar lengths share a batch: less padding
    root = jax.random.key(seed)
    rows = []
    for b in range(0, len(utts), batch):
        part = utts[b:b + batch]
        keys = [jax.random.fold_in(root, b + r) for r in range(len(part))]
        for u, d in zip(part, decode_rows(model, [list(u.tokens) for u in part], keys,
                                          max_decoder_steps=max_decoder_steps, gate_threshold=gate_threshold,
                                          prenet_dropout=prenet_dropout)):
            true = np.load(u.mel)
            m, l1 = mcd(d.mel, true)
            reach = end_reached(d.alignment, len(u.tokens), d.health.frames)
            rows.append(dict(text=u.text, frames=d.health.frames, true_frames=int(u.frames),
                             ratio=d.health.frames / u.frames, reach_ratio=reach / u.frames, focus=d.health.focus,
                             stop=d.health.stop,
                             mcd=m, l1=l1, problems=list(d.health.problems)))
    ratio = np.array([r["ratio"] for r in rows])
    reach = np.array([r["reach_ratio"] for r in rows])
    return dict(sentences=len(rows), focus=float(np.mean([r["focus"] for r in rows])),
                focus_min=float(np.min([r["focus"] for r in rows])),
                within_10=float(np.mean(np.abs(ratio - 1) <= 0.1)), ratio_min=float(ratio.min()),
                ratio_max=float(ratio.max()), reach_within_10=float(np.mean(np.abs(reach - 1) <= 0.1)),
                reach_min=float(reach.min()), reach_max=float(reach.max()),
                max_steps=sum(r["stop"] == "max_steps" for r in rows),
                mcd=float(np.mean([r["mcd"] for r in rows])), l1=float(np.mean([r["l1"] for r in rows])),
                rows=rows)


def plot_alignments(path: Path, shots: list[tuple[int, list]], columns: int = 4) -> None:
    """Rows: checkpoints; columns: the first held-out sentences' free-running alignments."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from jtts.files import atomic_write

    fig = Figure(figsize=(3 * columns, 2.2 * len(shots)), dpi=70, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(shots), columns, squeeze=False)
    for r, (step, aligns) in enumerate(shots):
        for c in range(columns):
            ax = axes[r, c]
            ax.imshow(aligns[c].T, aspect="auto", origin="lower", interpolation="none", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"step {step}")
    with atomic_write(path) as f:
        fig.savefig(f, format="png")


def plot_curves(path: Path, log: list[dict]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from jtts.files import atomic_write

    def dle(e):  # DLE's loss without the guided attention term, which the logged loss includes when it is on
        return e["mel"] + e["postnet"] + e["gate"] if "mel" in e else e["loss"]

    train = [(e["step"], dle(e)) for e in log if e.get("event") == "train" and "loss" in e]
    val = [(e["step"], dle(e)) for e in log if e.get("event") == "val" and "loss" in e]
    fig = Figure(figsize=(7, 3.5), dpi=80, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for pts, label in ((train, "training loss"), (val, "held-out loss (teacher-forced)")):
        if pts:
            ax.plot(*zip(*pts), label=label, marker="." if len(pts) < 60 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("DLE's loss (2 mel MSEs + gate BCE)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    with atomic_write(path) as f:
        fig.savefig(f, format="png")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run", type=Path, help="a `jtts train tacotron2` run directory")
    p.add_argument("--val", type=Path, required=True, help="held-out mel cache (`jtts preprocess`)")
    p.add_argument("--steps", type=int, nargs="*", help="checkpoints to evaluate (default: all)")
    p.add_argument("--seed", type=int, default=0, help="prenet dropout keys")
    p.add_argument("--draws", type=int, default=1,
                   help="decode every sentence this many times (seeds SEED, SEED+1, ...): the spread of the stop\n"
                        "measures that prenet dropout alone causes")
    p.add_argument("--max-decoder-steps", type=int, help="default: the model's config (2000)")
    p.add_argument("--gate-threshold", type=float, help="default: the model's config (DLE's 0.5)")
    p.add_argument("--prenet-dropout", type=float, default=0.5,
                   help="the prenet's dropout rate at inference: DLE's 0.5 (what the criteria are measured with);\n"
                        "lower rates show how the speaking rate and the gate depend on it")
    p.add_argument("--stop-probe", type=int, nargs="?", const=12, metavar="N",
                   help="also, teacher-forced on the first N sentences (12 if N is not given): the gate's stop\n"
                        "probability at and before the last frame, where it first passes 0.5, and where the\n"
                        "attention reaches the end")
    p.add_argument("--json", type=Path, help="write every figure and per-sentence row here")
    p.add_argument("--plot-alignments", type=Path, help="free-running alignments of 4 sentences per checkpoint")
    p.add_argument("--plot-curves", type=Path, help="training and held-out loss from train_log.jsonl")
    p.add_argument("--export", type=Path, help="also write the last checkpoint evaluated as a model directory")
    args = p.parse_args(argv)

    from jtts.train.datasets import load_cache, with_text_frontend
    from jtts.train.rundir import read_log

    cached = load_cache(args.val)
    log = read_log(args.run)
    if args.plot_curves:
        plot_curves(args.plot_curves, log)
    minutes = train_minutes(log)
    steps = args.steps or checkpoint_steps(args.run)
    results, shots = [], []
    print("step  train min focus (min)    within 10%  ratio range   max steps  MCD dB  log-mel L1  "
          "end reached within 10% (range)  eval s")
    for step in steps:
        t0 = time.perf_counter()
        model = load_step(args.run, step)
        val = with_text_frontend(cached, model.config.text_frontend)  # the model's ids
        decoding = dict(max_decoder_steps=args.max_decoder_steps, gate_threshold=args.gate_threshold,
                        prenet_dropout=args.prenet_dropout)
        res = evaluate(model, val, seed=args.seed, **decoding)
        if args.draws > 1:
            more = [evaluate(model, val, seed=args.seed + d, **decoding) for d in range(1, args.draws)]
            res["draws"] = draws([res] + more)
        res["step"], res["eval_s"] = step, time.perf_counter() - t0
        res["wall_min"] = minutes.get(step)
        if args.stop_probe:
            res["stop_probe"] = sp = stop_probe(model, val, args.seed, n=args.stop_probe)
            free_reach = np.median([r["reach_ratio"] for r in res["rows"]])  # over all sentences
            print(f"      teacher-forced (first {sp['sentences']} sentences): stop probability at the last frame "
                  f"{sp['last_min']:.3f}-{sp['last_max']:.3f}, before the last 5 frames at most "
                  f"{sp['before_max']:.3f}; passes 0.5 at {sp['fires_median']:.3f} of the true length (median; "
                  f"earliest {sp['fires_min']:.3f}); end reached at {sp['reach_median']:.3f} (free-running "
                  f"{free_reach:.3f})")
        results.append(res)
        wall = f"{res['wall_min']:8.1f}" if res["wall_min"] is not None else "       ?"
        print(f"{step:5d} {wall}  {res['focus']:.3f} ({res['focus_min']:.2f})  {res['within_10']:9.0%}  "
              f"{res['ratio_min']:.2f}-{res['ratio_max']:.2f}  {res['max_steps']:9d}  {res['mcd']:6.2f}  "
              f"{res['l1']:10.3f}  {res['reach_within_10']:9.0%} ({res['reach_min']:.2f}-{res['reach_max']:.2f})  "
              f"{res['eval_s']:6.1f}", flush=True)
        if "draws" in res:
            d = res["draws"]
            print(f"      {args.draws} draws: within 10% {d['within_10_mean']:.0%} ({d['within_10_min']:.0%}-"
                  f"{d['within_10_max']:.0%}), max steps {d['max_steps']} in all, median ratio "
                  f"{d['ratio_median']:.3f}, "
                  f"per-sentence sd of the ratio {d['ratio_sd_median']:.3f} (median), mean ratio within 10% on "
                  f"{d['mean_ratio_within_10']:.0%}", flush=True)
        if args.plot_alignments:
            shots.append((step, _alignments(model, val, args.seed)))
    if args.plot_alignments and shots:
        keep = [shots[round(i * (len(shots) - 1) / 4)] for i in range(5)] if len(shots) > 5 else shots
        plot_alignments(args.plot_alignments, keep)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.export and steps:
        print(f"wrote {export(args.run, steps[-1], args.export)}")
    return 0


def draws(results: list[dict]) -> dict:
    """Several `evaluate` results of one checkpoint, differing only in the prenet dropout keys -> the spread."""
    ratios = np.array([[r["ratio"] for r in res["rows"]] for res in results])  # (draws, sentences): same order
    within = np.mean(np.abs(ratios - 1) <= 0.1, axis=1)
    return dict(n=len(results), within_10=within.tolist(), within_10_mean=float(within.mean()),
                within_10_min=float(within.min()), within_10_max=float(within.max()),
                max_steps=int(sum(res["max_steps"] for res in results)), ratio_median=float(np.median(ratios)),
                ratio_sd_median=float(np.median(ratios.std(axis=0, ddof=1))) if len(results) > 1 else float("nan"),
                mean_ratio_within_10=float(np.mean(np.abs(ratios.mean(axis=0) - 1) <= 0.1)),
                focus=[res["focus"] for res in results], mcd=[res["mcd"] for res in results],
                l1=[res["l1"] for res in results])


def train_minutes(log: list[dict]) -> dict[int, float]:
    """{step: minutes the run itself took to reach it}: time between consecutive log events, not counting the
    pauses between an interruption and the next resume."""
    out, busy, prev = {}, 0.0, None
    for e in log:
        if e.get("event") in ("start", "resume"):
            prev = e["time"]
            continue
        if prev is not None and "time" in e:
            busy, prev = busy + e["time"] - prev, e["time"]
        if e.get("event") in ("train", "checkpoint"):
            out[e["step"]] = busy / 60
    return out


def stop_probe(model, val, seed: int, n: int | None = 12) -> dict:
    """The gate and the attention teacher-forced (prenet dropout on) on the first n held-out sentences (all for
    None): the stop probability at each one's last frame (where it should pass 0.5) and its largest value before
    the last 5 frames; and, as ratios to the true length like `evaluate`'s, the first frame whose stop
    probability passes 0.5 and the first whose attention peak reaches the last two symbols. Set beside the
    free-running figures, these tell an early gate from a decoder that speaks faster on its own frames."""
    import jax

    last, before, fires, reach = [], [], [], []
    for i, u in enumerate(list(val)[:n]):
        mel = np.load(u.mel)[None]
        frames = mel.shape[2]
        out = model(np.array([list(u.tokens)]), np.array([len(u.tokens)]), mel, np.array([frames]),
                    key=jax.random.fold_in(jax.random.key(seed), i))
        p = 1 / (1 + np.exp(-np.asarray(out[2], np.float64)[0]))
        last.append(p[-1])
        before.append(p[:-5].max())
        fired = np.flatnonzero(p > 0.5)
        fires.append((int(fired[0]) + 1 if fired.size else frames) / frames)
        reach.append(end_reached(np.asarray(out[3])[0], len(u.tokens), frames) / frames)
    return dict(sentences=len(last), last_min=float(min(last)), last_max=float(max(last)),
                before_max=float(max(before)), last=[float(x) for x in last], before=[float(x) for x in before],
                fires_median=float(np.median(fires)), fires_min=float(min(fires)),
                reach_median=float(np.median(reach)), fires=fires, reach=reach)


def _alignments(model, val, seed: int) -> list[np.ndarray]:
    import jax

    from jtts.repair import decode_rows

    utts = list(val)[:4]
    keys = [jax.random.fold_in(jax.random.key(seed), 10_000 + r) for r in range(len(utts))]
    return [d.alignment for d in decode_rows(model, [list(u.tokens) for u in utts], keys)]


if __name__ == "__main__":
    sys.exit(main())
