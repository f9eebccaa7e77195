"""Learning from real speech on a CPU: short espeak-ng sentences, a tiny Tacotron 2, and the measures the CI
learning test (tests/test_learning.py) and benchmarks/learn.py share.

Attention focus: the mean over decoder steps of the largest attention weight (see jtts.train.losses);
measured here teacher-forced on held-out sentences, with the model in eval mode and the prenet dropout on,
as DLE runs it.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

# Written for these tests: short, plain sentences with most letters of the alphabet, 2 to 6 words each.
SENTENCES = """\
The cat sat on the mat.
A red fox ran home.
We like warm bread.
She found a blue cup.
Open the door, please.
The dog barked at night.
My brother plays the drum.
It rained all day.
Quick, grab the rope!
They walked to the lake.
The sun is very bright.
He fixed the old bike.
Birds sing in spring.
Put the box down.
The milk is cold.
Jump over the fence.
Where is my hat?
The baby is sleeping.
Lions hunt at dusk.
We ate fresh fish.
Turn off the light.
The king wore a crown.
Snow fell on the hills.
Paint the wall green.
Her voice was soft.
The train left early.
Give me six apples.
The queen smiled.
Zebras have stripes.
A small boat drifted.
Read the next page.
The river runs fast.
He waved goodbye.
Wash your hands now.
The clock struck nine.
Frogs jump into ponds.
I lost my keys.
The garden smells sweet.
Stars shine at night.
Bring a warm coat.
The wind howled loudly.
Dinner is almost ready.
The kids played outside.
Pick up the pen.
A bee buzzed by.
The road was quiet.
Thank you very much.
Mix the flour well.
The ship sailed west.
Close your eyes.
The moon is full tonight.
Rabbits eat carrots.
Call me tomorrow.
The tea is too hot.
A tiny mouse squeaked.
The bus was late again.
Keep the window shut.
Owls sleep by day.
The band played jazz.
Plant the seeds deep.
"""

HELD_OUT = 8  # the last sentences: never trained on


def sentences() -> list[str]:
    return [s for s in SENTENCES.splitlines() if s.strip()]


@dataclasses.dataclass(frozen=True)
class LearnConfig:
    """One learning run; defaults are the CI test's."""
    seed: int = 0
    steps: int = 200
    batch_size: int = 8
    lr: float = 5e-3
    guided_attention: float = 50.0  # weight of the guided attention loss (0: DLE's recipe)
    guided_sigma: float = 0.2       # g of Tachibana et al.'s prior
    rate: int = 260                 # espeak-ng words per minute
    voice: str = "en-us"
    eval_every: int = 50
    model: tuple = (("symbols_embedding_dim", 64), ("encoder_embedding_dim", 64), ("encoder_n_convolutions", 2),
                    ("attention_rnn_dim", 96), ("decoder_rnn_dim", 96), ("prenet_dim", 32), ("attention_dim", 32),
                    ("attention_location_n_filters", 8), ("attention_location_kernel_size", 15),
                    ("postnet_embedding_dim", 32), ("postnet_n_convolutions", 3))


def make_corpus(folder: Path, cfg: LearnConfig) -> tuple[Path, Path]:
    """Train and held-out LJSpeech directories spoken by espeak-ng -> (train dir, held-out dir)."""
    from jtts.corpus import CorpusSettings, make_corpus as speak

    texts = sentences()
    settings = CorpusSettings(voice=cfg.voice, rate=cfg.rate, seed=cfg.seed)
    out = []
    for name, part in (("train", texts[:-HELD_OUT]), ("heldout", texts[-HELD_OUT:])):
        (folder / f"{name}.txt").write_text("\n".join(part) + "\n", encoding="utf-8")
        speak(folder / f"{name}.txt", folder / name, settings, overwrite=True, report=lambda msg: None)
        out.append(folder / name)
    return out[0], out[1]


def heldout_measures(trainer, state, batches, key) -> dict:
    """Teacher-forced, eval mode, prenet dropout on: mean attention focus and DLE loss over the batches, and
    the first batch's alignments."""
    import jax

    from jtts.train.losses import attention_focus

    focus, losses, n, first = [], [], 0, None
    for i, batch in enumerate(batches):
        res = trainer.eval_step(state, batch, jax.random.fold_in(key, i))
        first = np.asarray(res["alignments"]) if first is None else first
        focus.append(np.asarray(attention_focus(res["alignments"], batch["token_lengths"], batch["mel_lengths"])))
        losses.append(float(res["loss"]) * len(batch["tokens"]))
        n += len(batch["tokens"])
    return dict(focus=float(np.concatenate(focus).mean()), loss=sum(losses) / n, alignments=first)


