"""Learning side by side: NVIDIA's own Tacotron 2 (DLE's modules and loss, imported at run time from a checkout
the user points to) and jtts, trained with dropouts on, as DLE's recipe trains, from the same initial weights on
the same batches of real (espeak-ng) speech. Does jtts align as early as PyTorch does, and does it speak as well?

    python benchmarks/learn_dle.py --dle ~/DeepLearningExamples/PyTorch/SpeechSynthesis/Tacotron2 \\
        --seeds 0 1 2 --steps 600 --guided-attention 50          # the CI learning test's run, both frameworks
    python benchmarks/learn_dle.py --dle ... --guided-attention 0   # DLE's loss alone

The run is the CI learning test's (tests/learning_helpers.py: 52 short sentences, a 0.3M-parameter Tacotron 2,
batch 8 in one padded shape), extended to --steps. Both sides use DLE's optimiser (torch.optim.Adam with weight
decay 1e-6 and clip_grad_norm_(1.0) on the PyTorch side, jtts.train's Optax chain on the other) and DLE's
dropouts (prenet 0.5 at all times, encoder and postnet 0.5, attention and decoder LSTM outputs 0.1); the
dropout masks are each framework's own draws. DLE has no guided attention: with --guided-attention W > 0 the
PyTorch side adds W times the same diagonal prior term (Tachibana et al. 2017) from our PyTorch reference
(tests/reference; tests/test_losses.py checks it against jtts.train.losses.guided_attention_loss). Every batch is
fed unchanged to both, its rows sorted by length as DLE's collate sorts them (its encoder packs them in that order).

Every --eval-every steps both models are measured by the same code: DLE's weights are read back into jtts through
jtts.convert's table (the converter's path, exact to float32), then teacher-forced on the 8 held-out sentences
(model in eval mode, prenet dropout on): held-out loss and attention focus. At the end both decode the held-out
sentences free-running, --draws times each with other prenet dropout keys (benchmarks/learn_speech.py's
measures: focus, stops within +-10%, step limit reached, MCD and log-mel L1 after DTW), and the gate's
teacher-forced stop probability at each held-out sentence's last frame. "aligned at" is the first measured step
with held-out focus >= --aligned.
Nothing of DLE is part of this project.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from _dle import load as load_dle  # noqa: E402
from learning_helpers import HELD_OUT, LearnConfig, heldout_measures, make_corpus  # noqa: E402
from reference.tacotron2_torch import guided_attention_loss  # noqa: E402  (our torch twin of jtts' term)


class JttsSide:
    """jtts' Trainer: the run being judged."""

    def __init__(self, trainer, seed: int):
        import jax

        self.trainer, self.state, self.key, self.steps = trainer, trainer.init_state(), jax.random.key(seed), 0

    def step(self, batch: dict) -> float:
        import jax

        self.steps += 1
        self.state, m = self.trainer.train_step(self.state, batch, jax.random.fold_in(self.key, self.steps))
        return float(m["mel"] + m["postnet"] + m["gate"])  # DLE's loss

    def jtts_state(self) -> dict:
        return dict(params=self.state["params"], stats=self.state["stats"])


