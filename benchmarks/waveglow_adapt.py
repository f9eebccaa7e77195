"""Does a WaveGlow that `jtts train waveglow` trains on real speech get better? Numbers per model, on a
held-out mel cache (docs/learning.md, "WaveGlow adapts"):

    python benchmarks/waveglow_adapt.py init OUT_DIR [--config small] [--set KEY=VALUE ...] [--seed 0]
    python benchmarks/waveglow_adapt.py eval MODEL_DIR|RUN_DIR ... --val CACHE [--steps 100 200] [--json out.json]
                                        [--limit N] [--wav-dir DIR]

`init` writes a freshly initialised WaveGlow as a jtts model directory; training with `--init-from OUT_DIR` (and
the same --config) then starts from exactly these weights, so evaluating OUT_DIR is the run's step 0 (the run
itself never validates before its first step).

`eval` reports, per model directory or per checkpoint of a run directory:
  nll   the flow's negative log-likelihood per sample (DLE's loss, sigma 1) on one 8000-sample window of every
        held-out clip (the windows `jtts train --val` draws), averaged over clips; lower is better
  l1    mean |log-mel(vocoded) - log-mel(original)| over every frame and channel of every held-out clip, where
        the audio is vocoded from the clip's ground-truth mel (sigma 0.6, a fixed key per clip, so every model
        sees the same noise) and its log-mel computed with the cache's own front end. WaveGlow's output sample
        f * 256 + j belongs to mel frame f, so frames line up without any alignment search.
  bias  the mean signed log-mel difference (vocoded minus original): how much of l1 is loudness alone
  corr  correlation over frames of the vocoded and original mean log-mel: does loudness follow the speech?
For scale it also prints the same L1 for silence, for white noise of each clip's RMS, and for the original audio
(which should be ~0: it checks that the front end here is the cache's).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

SIGMA = 0.6          # the WaveGlow paper's inference sigma; the same for every model compared
NLL_BATCH = 10       # any size: batch means are weighted by their rows, so the NLL is the mean over clips


def init(args) -> None:
    from jtts import models
    from jtts.checkpoint import flat_state, save_model
    from jtts.train.configs import resolve

    config = resolve("waveglow", args.config, args.set)
    model = models.build("waveglow", config, seed=args.seed)
    params = {k: np.asarray(v.get_value()) for k, v in flat_state(model).items()}
    out = save_model(args.out, "waveglow", dataclasses.asdict(config), params,
                     source={"made_by": "benchmarks/waveglow_adapt.py init", "seed": args.seed,
                             "config": args.config})
    print(f"{out}: fresh WaveGlow ({args.config}), {sum(p.size for p in params.values()):,} parameters")


def targets(paths, steps) -> list[tuple[str, object]]:
    """(label, loader) per model: a model directory as it is, a run directory as each of its checkpoints."""
    from learn_speech import checkpoint_steps, load_params

    from jtts import models
    from jtts.checkpoint import assign

    def from_run(run, step):
        def load():
            config, params = load_params(run, step)
            model = models.build("waveglow", config, abstract=True)
            assign(model, params)
            return model
        return load

    out = []
    for p in map(Path, paths):
        if (p / "model.json").is_file():
            out.append((str(p), lambda p=p: models.load(p, kind="waveglow")))
        elif (p / "checkpoints").is_dir():
            for s in checkpoint_steps(p):
                if not steps or s in steps:
                    out.append((f"{p}@{s}", from_run(p, s)))
        else:
            raise SystemExit(f"{p}: neither a model directory nor a run directory with checkpoints")
    return out


def distances(audios, truths, fe) -> dict[str, float]:
    """Means over clips of: l1, mean |log-mel(audio) - truth| over the truth's frames; bias, the mean signed
    difference (how much too loud, in log-mel units: most of an untrained flow's L1 is its loud noise); corr, the
    correlation over frames of the two mean log-mels (does the loudness follow the utterance's?). All clips in one
    padded batch, one compile: `mels_from_audio` makes frame f of a padded clip exactly frame f of the clip."""
    from jtts.train.datasets import mels_from_audio

    frames = max(fe.frames(len(a)) for a in audios)
    mels = mels_from_audio([np.asarray(a, np.float32) for a in audios], frames, fe)
    rows = []
    for m, t in zip(mels, truths):
        d = m[:, :t.shape[1]] - t
        e = m[:, :t.shape[1]].mean(0)
        corr = float(np.corrcoef(e, t.mean(0))[0, 1]) if np.ptp(e) > 1e-3 else 0.0  # silence: a constant
        rows.append((float(np.mean(np.abs(d))), float(np.mean(d)), corr))
    return dict(zip(("l1", "bias", "corr"), map(float, np.mean(rows, axis=0))), l1_per_clip=[r[0] for r in rows])


def heldout_nll(model, val) -> float:
    from jtts.train.data import waveglow_val_batches
    from jtts.train.losses import waveglow_loss

    # no jit around this: model() is already a jitted function of the weights; a closure over the model would
    # bake the weights into the program as constants (minutes of XLA constant folding, per model)
    total = n = 0
    for batch in waveglow_val_batches(val, NLL_BATCH):
        rows = len(batch["audio"])
        total += float(waveglow_loss(model(batch["mels"], batch["audio"]))[0]) * rows
        n += rows
    return total / n


def evaluate(args) -> None:
    import jax

    from jtts.audio import save_wav
    from jtts.train.datasets import load_cache, read_audio, read_mel

    val = load_cache(args.val)
    utts = list(val)[:args.limit] if args.limit else list(val)
    fe = val.audio
    truths = [read_mel(u) for u in utts]
    originals = [read_audio(u) for u in utts]
    rng = np.random.default_rng(0)
    refs = {"original audio": originals,
            "silence": [np.zeros_like(a) for a in originals],
            "white noise, clip RMS": [rng.normal(0, np.sqrt(np.mean(a ** 2)), a.shape) for a in originals]}
    rows = []
    for name, audios in refs.items():
        rows.append(dict(model=name, **distances(audios, truths, fe)))
        print(f"{name:>40}: log-mel L1 {rows[-1]['l1']:.3f}  bias {rows[-1]['bias']:+.2f}  "
              f"loudness corr {rows[-1]['corr']:+.2f}", flush=True)
    root = jax.random.key(args.seed)
    for label, load in targets(args.models, set(args.steps or ())):
        t0 = time.perf_counter()
        model = load()
        if model.config.audio.differences(fe):  # vocoding mels of another front end would measure nothing
            raise SystemExit(f"{label}: its audio front end differs from {args.val}'s")
        nll = heldout_nll(model, val)
        inf = model.inference()
        voc = [np.asarray(inf.infer(m[None], sigma=SIGMA, key=jax.random.fold_in(root, i))[0])
               for i, m in enumerate(truths)]  # key per clip index: every model gets the same noise
        dist = distances(voc, truths, fe)
        peak = float(np.mean([np.max(np.abs(v)) for v in voc]))
        rows.append(dict(model=label, nll=nll, **dist, mean_peak=peak, seconds=time.perf_counter() - t0))
        print(f"{label:>40}: held-out NLL {nll:+.4f}  log-mel L1 {dist['l1']:.3f}  bias {dist['bias']:+.2f}  "
              f"loudness corr {dist['corr']:+.2f}  mean peak {peak:.2f}  ({rows[-1]['seconds']:.0f} s)", flush=True)
        if args.wav_dir:  # the first clips, to listen to (clipped to [-1, 1] as any WAV would be)
            d = Path(args.wav_dir) / label.replace("/", "_").strip("_")
            d.mkdir(parents=True, exist_ok=True)
            for u, v in list(zip(utts, voc))[:args.wavs]:
                save_wav(d / Path(u.audio).name, np.clip(v, -1, 1), fe.sample_rate)
    for path in args.models:  # the run's own validation, for comparison (mean of its batches' means)
        from jtts.train.rundir import read_log

        for e in read_log(path):
            if e.get("event") == "val":
                print(f"{path}@{e['step']}: run's logged val loss {e['loss']:+.4f}")
                rows.append(dict(model=f"{path}@{e['step']}", logged_val=e["loss"]))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(val=str(args.val), clips=len(utts), sigma=SIGMA, rows=rows),
                                              indent=1) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("init", help="write a freshly initialised WaveGlow model directory")
    a.add_argument("out")
    a.add_argument("--config", default="small", help="full, small, a JSON file or a model directory")
    a.add_argument("--set", nargs="*", default=[], help="KEY=VALUE config edits, as jtts train's")
    a.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("eval", help="held-out NLL and vocoded-audio log-mel L1 of models / run checkpoints")
    e.add_argument("models", nargs="+", help="model directories or run directories (every checkpoint)")
    e.add_argument("--val", required=True, help="held-out mel cache (jtts preprocess)")
    e.add_argument("--steps", type=int, nargs="*", help="only these checkpoints of run directories")
    e.add_argument("--limit", type=int, help="vocode only the first N held-out clips (the NLL always uses all)")
    e.add_argument("--seed", type=int, default=0, help="noise key of the vocoding")
    e.add_argument("--json", help="write the results here")
    e.add_argument("--wav-dir", help="save the first --wavs vocoded clips of each model here")
    e.add_argument("--wavs", type=int, default=3)
    args = ap.parse_args(argv)
    init(args) if args.cmd == "init" else evaluate(args)


if __name__ == "__main__":
    main()
