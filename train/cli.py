"""`jtts train tacotron2|waveglow`: argument parsing and setup around `jtts.train.loop.train`.

    jtts train tacotron2 --data cache/ --val val_filelist.txt -o runs/taco --steps 100000
    jtts train waveglow --data LJSpeech-1.1 -o runs/wg --init-from models/waveglow --init-optimizer ngc.pt
    jtts train tacotron2 -o runs/taco --resume ...                       # continues from the latest checkpoint

Defaults are DLE's training scripts (lr, weight decay, clipping, Tacotron 2's lr annealing after epochs 500,
1000 and 1500; per-device batch sizes of its fp32 scripts). Errors print one line naming the input; exit status
as the other commands (2 usage error, 1 bad input or runtime error), and 3 for a run stopped by a non-finite loss.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

BATCH_SIZE = {"tacotron2": 48, "waveglow": 4}
SMALL = {
    "tacotron2": dict(symbols_embedding_dim=64, encoder_embedding_dim=64, attention_rnn_dim=96, decoder_rnn_dim=96,
                      prenet_dim=32, attention_dim=24, attention_location_n_filters=8,
                      attention_location_kernel_size=7, postnet_embedding_dim=64),
    "waveglow": dict(n_layers=4, n_channels=32),
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train or fine-tune Tacotron 2 / WaveGlow (DLE's recipe)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=("tacotron2", "waveglow"))
    p.add_argument("--data", "--filelist", dest="data", metavar="PATH",
                   help="training set: mel cache (jtts preprocess), LJSpeech directory or DLE filelist")
    p.add_argument("--val", metavar="PATH", help="validation set (same forms as --data)")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="DIR", help="run directory")
    p.add_argument("--steps", type=int, default=100_000, help="train until this many steps (default 100000)")
    p.add_argument("--batch-size", type=int, help="global batch size (default: 48 Tacotron 2, 4 WaveGlow)")
    p.add_argument("--lr", type=float, help="learning rate (default: 1e-3 Tacotron 2, 1e-4 WaveGlow)")
    p.add_argument("--weight-decay", type=float, help="L2 added to the gradient (default: 1e-6 / 0)")
    p.add_argument("--grad-clip", type=float, help="global gradient-norm clip (default: 1.0 / 65504)")
    p.add_argument("--anneal-epochs", type=int, nargs="*", help="epochs after which the lr is multiplied by "
                   "--anneal-factor (default: 500 1000 1500 for Tacotron 2)")
    p.add_argument("--anneal-factor", type=float, help="0.1 (default) or DLE's alternating 0.3")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="compute dtype; weights and optimizer stay float32; float16 adds dynamic loss scaling")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output")
    p.add_argument("--init-from", type=Path, metavar="DIR", help="start from a converted model directory")
    p.add_argument("--init-optimizer", type=Path, metavar="PT",
                   help="continue the Adam moments of this DLE training checkpoint (.pt) (with --init-from)")
    p.add_argument("--config", choices=("full", "small"), default="full", help="fresh model size (default full)")
    p.add_argument("--keep", type=int, default=3, help="checkpoints to keep (default 3)")
    p.add_argument("--ckpt-every", type=int, default=1000, help="steps between checkpoints (default 1000)")
    p.add_argument("--val-every", type=int, default=1000, help="steps between validations (default 1000)")
    p.add_argument("--log-every", type=int, default=10, help="steps between log lines (default 10)")
    p.add_argument("--seed", type=int, default=1234, help="data order, dropout and fresh weights (DLE: 1234)")
    p.add_argument("--segment-length", type=int, default=8000, help="WaveGlow audio segment (default 8000)")
    p.add_argument("--buckets", type=int, default=8, help="Tacotron 2 batch shapes (each compiles once; default 8)")
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes (default 0)")
    p.add_argument("--prenet-dropout", type=float, default=0.5, help="Tacotron 2 prenet dropout (DLE: 0.5)")
    p.add_argument("--synthetic", action="store_true", help="random batches instead of data (smoke tests)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


class SyntheticBatches:
    """Random batches of fixed shapes with a resumable position (smoke runs and benchmarks)."""

    def __init__(self, kind: str, batch_size: int, *, seed: int = 0, t_in: int = 64, frames: int = 200,
                 segment: int = 8000, n_mel: int = 80, n_symbols: int = 148):
        self.kind, self.b, self.seed = kind, batch_size, seed
        self.t_in, self.frames, self.segment, self.n_mel, self.n_symbols = t_in, frames, segment, n_mel, n_symbols
        self.position, self.batches_per_epoch = 0, 1000

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        rng = np.random.default_rng([self.seed, self.position])
        self.position += 1
        b = self.b
        if self.kind == "waveglow":
            return dict(mels=rng.normal(-5, 1, (b, self.n_mel, self.segment // 256 + 1)).astype(np.float32),
                        audio=rng.uniform(-0.5, 0.5, (b, self.segment)).astype(np.float32))
        tok_len = np.full(b, self.t_in, np.int32)
        mel_len = np.full(b, self.frames, np.int32)
        gate = np.zeros((b, self.frames), np.float32)
        gate[:, -1] = 1.0
        return dict(tokens=rng.integers(1, self.n_symbols, (b, self.t_in)).astype(np.int32), token_lengths=tok_len,
                    mels=rng.normal(-5, 1, (b, self.n_mel, self.frames)).astype(np.float32), mel_lengths=mel_len,
                    gate=gate)

    def get_state(self) -> dict:
        return {"position": self.position}

    def set_state(self, state: dict) -> None:
        self.position = int(state["position"])


class UsageError(ValueError):
    """A bad combination of options."""


def _fail(msg: str, code: int) -> int:
    print(f"jtts train: error: {msg}", file=sys.stderr)
    return code


def _model(args):
    from flax import nnx

    if args.kind == "tacotron2":
        from jtts.tacotron2 import Tacotron2 as cls, Tacotron2Config as cfg_cls
    else:
        from jtts.waveglow import WaveGlow as cls, WaveGlowConfig as cfg_cls
    if args.init_from is not None:
        return cls.from_checkpoint(args.init_from)
    cfg = cfg_cls(**(SMALL[args.kind] if args.config == "small" else {}))
    return cls(cfg, rngs=nnx.Rngs(args.seed))


def _data(args, batch_size: int):
    if args.synthetic:
        return SyntheticBatches(args.kind, batch_size, seed=args.seed), None
    if not args.data:
        raise UsageError("--data is required (or --synthetic)")
    import jax

    from jtts.train import data as D

    seed = args.seed + jax.process_index()  # processes of a multi-host run draw different batches
    if args.kind == "tacotron2":
        train_it = D.tacotron2_batches(args.data, batch_size, seed=seed, buckets=args.buckets,
                                       worker_count=args.workers)
        val = (lambda: D.tacotron2_val_batches(args.val, batch_size, buckets=train_it.buckets)) if args.val else None
    else:
        train_it = D.waveglow_batches(args.data, batch_size, seed=seed, segment_length=args.segment_length,
                                      worker_count=args.workers)
        val = (lambda: D.waveglow_val_batches(args.val, batch_size, segment_length=args.segment_length)) \
            if args.val else None
    return train_it, val


def run(args) -> int:
    from jtts.checkpoint import ModelDirError
    from jtts.convert.tables import CheckpointError

    from .loop import NonFiniteLoss, OutputDirError

    from .datasets import DataError

    try:
        return _run(args)
    except (UsageError, OutputDirError) as e:  # options to change: a run directory in use needs --resume
        return _fail(str(e), 2)
    except NonFiniteLoss as e:
        return _fail(str(e), 3)
    except (ModelDirError, CheckpointError, DataError, FileNotFoundError, NotADirectoryError) as e:
        return _fail(str(e), 1)


def _run(args) -> int:
    from .step import maybe_initialize_distributed

    maybe_initialize_distributed()  # before anything touches a device
    import jax

    from .loop import LoopConfig, train
    from .optim import DEFAULTS, adam_state_from_torch, epochs_to_steps, make_optimizer, read_torch_adam
    from .step import Trainer

    if args.init_optimizer is not None and args.init_from is None:
        raise UsageError("--init-optimizer needs --init-from (the weights those moments belong to)")
    for name in ("steps", "keep", "ckpt_every", "log_every"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    batch_size = args.batch_size or BATCH_SIZE[args.kind]
    n_dev = jax.device_count()
    if batch_size % n_dev:
        raise UsageError(f"--batch-size {batch_size} is not a multiple of the {n_dev} devices")
    local_batch = batch_size // jax.process_count()
    data, val = _data(args, local_batch)
    model = _model(args)
    epochs = DEFAULTS[args.kind]["anneal_epochs"] if args.anneal_epochs is None else args.anneal_epochs
    per_epoch = getattr(data, "batches_per_epoch", None)
    if epochs and not per_epoch:
        raise UsageError("--anneal-epochs needs a data set with a known number of batches per epoch")
    tx, schedule = make_optimizer(args.kind, lr=args.lr, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
                                  anneal_steps=epochs_to_steps(epochs, per_epoch) if epochs else (),
                                  anneal_factor=args.anneal_factor)
    trainer = Trainer(model, tx, schedule, dtype=args.dtype, prenet_dropout=args.prenet_dropout)
    opt_state = None
    if args.init_optimizer is not None and not args.resume:
        from jtts.convert import tacotron2 as t_table, waveglow as w_table

        table = (t_table if args.kind == "tacotron2" else w_table).table(trainer.config)
        opt_state = adam_state_from_torch(tx.init(trainer.init_state()["params"]), read_torch_adam(args.init_optimizer),
                                          table)
    cfg = LoopConfig(output=args.output, steps=args.steps, keep=args.keep, ckpt_every=args.ckpt_every,
                     val_every=args.val_every if val is not None else 0, log_every=args.log_every, seed=args.seed,
                     progress=not args.no_progress and sys.stderr.isatty())
    meta = {"batch_size": batch_size, "init_from": str(args.init_from) if args.init_from else None,
            "data": args.data or "synthetic"}
    res = train(trainer, data, cfg, val_batches=val, resume=args.resume, opt_state=opt_state, meta=meta)
    losses = res["losses"]
    if jax.process_index() == 0:
        last = f", last loss {losses[-1]:.4f}" if losses else ""
        print(f"trained to step {res['step']}{last}; model: {res['model']}")
    return 0