class DLESide:
    """DLE's Tacotron 2, its Tacotron2Loss and DLE's optimiser, started from jtts' initial weights."""

    def __init__(self, dle, config, params: dict[str, np.ndarray], table, like: dict, *, seed: int, lr: float,
                 weight_decay: float, clip: float, guided_attention: float, sigma: float):
        import torch

        from jtts.train.optim import load_into_torch

        from tacotron2.loss_function import Tacotron2Loss  # DLE's, importable once `load_dle` ran

        torch.manual_seed(seed)  # here, so a run draws the same dropout masks with or without a control beside it
        self.net = dle[0].get_model("Tacotron2", config.to_dle(), cpu_run=True)
        load_into_torch(self.net, params, table)
        self.loss = Tacotron2Loss()
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr, weight_decay=weight_decay)
        self.clip, self.ga, self.sigma, self.table, self.like = clip, guided_attention, sigma, table, like
        self.rng = torch.get_rng_state()  # this run's own dropout stream, whatever other runs draw in between

    def step(self, batch: dict) -> float:
        """One DLE iteration on the batch -> DLE's loss (without the guided-attention term)."""
        import torch

        order = np.argsort(-batch["token_lengths"], kind="stable")  # DLE's collate sorts by text length
        t = {k: torch.from_numpy(np.ascontiguousarray(v[order])) for k, v in batch.items()}
        tokens, n_len, mels, m_len = t["tokens"].long(), t["token_lengths"].long(), t["mels"], t["mel_lengths"].long()
        torch.set_rng_state(self.rng)
        self.net.train()
        self.net.zero_grad()
        out = self.net((tokens, n_len, mels, int(n_len.max()), m_len))
        loss = self.loss(out, (mels, t["gate"]))
        total = loss + self.ga * guided_attention_loss(out[3], n_len, m_len, self.sigma) if self.ga else loss
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.clip)
        self.opt.step()
        self.rng = torch.get_rng_state()
        return float(loss.detach())

    def jtts_state(self) -> dict:
        """DLE's current weights and BatchNorm statistics as a jtts state (params and stats), read through the
        converter's table into the names and shapes of `like`."""
        import jax.numpy as jnp

        from jtts.convert import is_buffer
        from jtts.convert.tables import to_jtts

        sd = {k: v.detach().numpy().copy() for k, v in self.net.state_dict().items()}
        shapes = {k: shape for part in self.like.values() for k, shape in part.items()}
        flat = to_jtts(sd, self.table, shapes, source="DLE", ignore=is_buffer)
        return {name: {k: jnp.asarray(flat[k]) for k in part} for name, part in self.like.items()}