def free_running(trainer, state, batches, key, max_ratio: float = 2.0) -> dict:
    """Held-out sentences decoded free-running (`Tacotron2.infer`, prenet dropout on as DLE infers): mean
    attention focus over the decoded steps, and each sentence's decoded length over its ground truth's."""
    import jax

    from jtts.train.losses import attention_focus

    model = trainer.model(state)
    focus, ratio, capped = [], [], 0
    for i, batch in enumerate(batches):
        limit = int(max_ratio * batch["mel_lengths"].max())
        t_in = int(batch["token_lengths"].max())
        _, lengths, align = model.infer(batch["tokens"][:, :t_in], batch["token_lengths"], max_decoder_steps=limit,
                                        key=jax.random.fold_in(key, i))
        lengths = np.asarray(lengths)
        capped += int(np.sum(lengths >= limit))
        focus.append(np.asarray(attention_focus(align, batch["token_lengths"], np.maximum(lengths, 1))))
        ratio.append(lengths / batch["mel_lengths"])
    ratio = np.concatenate(ratio)
    return dict(focus=float(np.concatenate(focus).mean()), length_ratio=ratio, capped=capped)


def learn(folder: Path, cfg: LearnConfig = LearnConfig(), log=None, on_eval=None) -> dict:
    """Corpus, model, training -> dict(history=[(step, mean train loss since the last row, held-out loss,
    held-out focus, seconds since the start)], train_losses (DLE's loss per step), ...).
    on_eval(step, alignments, batch): called at each measurement with the first held-out batch."""
    import jax
    from flax import nnx

    from jtts.tacotron2 import Tacotron2, Tacotron2Config
    from jtts.train.data import tacotron2_batches, tacotron2_val_batches
    from jtts.train.optim import make_optimizer
    from jtts.train.step import Trainer

    t0 = time.perf_counter()
    train_dir, held_dir = make_corpus(Path(folder), cfg)
    corpus_s = time.perf_counter() - t0
    train_it = tacotron2_batches(train_dir, cfg.batch_size, seed=cfg.seed, buckets=1)
    held = list(tacotron2_val_batches(held_dir, HELD_OUT, buckets=1))
    model = Tacotron2(Tacotron2Config(**dict(cfg.model)), rngs=nnx.Rngs(cfg.seed))
    tx, schedule = make_optimizer("tacotron2", lr=cfg.lr)
    trainer = Trainer(model, tx, schedule, guided_attention=cfg.guided_attention,
                      guided_attention_sigma=cfg.guided_sigma)
    state = trainer.init_state()
    key = jax.random.key(cfg.seed)
    eval_key = jax.random.key(10_000 + cfg.seed)
    history, recent, train_losses = [], [], []

    def measure(step):
        m = heldout_measures(trainer, state, held, eval_key)
        row = (step, float(np.mean(recent)) if recent else float("nan"), m["loss"], m["focus"],
               time.perf_counter() - t0)
        history.append(row)
        if on_eval:
            on_eval(step, m["alignments"], held[0])
        if log:
            log(f"step {step:4d}  train {row[1]:.3f}  held-out loss {row[2]:.3f}  focus {row[3]:.3f}  {row[4]:.0f} s")

    measure(0)
    for step in range(1, cfg.steps + 1):
        state, metrics = trainer.train_step(state, next(train_it), jax.random.fold_in(key, step))
        recent.append(float(metrics["mel"] + metrics["postnet"] + metrics["gate"]))  # DLE's loss
        train_losses.append(recent[-1])
        if step == 1 and log:
            log(f"first step (compiles) done at {time.perf_counter() - t0:.0f} s")
        if step % cfg.eval_every == 0 or step == cfg.steps:
            measure(step)
            recent = []
    train_it.close()
    utterances = len((train_dir / "metadata.csv").read_text(encoding="utf-8").splitlines())
    return dict(history=history, train_losses=train_losses, heldout=held, corpus_seconds=corpus_s,
                seconds=time.perf_counter() - t0, utterances=utterances, state=state, trainer=trainer)
