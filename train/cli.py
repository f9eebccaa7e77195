"""`jtts train tacotron2|waveglow`: argument parsing and setup around `jtts.train.loop.train`.

    jtts train tacotron2 --data cache/ --val val_filelist.txt -o runs/taco --steps 100000
    jtts train waveglow --data LJSpeech-1.1 -o runs/wg --init-from models/waveglow --init-optimizer ngc.pt
    jtts train tacotron2 -o runs/taco --resume ...          # continue from the newest good checkpoint (must exist)
    jtts train tacotron2 -o runs/taco --resume-if-any ...   # continue if there is one, else start (job scripts)
    jtts train tacotron2 --init-from models/tacotron2 --set n_symbols=160 --ignore-layers embedding ...
                                      # warm start: a larger symbol set, the embedding freshly initialised
    jtts train tacotron2 --config small --set audio.sample_rate=16000 --data LJSpeech-1.1 ...   # a 16 kHz model

The model config is --config's (full, small, a JSON file of config values or a model directory; default: the
--init-from model's, else full) with --set edits; it includes the audio front end (audio.sample_rate, n_fft,
hop, win, n_mels, fmin, fmax; DLE's 22050/1024/256/1024/80/0/8000 by default), which the data is read with and
the trained model records. With --init-from, every tensor whose name and shape match is loaded; the tensors
--ignore-layers names keep their fresh initialisation; any other mismatch is an error listing each.

Several processes (one per host, or several on one machine): set JAX_COORDINATOR_ADDRESS=HOST:PORT,
JAX_NUM_PROCESSES and JAX_PROCESS_ID (or run under SLURM / Open MPI); every process runs the same command,
--batch-size is the global batch, each process reads its own rows of it, and process 0 writes the run directory
(which must be on a file system all processes see).

Defaults are DLE's training scripts (lr, weight decay, clipping, Tacotron 2's lr annealing after epochs 500,
1000 and 1500; per-device batch sizes of its fp32 scripts). Every number is checked when parsed, with the allowed
range in the message; the output directory (and, on resume, the checkpoint's settings) before any data or model
loads; a batch larger than the data set is refused with the largest that fits. Nothing is created until all of
that passed.

Errors print one line naming the input; exit status 2 usage error, 1 bad input or runtime error, 3 a run stopped
by a non-finite loss. Ctrl-C (SIGINT) or SIGTERM finishes the current step, saves a checkpoint and prints the
command that resumes; exit status 130 or 143 (128 + the signal, as a shell reports it); a second signal stops at
once.
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

from jtts.errors import UsageError
from jtts.frontend import HOP
from jtts.models import KINDS

from .configs import PRESETS, set_option



def ranged(kind=int, lo=None, hi=None, *, above: bool = False, below: bool = False):
    """An argparse type: an int (kind=int) or finite float in [lo, hi] (`above`/`below`: lo/hi excluded);
    a value outside is refused at parse time with the range in the message."""
    show = str if kind is int else (lambda v: f"{v:g}")
    noun = "an integer" if kind is int else "a number"
    limits = ([f"{'>' if above else '>='} {show(lo)}"] if lo is not None else []) + \
             ([f"{'<' if below else '<='} {show(hi)}"] if hi is not None else [])
    want = " ".join([noun, " and ".join(limits)]).strip()

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if kind is float and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"expected {want}, got {text}")
        if lo is not None and (v <= lo if above else v < lo) or hi is not None and (v >= hi if below else v > hi):
            raise argparse.ArgumentTypeError(f"expected {want}, got {text}")
        return v
    return parse


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train or fine-tune Tacotron 2 / WaveGlow (DLE's recipe)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--data", "--filelist", dest="data", metavar="PATH",
                   help="training set: mel cache (jtts preprocess), LJSpeech directory or DLE filelist")
    p.add_argument("--val", metavar="PATH", help="validation set (same forms as --data)")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="DIR", help="run directory")
    p.add_argument("--steps", type=ranged(int, 1), default=100_000,
                   help="train until this many steps (default 100000)")
    p.add_argument("--batch-size", type=ranged(int, 1), help="global batch size (default: the model's, 48 "
                   "Tacotron 2, 4 WaveGlow)")
    p.add_argument("--lr", type=ranged(float, 0, above=True),
                   help="learning rate (default: 1e-3 Tacotron 2, 1e-4 WaveGlow)")
    p.add_argument("--weight-decay", type=ranged(float, 0), help="L2 added to the gradient (default: 1e-6 / 0)")
    p.add_argument("--grad-clip", type=ranged(float, 0, above=True),
                   help="global gradient-norm clip (default: 1.0 / 65504)")
    p.add_argument("--anneal-epochs", type=ranged(int, 1), nargs="*", help="epochs after which the lr is "
                   "multiplied by --anneal-factor, increasing (default: 500 1000 1500 for Tacotron 2)")
    p.add_argument("--anneal-factor", type=ranged(float, 0, 1, above=True),
                   help="0.1 (default) or DLE's alternating 0.3")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="compute dtype; weights and optimizer stay float32; float16 adds dynamic loss scaling")
    resume = p.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true",
                        help="continue from the newest good checkpoint in --output (there must be one)")
    resume.add_argument("--resume-if-any", action="store_true",
                        help="continue from the newest good checkpoint if there is one, else start a new run")
    p.add_argument("--init-from", type=Path, metavar="DIR",
                   help="start from a model directory (converted or trained): every tensor whose name and shape match")
    p.add_argument("--ignore-layers", nargs="+", default=[], metavar="PATTERN",
                   help="with --init-from: tensors to initialise afresh, by name or glob over jtts' dotted names "
                        "(embedding, decoder.attention*) or DLE's (embedding.weight)")
    p.add_argument("--init-optimizer", type=Path, metavar="PT",
                   help="continue the Adam moments of this DLE training checkpoint (.pt) (with --init-from)")
    p.add_argument("--config", metavar="CONFIG",
                   help=f"model config: {' or '.join(PRESETS)} (DLE's NGC size, or a quick one), a JSON file of config "
                        f"values (the rest DLE's) or a model directory (default: --init-from's, else full)")
    p.add_argument("--set", dest="sets", nargs="+", action="extend", default=[], type=set_option,
                   metavar="KEY=VALUE", help="config values over --config's, e.g. n_symbols=160 "
                                             "audio.sample_rate=16000 (VALUE is JSON, else a string)")
    p.add_argument("--keep", type=ranged(int, 1), default=3, help="checkpoints to keep (default 3)")
    p.add_argument("--ckpt-every", type=ranged(int, 1), default=1000,
                   help="steps between checkpoints (default 1000)")
    p.add_argument("--val-every", type=ranged(int, 0), default=1000,
                   help="steps between validations (default 1000; 0: never)")
    p.add_argument("--log-every", type=ranged(int, 1), default=10, help="steps between log lines (default 10)")
    p.add_argument("--seed", type=ranged(int, 0, 2**32 - 1), default=1234,
                   help="data order, dropout and fresh weights (DLE: 1234)")
    p.add_argument("--segment-length", type=ranged(int, HOP), default=8000,
                   help="WaveGlow audio segment in samples (default 8000)")
    p.add_argument("--buckets", type=ranged(int, 1), default=8,
                   help="Tacotron 2 batch shapes (each compiles once; default 8)")
    p.add_argument("--workers", type=ranged(int, 0), default=0, help="data loader worker processes (default 0)")
    p.add_argument("--prenet-dropout", type=ranged(float, 0, 1, below=True), default=0.5,
                   help="Tacotron 2 prenet dropout (DLE: 0.5)")
    p.add_argument("--guided-attention", type=ranged(float, 0), default=0.0, metavar="WEIGHT",
                   help="Tacotron 2: weight of a diagonal attention prior loss (Tachibana et al. 2017); 0, the "
                        "default, is DLE's recipe")
    p.add_argument("--gate-pos-weight", type=ranged(float, 0, above=True), default=1.0, metavar="WEIGHT",
                   help="Tacotron 2: weight of the stop frames in the gate loss (ESPnet uses 5, Coqui 10); 1, the "
                        "default, is DLE's recipe")
    p.add_argument("--synthetic", action="store_true", help="random batches instead of data (smoke tests)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run, train_parser=p)
    return p


def add_preprocess_parser(subparsers):
    """Register `preprocess` on an argparse subparsers object; its handler (args.func) returns an exit code."""
    p = subparsers.add_parser(
        "preprocess", help="compute training mels once into a cache (DLE's --load-mel-from-disk)",
        description="Read an LJSpeech directory or a DLE filelist, report bad entries as FILE:LINE: reason, and "
                    "write one log-mel .npy per utterance plus manifest.json (written last: a cache without it "
                    "is incomplete). Audio at any sample rate is resampled to the front end's (DLE's 22050 Hz "
                    "unless --config or --set say otherwise; train checks that the model's is the cache's); "
                    "stereo becomes mono.")
    p.add_argument("dataset", help="LJSpeech directory (metadata.csv + wavs/) or DLE filelist (path|text lines)")
    p.add_argument("-o", "--output", required=True, help="cache directory to write")
    p.add_argument("--dataset-path", help="directory the filelist's paths are relative to "
                                          "(default: the current directory, as DLE)")
    p.add_argument("--on-error", choices=("skip", "fail"), default="skip",
                   help="bad entries (missing or unreadable audio, nothing speakable, too long): skip them "
                        "(default) or stop with an error")
    p.add_argument("--max-seconds", type=ranged(float, 0, above=True),
                   help="treat clips longer than this many seconds as bad entries")
    p.add_argument("--text-cleaners", nargs="+",
                   help="jtts.text cleaners of the cache's ids, which decide what has something to speak (default: "
                        "english_cleaners, as DLE); training makes the ids again with the model's text front end "
                        "(text_cleaners, extra_symbols) where that differs")
    p.add_argument("--config", metavar="CONFIG",
                   help="take the audio front end of this model directory or config JSON (the model to be trained)")
    p.add_argument("--set", dest="sets", nargs="+", action="extend", default=[], type=set_option,
                   metavar="audio.KEY=VALUE", help="front-end values over --config's, e.g. audio.sample_rate=16000")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress or summary (bad entries still shown)")
    p.set_defaults(func=_run_preprocess)
    return p


def _run_preprocess(args) -> int:
    from .configs import frontend
    from .preprocess import run_preprocess  # imports JAX: only when the command runs

    return run_preprocess(args, frontend(args.config, args.sets))


class SyntheticBatches:
    """Random batches of fixed shapes (the task's `synthetic`) with a resumable position (smoke runs,
    benchmarks)."""

    def __init__(self, task, batch_size: int, config, *, seed: int = 0):
        self.task, self.b, self.config, self.seed = task, batch_size, config, seed
        self.position, self.batches_per_epoch = 0, 1000

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        import numpy as np

        rng = np.random.default_rng([self.seed, self.position])
        self.position += 1
        return self.task.synthetic(self.b, rng, self.config)

    def get_state(self) -> dict:
        return {"position": self.position}

    def set_state(self, state: dict) -> None:
        self.position = int(state["position"])


def _task(args):
    from .tasks import task_for

    if args.kind == "tacotron2":
        return task_for("tacotron2", prenet_dropout=args.prenet_dropout, guided_attention=args.guided_attention,
                        gate_pos_weight=args.gate_pos_weight)
    return task_for(args.kind, segment_length=args.segment_length)


def _config(args):
    """The model config the run will have (--config, --set, --init-from), without building or loading weights."""
    from .configs import resolve

    return resolve(args.kind, args.config, args.sets, args.init_from)


def _model(args, config):
    """A fresh model of `config`, warm-started from --init-from when given."""
    from jtts import models

    if args.init_from is None:
        return models.build(args.kind, config, seed=args.seed)
    import jax

    from jtts.checkpoint import load_model

    from .warmstart import warm_start

    meta, params = load_model(args.init_from, args.kind)
    # A symbol table extended at its end keeps the trained rows' meaning: they are loaded, the new rows start fresh.
    old_extra, new_extra = meta["config"].get("extra_symbols", "") or "", getattr(config, "extra_symbols", "")
    grow = ("embedding.embedding",) if len(new_extra) > len(old_extra) and new_extra.startswith(old_extra) else ()
    # fresh weights only where some are kept: otherwise every tensor is loaded into an abstract model
    model = models.build(args.kind, config, seed=args.seed, abstract=not (args.ignore_layers or grow))
    table = models.get(args.kind).names_module.table(config)
    done = warm_start(model, params, args.ignore_layers, source=args.init_from,
                      torch_names={r.torch: r.jtts for r in table}, grow=grow)
    if (args.ignore_layers or done.grown) and jax.process_index() == 0:
        print(done.summary(args.init_from), file=sys.stderr)
    return model


def _check_options(args) -> None:
    """What argparse cannot check alone."""
    if args.init_optimizer is not None and args.init_from is None:
        raise UsageError("--init-optimizer needs --init-from (the weights those moments belong to)")
    if args.ignore_layers and args.init_from is None:
        raise UsageError("--ignore-layers needs --init-from (the model whose other tensors are loaded)")
    if args.init_optimizer is not None and (args.ignore_layers or args.config is not None or args.sets):
        raise UsageError("--init-optimizer continues the moments of --init-from's tensors as they are: it cannot be "
                         "combined with --ignore-layers, --config or --set")
    epochs = args.anneal_epochs or []
    if any(b <= a for a, b in zip(epochs, epochs[1:])):
        raise UsageError(f"--anneal-epochs must increase, got {' '.join(map(str, epochs))}")
    if not args.synthetic and not args.data:
        raise UsageError("--data is required (or --synthetic)")


def _check_batch_fits(batch_size: int, dataset, n_dev: int) -> None:
    n = len(dataset)
    if n >= batch_size:
        return
    largest = n // n_dev * n_dev
    hint = (f"the largest that fits is --batch-size {largest}" if largest
            else f"it needs at least one utterance per device ({n_dev})")
    raise UsageError(f"--batch-size {batch_size} is larger than the training set ({dataset.origin}: {n} "
                     f"utterance{'s' if n != 1 else ''}); {hint}")


def _data(args, task, batch_size: int, config, n_dev: int):
    """(training batches, validation batches factory or None); both data sets are read here, at start, with the
    model's audio front end. batch_size is the global batch: every process plans the same batches and reads its
    own rows of each (`jtts.train.data`); validation batches are read whole by every process."""
    import jax

    if args.synthetic:
        return SyntheticBatches(task, batch_size // jax.process_count(), config, seed=args.seed), None
    from jtts.frontend import frontend_of

    from .datasets import load_dataset, with_text_frontend

    audio = frontend_of(config)
    text = getattr(config, "text_frontend", None)  # the model's (Tacotron 2): the ids synthesis will feed it

    def load(path):
        data = load_dataset(path, audio=audio)
        return with_text_frontend(data, text) if text is not None else data

    train_set = load(args.data)
    _check_batch_fits(batch_size, train_set, n_dev)
    val_set = load(args.val) if args.val and args.val_every else None
    train_it = task.batches(train_set, batch_size, seed=args.seed, buckets=args.buckets, worker_count=args.workers,
                            shard=(jax.process_index(), jax.process_count()))
    val = (lambda: task.val_batches(val_set, batch_size, train_it)) if val_set is not None else None
    return train_it, val


def resume_command(args) -> str:
    """The command that continues this run: every option given that differs from its default, and --resume."""
    words = ["jtts", "train", args.kind]
    for action in args.train_parser._actions:
        if not action.option_strings or action.dest in ("help", "resume", "resume_if_any"):
            continue
        value = getattr(args, action.dest, None)
        if value is None or value == action.default or value is False:
            continue
        flag = next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])
        if value is True:
            words.append(flag)
        else:
            words += [flag, *map(str, value if isinstance(value, list) else [value])]
    return shlex.join(words + ["--resume"])


def run(args) -> int:
    from .step import maybe_initialize_distributed

    maybe_initialize_distributed()  # before anything touches a device
    import jax

    from jtts import models

    from . import rundir
    from .loop import Interrupted, LoopConfig, train
    from .optim import adam_state_from_torch, epochs_to_steps, make_optimizer, read_torch_adam
    from .step import Trainer

    _check_options(args)
    mode = "if-any" if args.resume_if_any else "required" if args.resume else "no"
    existing = rundir.check_output(args.output, args.kind, mode)  # before anything loads
    task = _task(args)
    batch_size = task.batch_size if args.batch_size is None else args.batch_size
    n_dev = jax.device_count()
    if batch_size % n_dev:
        raise UsageError(f"--batch-size {batch_size} is not a multiple of the {n_dev} devices")
    config = _config(args)
    meta = {"batch_size": batch_size, "seed": args.seed,
            "init_from": str(args.init_from.absolute()) if args.init_from else None,
            "ignore_layers": list(args.ignore_layers),
            "data": "synthetic" if args.synthetic else str(Path(args.data).absolute())}
    if not args.synthetic:
        meta["workers"] = args.workers
    if existing:  # compare with the checkpoint before any data or weights load
        import dataclasses

        newest = rundir.newest_meta(args.output / rundir.CKPT_DIR)
        if newest is not None:
            rundir.check_matches(args.output / rundir.CKPT_DIR / str(newest[0]), newest[1],
                                 {"kind": args.kind, "config": dataclasses.asdict(config), "dtype": args.dtype,
                                  "task": dataclasses.asdict(task), **meta})
    model = _model(args, config)
    data, val = _data(args, task, batch_size, model.config, n_dev)
    if getattr(data, "buckets", None) is not None:
        meta["buckets"] = [list(b) for b in data.buckets]
    epochs = task.optimizer["anneal_epochs"] if args.anneal_epochs is None else args.anneal_epochs
    per_epoch = getattr(data, "batches_per_epoch", None)
    if epochs and not per_epoch:
        raise UsageError("--anneal-epochs needs a data set with a known number of batches per epoch")
    tx, schedule = make_optimizer(task.optimizer, lr=args.lr, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
                                  anneal_steps=epochs_to_steps(epochs, per_epoch) if epochs else (),
                                  anneal_factor=args.anneal_factor)
    trainer = Trainer(model, tx, schedule, dtype=args.dtype, task=task)
    opt_state = None
    if args.init_optimizer is not None and not existing:
        table = models.get(args.kind).names_module.table(trainer.config)
        opt_state = adam_state_from_torch(tx.init(trainer.init_state()["params"]), read_torch_adam(args.init_optimizer),
                                          table)
    cfg = LoopConfig(output=args.output, steps=args.steps, keep=args.keep, ckpt_every=args.ckpt_every,
                     val_every=args.val_every if val is not None else 0, log_every=args.log_every, seed=args.seed,
                     progress=not args.no_progress and sys.stderr.isatty(), resume_command=resume_command(args))
    try:
        res = train(trainer, data, cfg, val_batches=val, resume=mode, opt_state=opt_state, meta=meta)
    except Interrupted as e:
        if jax.process_index() == 0:
            print(f"jtts train: {e}", file=sys.stderr)
        return e.exit_code
    losses = res["losses"]
    if jax.process_index() == 0:
        last = f", last loss {losses[-1]:.4f}" if losses else ""
        print(f"trained to step {res['step']}{last}; model: {res['model']}")
    return 0
