"""The training loop: one explicit `for` over steps around `Trainer.train_step`.

Output directory:
    checkpoints/<step>/   Orbax CheckpointManager: the train state (params, BatchNorm statistics, optimizer,
                          step, loss scale), the base RNG key, the data iterator's JSON state, and meta
    train_log.jsonl       one JSON object per line: start/resume, train (every log_every steps), val, checkpoint,
                          stop events
    tb/                   TensorBoard event files (only if tensorboardX is installed)
    val/step_<n>.png      Tacotron 2: mel and attention alignment of the first validation utterance
    model/                the final weights as a jtts model directory (`jtts synthesize` reads it)

Exact resume: step k's dropout key is fold_in(base key, k), the data iterator's position is saved with the
state it produced, and nothing else is random, so a run stopped at a checkpoint and resumed gives the same
losses as one that never stopped. A non-finite loss stops the run (NonFiniteLoss names the step and the last
checkpoint, which the step never touched: the train step does not apply non-finite updates); under float16
loss scaling a non-finite step is a normal skip and only `max_skipped` skips in a row stop the run.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import jax
import numpy as np

CKPT_DIR, LOG_FILE, MODEL_DIR = "checkpoints", "train_log.jsonl", "model"
VAL_KEY = 0x7FFFFFFF  # validation's prenet dropout (on in eval too, as in DLE) draws from fold_in(key, VAL_KEY)


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int, loss: float, last_checkpoint: int | None, directory: Path):
        self.step, self.loss, self.last_checkpoint = step, loss, last_checkpoint
        where = (f"last good checkpoint: step {last_checkpoint} in {directory}" if last_checkpoint is not None
                 else "no checkpoint was written yet")
        super().__init__(f"loss became {loss} at step {step}; stopped ({where})")


class OutputDirError(ValueError):
    pass


@dataclass
class LoopConfig:
    output: Path
    steps: int
    keep: int = 3  # checkpoints kept
    ckpt_every: int = 1000
    val_every: int = 0  # 0: no validation
    log_every: int = 10
    seed: int = 0
    max_skipped: int = 20  # float16: consecutive skipped (overflowing) steps before giving up
    progress: bool = True
    plots: bool = True
    tensorboard: bool = True


def _json_default(x):
    if isinstance(x, (np.generic, jax.Array)):
        return np.asarray(x).item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"{type(x).__name__} is not JSON-able")


class _Log:
    """JSON lines (always) and TensorBoard scalars (when tensorboardX imports); process 0 writes."""

    def __init__(self, output: Path, tensorboard: bool):
        self.on = jax.process_index() == 0
        self.file = open(output / LOG_FILE, "a") if self.on else None
        self.tb = None
        if self.on and tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                pass
            else:
                self.tb = SummaryWriter(str(output / "tb"))

    def __call__(self, event: str, step: int, **data):
        if not self.on:
            return
        self.file.write(json.dumps({"event": event, "step": step, "time": round(time.time(), 3), **data},
                                   default=_json_default) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in data.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"{event}/{k}", v, step)

    def close(self):
        if self.file:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


class _Progress:
    def __init__(self, total: int, start: int, enabled: bool, unit: str):
        self.bar = None
        if enabled and jax.process_index() == 0:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                TextColumn("{task.fields[info]}"))
            self.task = self.bar.add_task("train", total=total, completed=start, info="")
            self.unit = unit
            self.bar.start()

    def update(self, step: int, loss: float, steps_s: float, items_s: float):
        if self.bar is not None:
            self.bar.update(self.task, completed=step,
                            info=f"loss {loss:.4f}  {steps_s:.2f} steps/s  {items_s:,.0f} {self.unit}/s")

    def close(self):
        if self.bar is not None:
            self.bar.stop()


def _manager(directory: Path, keep: int):
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(directory.absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=keep,
                                                                                           create=True))


def _save(mngr, step: int, state, rng, data, meta: dict) -> None:
    import orbax.checkpoint as ocp

    data_state = data.get_state() if hasattr(data, "get_state") else {}
    mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(dict(train=state, rng=jax.random.key_data(rng))),
        data=ocp.args.JsonSave(data_state), meta=ocp.args.JsonSave({**meta, "step": step})))


def _restore(mngr, step: int, trainer, rng):
    import orbax.checkpoint as ocp

    target = dict(train=trainer.abstract_state(),
                  rng=jax.ShapeDtypeStruct(jax.random.key_data(rng).shape, np.uint32, sharding=trainer.replicated))
    out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                     data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
    return out["state"]["train"], jax.random.wrap_key_data(out["state"]["rng"]), out["data"], out["meta"]


def _host(metrics) -> dict[str, Any]:
    return {k: np.asarray(v).item() for k, v in jax.device_get(metrics).items() if np.ndim(v) == 0}


def validate(trainer, state, batches: Iterable[dict], key, plot_path: Path | None = None) -> dict[str, float]:
    """Mean of the per-batch losses (as DLE averages them), model in eval mode; optional Tacotron 2 picture."""
    sums: dict[str, float] = {}
    n = 0
    for i, batch in enumerate(batches):
        out = trainer.eval_step(state, batch, jax.random.fold_in(key, i))
        for k, v in _host(out).items():
            sums[k] = sums.get(k, 0.0) + v
        if i == 0 and plot_path is not None and trainer.kind == "tacotron2" and jax.process_index() == 0:
            from jtts.plot import plot_utterance

            t, t_in = int(batch["mel_lengths"][0]), int(batch["token_lengths"][0])
            mel = np.asarray(jax.device_get(out["mel_postnet"]))[0, :, :t]
            align = np.asarray(jax.device_get(out["alignments"]))[0, :t, :t_in]
            plot_path.parent.mkdir(parents=True, exist_ok=True)
            plot_utterance(plot_path, mel, [align], title=plot_path.stem)
        n += 1
    return {k: v / max(n, 1) for k, v in sums.items()}


def train(trainer, data, cfg: LoopConfig, *, val_batches: Callable[[], Iterable[dict]] | Iterable[dict] | None = None,
          resume: bool = False, opt_state=None, meta: dict | None = None) -> dict[str, Any]:
    """Runs `trainer` on `data` (iterator of batch dicts with get_state/set_state) up to cfg.steps steps.

    Returns {"step", "losses" (every step's loss, this invocation), "val" (last validation), "model" (path)}.
    """
    output = Path(cfg.output)
    output.mkdir(parents=True, exist_ok=True)
    ckpt_dir = output / CKPT_DIR
    existing = sorted(int(p.name) for p in ckpt_dir.glob("*") if p.name.isdigit()) if ckpt_dir.is_dir() else []
    if existing and not resume:
        raise OutputDirError(f"{output}: already holds checkpoints (steps up to {existing[-1]}); "
                             f"pass --resume to continue, or choose another --output")
    meta = {"kind": trainer.kind, "config": dataclasses.asdict(trainer.config), "dtype": trainer.dtype,
            **(meta or {})}
    mngr = _manager(ckpt_dir, cfg.keep)
    log = _Log(output, cfg.tensorboard)
    rng = jax.random.key(cfg.seed)
    start = mngr.latest_step() if resume else None
    if start is not None:
        state, rng, data_state, _ = _restore(mngr, start, trainer, rng)
        if data_state and hasattr(data, "set_state"):
            data.set_state(data_state)
        log("resume", start, checkpoint=str(ckpt_dir / str(start)))
    else:
        start = 0
        state = trainer.init_state(opt_state)
        log("start", 0, **{k: v for k, v in meta.items() if k != "config"}, steps=cfg.steps)
    get_val = val_batches if callable(val_batches) else (lambda: val_batches)
    unit = "mels" if trainer.kind == "tacotron2" else "samples"
    bar = _Progress(cfg.steps, start, cfg.progress, unit)
    losses, last_val, skipped = [], None, 0
    t_last, items, steps_done = time.perf_counter(), 0, 0
    step = start
    last_saved = mngr.latest_step()
    try:
        it = iter(data)
        while step < cfg.steps:
            try:
                batch = next(it)
            except StopIteration:
                log("data_exhausted", step)
                break
            state, metrics = trainer.train_step(state, trainer.shard_batch(batch), jax.random.fold_in(rng, step))
            step += 1
            m = _host(metrics)
            finite = bool(m.pop("finite"))
            losses.append(m["loss"])
            items += trainer.items(batch)
            steps_done += 1
            if not finite:
                skipped += 1
                log("skipped", step, loss=m["loss"], loss_scale=m["loss_scale"], in_a_row=skipped)
                if not trainer.loss_scaling or skipped > cfg.max_skipped:
                    mngr.wait_until_finished()
                    last_saved = mngr.latest_step()
                    log("stop", step, reason="non-finite loss", loss=m["loss"], last_checkpoint=last_saved)
                    raise NonFiniteLoss(step, m["loss"], last_saved, ckpt_dir)
            else:
                skipped = 0
            if step % cfg.log_every == 0 or step == cfg.steps:
                dt = time.perf_counter() - t_last
                rate = dict(steps_per_s=steps_done / dt, **{f"{unit}_per_s": items / dt})
                lr = trainer.lr(state)
                log("train", step, **m, lr=lr, **rate)
                bar.update(step, m["loss"], rate["steps_per_s"], rate[f"{unit}_per_s"])
                t_last, items, steps_done = time.perf_counter(), 0, 0
            if val_batches is not None and cfg.val_every and (step % cfg.val_every == 0 or step == cfg.steps):
                plot = output / "val" / f"step_{step:07d}.png" if cfg.plots else None
                last_val = validate(trainer, state, get_val(), jax.random.fold_in(rng, VAL_KEY), plot)
                log("val", step, **last_val)
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                _save(mngr, step, state, rng, data, meta)
                log("checkpoint", step, path=str(ckpt_dir / str(step)))
        if step != mngr.latest_step():
            _save(mngr, step, state, rng, data, meta)
        mngr.wait_until_finished()
        model_dir = _export(trainer, state, output / MODEL_DIR, meta)
        log("done", step, model=str(model_dir) if model_dir else None)
        return dict(step=step, losses=losses, val=last_val, model=model_dir, state=state)
    finally:
        bar.close()
        mngr.wait_until_finished()
        mngr.close()
        log.close()


def _export(trainer, state, path: Path, meta: dict):
    """The trained weights as a jtts model directory (process 0 writes)."""
    if jax.process_index() != 0:
        return None
    from jtts.checkpoint import save_model

    source = {"trained_by": "jtts train", "step": int(jax.device_get(state["step"])),
              **{k: v for k, v in meta.items() if k not in ("config", "kind")}}
    return save_model(path, trainer.kind, meta["config"], trainer.export_params(state), source=source)


def read_log(output) -> list[dict]:
    path = Path(output) / LOG_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


__all__ = ["LoopConfig", "train", "validate", "NonFiniteLoss", "OutputDirError", "read_log"]