def run_seed(dle, cfg: LearnConfig, args, log) -> dict:
    import jax
    from flax import nnx

    from jtts.convert.tacotron2 import table as tacotron2_table
    from jtts.tacotron2 import Tacotron2, Tacotron2Config
    from jtts.train.data import tacotron2_batches, tacotron2_val_batches
    from jtts.train.optim import make_optimizer
    from jtts.train.preprocess import preprocess
    from jtts.train.step import Trainer
    from jtts.train.tasks import task_for
    from learn_speech import draws, evaluate, stop_probe

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        train_dir, held_dir = make_corpus(Path(tmp), cfg)
        train_data = preprocess(train_dir, Path(tmp) / "train_cache", report=log)
        held_data = preprocess(held_dir, Path(tmp) / "held_cache", report=log)
        it = tacotron2_batches(train_data, cfg.batch_size, seed=cfg.seed, buckets=1)
        batches = [{k: np.ascontiguousarray(v) for k, v in next(it).items()} for _ in range(cfg.steps)]
        it.close()
        held = list(tacotron2_val_batches(held_data, HELD_OUT, buckets=1))
        held_utts = list(held_data)
        log(f"corpus, caches and {cfg.steps} batches of {tuple(batches[0]['mels'].shape)}: "
            f"{time.perf_counter() - t0:.0f} s")

        config = Tacotron2Config(**dict(cfg.model))
        model = Tacotron2(config, rngs=nnx.Rngs(cfg.seed))
        opt = task_for("tacotron2").optimizer  # DLE's weight decay and clip, for both sides
        tx, schedule = make_optimizer(opt, lr=cfg.lr)
        trainer = Trainer(model, tx, schedule, guided_attention=cfg.guided_attention,
                          guided_attention_sigma=cfg.guided_sigma)
        sides = {"jtts": JttsSide(trainer, cfg.seed)}
        like = {part: {k: np.shape(v) for k, v in sides["jtts"].state[part].items()} for part in ("params", "stats")}
        init = trainer.export_params(sides["jtts"].state)
        for name, torch_seed in (("dle", cfg.seed), ("control", 1_000 + cfg.seed))[:1 + args.control]:
            # the control differs from "dle" in its dropout draws only
            sides[name] = DLESide(dle, config, init, tacotron2_table(config), like, seed=torch_seed, lr=cfg.lr,
                                  weight_decay=opt["weight_decay"], clip=opt["grad_clip"],
                                  guided_attention=cfg.guided_attention, sigma=cfg.guided_sigma)
        eval_key = jax.random.key(10_000 + cfg.seed)

        def measure(step):
            row = dict(step=step)
            for name, side in sides.items():
                m = heldout_measures(trainer, side.jtts_state(), held, eval_key)
                row[f"{name}_loss"], row[f"{name}_focus"] = m["loss"], m["focus"]
            return row

        history = [measure(0)]
        train = {name: [] for name in sides}
        secs = {name: 0.0 for name in sides}
        for step, batch in enumerate(batches, 1):
            for name, side in sides.items():
                t = time.perf_counter()
                train[name].append(side.step(batch))
                secs[name] += time.perf_counter() - t
            if step % cfg.eval_every == 0 or step == cfg.steps:
                row = measure(step)
                row.update({f"{name}_train": float(np.mean(losses[-cfg.eval_every:]))
                            for name, losses in train.items()})
                history.append(row)
                log(f"step {step:4d}  " + "  ".join(
                    f"{name}: train {row[f'{name}_train']:.3f} held-out {row[f'{name}_loss']:.3f} focus "
                    f"{row[f'{name}_focus']:.3f}" for name in sides) + f"  ({time.perf_counter() - t0:.0f} s)")

        aligned = {name: next((r["step"] for r in history if r[f"{name}_focus"] >= args.aligned), None)
                   for name in sides}
        longest = max(u.frames for u in held_utts)
        free = {}
        for name, side in sides.items():
            model = trainer.model(side.jtts_state())
            evs = [evaluate(model, held_utts, seed=20_000 + 100 * d + cfg.seed, batch=HELD_OUT,
                            max_decoder_steps=int(args.max_ratio * longest)) for d in range(args.draws)]
            spread = draws(evs)
            free[name] = dict(spread, focus_mean=float(np.mean(spread["focus"])),
                              mcd_mean=float(np.mean(spread["mcd"])), l1_mean=float(np.mean(spread["l1"])),
                              ratios=[[round(r["ratio"], 3) for r in ev["rows"]] for ev in evs],
                              stop_probe=stop_probe(model, held_utts, 30_000 + cfg.seed, n=len(held_utts)))
            f = free[name]
            log(f"{name} free-running, {args.draws} draws: focus {f['focus_mean']:.3f}, within +-10% "
                f"{f['within_10_mean']:.0%} ({f['within_10_min']:.0%}-{f['within_10_max']:.0%}), median ratio "
                f"{f['ratio_median']:.2f}, at the step limit {f['max_steps']} of {args.draws * len(held_utts)}, "
                f"MCD {f['mcd_mean']:.1f} dB, log-mel L1 {f['l1_mean']:.3f}; teacher-forced stop probability at "
                f"the last frame {np.mean(f['stop_probe']['last']):.2f} (mean), before the last 5 frames at most "
                f"{f['stop_probe']['before_max']:.2f}")
        log(f"aligned (held-out focus >= {args.aligned}) at step: " + ", ".join(f"{k} {v}" for k, v in aligned.items())
            + "; training " + ", ".join(f"{k} {v:.0f} s" for k, v in secs.items()) + " (jtts incl. compilation)")
        return dict(config=dataclasses.asdict(cfg), history=history, aligned=aligned, free_running=free, seconds=secs,
                    train_losses=train)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dle", type=Path, required=True, help="DLE's PyTorch/SpeechSynthesis/Tacotron2 directory")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--lr", type=float, default=LearnConfig.lr)
    p.add_argument("--guided-attention", type=float, default=LearnConfig.guided_attention)
    p.add_argument("--aligned", type=float, default=0.5, help="held-out focus that counts as aligned")
    p.add_argument("--max-ratio", type=float, default=2.0,
                   help="free-running step limit, times the longest held-out ground truth")
    p.add_argument("--draws", type=int, default=4,
                   help="free-running decodes of every held-out sentence per model (prenet dropout keys differ)")
    p.add_argument("--control", action="store_true",
                   help="also a second DLE run differing in its dropout draws only: the yardstick for jtts vs DLE")
    p.add_argument("--threads", type=int, default=1, help="torch threads (jtts runs between its steps anyway)")
    p.add_argument("--json", type=Path, help="append one JSON object per seed")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    dle = load_dle(args.dle)
    for seed in args.seeds:
        cfg = LearnConfig(seed=seed, steps=args.steps, lr=args.lr, guided_attention=args.guided_attention,
                          eval_every=args.eval_every)
        res = run_seed(dle, cfg, args, log=lambda line: print(f"seed {seed}: {line}", flush=True))
        if args.json:
            with open(args.json, "a", encoding="utf-8") as f:
                f.write(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
