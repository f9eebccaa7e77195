"""The training loop: one explicit `for` over steps around `Trainer.train_step`.

Output directory (checked, locked and restored by `jtts.train.rundir`):
    checkpoints/<step>/   Orbax CheckpointManager: the train state (params, BatchNorm statistics, optimizer,
                          step, loss scale), the base RNG key, the data iterator's JSON state, and meta (what
                          the run was started with, and a checksum of the arrays)
    train_log.jsonl       one JSON object per line: start/resume, train (every log_every steps), val, checkpoint,
                          skipped, stop, interrupted, done events; each step once (a resume drops the events
                          past the checkpoint it continues from)
    tb/                   TensorBoard event files (only if tensorboardX is installed)
    val/step_<n>.png      Tacotron 2: mel and attention alignment of the first validation utterance
    model/                the final weights as a jtts model directory (`jtts synthesize` reads it)

Host syncs: the train step runs asynchronously; its metrics stay on the device and are read back only on log
and checkpoint steps (a step with a non-finite loss is skipped on the device and counted in the state, so
nothing needs to be checked in between). A run that goes non-finite is therefore stopped at the next log
step, naming the first bad step; checkpoints never hold a state that was not checked.

Exact resume: step k's dropout key is fold_in(base key, k), the data iterator's position is saved with the
state it produced, and nothing else is random, so a run stopped at a checkpoint and resumed gives the same
losses as one that never stopped. A non-finite loss stops the run (NonFiniteLoss names the step and the last
checkpoint, which the step never touched: the train step does not apply non-finite updates); under float16
loss scaling a non-finite step is a normal skip and only `max_skipped` skips in a row stop the run.

Faults: SIGINT or SIGTERM lets the current step finish, saves a checkpoint and raises `Interrupted` (exit
status 128 + the signal: 130, 143) naming the step and how to resume; a second signal stops at once. With
several processes, all stop after the same step (they agree on any signal one of them got at each log step) and
save that checkpoint together; process 0 writes the log, pictures and exported model. A run
directory that this call created is removed again if the call fails before its first step, so a failed start
leaves nothing that looks like a run.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import jax
import numpy as np

from jtts.errors import JttsError, NonFiniteLoss

from . import rundir
from .rundir import CKPT_DIR, LOG_FILE, MODEL_DIR, OutputDirError, read_log

VAL_KEY = 0x7FFFFFFF  # validation's prenet dropout (on in eval too, as in DLE) draws from fold_in(key, VAL_KEY)


class Interrupted(JttsError):
    """SIGINT/SIGTERM stopped the run after the current step; the checkpoint it was saved to, if any. Exit
    status 128 + signal number, as a shell reports a process killed by it."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None, resume_command: str | None = None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + int(signum)
        name = signal.Signals(signum).name
        if checkpoint is None:
            text = f"stopped by {name} before the first step; nothing to save"
        else:
            text = f"stopped by {name} at step {step}; checkpoint {checkpoint}"
            if resume_command:
                text += f"; resume with: {resume_command}"
        super().__init__(text)


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
    resume_command: str | None = None  # shown when a signal stops the run (`jtts train` passes its own)


def _json_default(x):
    if isinstance(x, (np.generic, jax.Array)):
        return np.asarray(x).item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"{type(x).__name__} is not JSON-able")


class _Log:
    """JSON lines (always) and TensorBoard scalars (when tensorboardX imports); process 0 writes."""

    def __init__(self, output: Path, tensorboard: bool, start: int = 0):
        self.on, self.output = jax.process_index() == 0, output
        self.file = open(output / LOG_FILE, "a", encoding="utf-8") if self.on else None
        self.tb = None
        if self.on and tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                pass
            else:
                # purge_step: TensorBoard drops what an earlier attempt logged past the resumed step
                self.tb = SummaryWriter(str(output / "tb"), purge_step=start + 1 if start else None)

    def __call__(self, event: str, step: int, **data):
        if not self.on:
            return
        try:
            self.file.write(json.dumps({"event": event, "step": step, "time": round(time.time(), 3), **data},
                                       default=_json_default) + "\n")
            self.file.flush()
        except OSError as e:  # a full disk, say: one line naming it and where the run can resume
            raise rundir.write_error(self.output / CKPT_DIR, e, str(self.output / LOG_FILE)) from None
        if self.tb is not None:
            for k, v in data.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"{event}/{k}", v, step)

    def close(self):
        if self.file:
            try:
                self.file.close()
            except OSError:
                pass  # its last write failed and was reported
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


class _StopOnSignal:
    """While active, SIGINT and SIGTERM set `signum` (the loop finishes its step, saves and stops); a second
    one gets the handler that was there before, i.e. stops at once. A no-op outside the main thread."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self.agreed: int | None = None
        self._old: dict = {}

    def requested(self, step: int, every: int = 1) -> int | None:
        """The signal that stops the run after `step`. With several processes, the one every process acts on:
        the largest any of them got, agreed (one small collective) at the steps that are multiples of `every`,
        and kept in between; a process that stopped on its own signal would wait forever for the others in
        their next collective (a launcher signals all processes, but they see it at different steps)."""
        if jax.process_count() == 1:
            return self.signum
        if step % every == 0:
            from jax.experimental import multihost_utils

            flags = multihost_utils.process_allgather(np.int32(self.signum or 0))
            self.agreed = int(np.max(flags)) or None
        return self.agreed

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            self.__exit__()
            signal.raise_signal(signum)
            return
        self.signum = signum
        if jax.process_index() == 0:
            print(f"{signal.Signals(signum).name}: finishing this step and saving a checkpoint "
                  f"(send it again to stop at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for s, handler in self._old.items():
            signal.signal(s, handler)
        self._old = {}


def _warn(message: str) -> None:
    if jax.process_index() == 0:
        print(f"warning: {message}", file=sys.stderr, flush=True)


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
        if i == 0 and plot_path is not None and jax.process_index() == 0:
            trainer.task.picture(plot_path, batch, jax.device_get(out))
        n += 1
    return {k: v / max(n, 1) for k, v in sums.items()}


def run_meta(trainer, meta: dict | None = None) -> dict:
    """What a checkpoint records about the run (compared on resume by `rundir.differences`)."""
    return {"kind": trainer.kind, "config": dataclasses.asdict(trainer.config), "dtype": trainer.dtype,
            "task": dataclasses.asdict(trainer.task), **(meta or {})}


def train(trainer, data, cfg: LoopConfig, *, val_batches: Callable[[], Iterable[dict]] | Iterable[dict] | None = None,
          resume: bool | str = False, opt_state=None, meta: dict | None = None) -> dict[str, Any]:
    """Runs `trainer` on `data` (iterator of batch dicts with get_state/set_state) up to cfg.steps steps.

    resume: False (the directory must hold no checkpoint), True (it must: continue from the newest good one)
    or "if-any". meta: facts to record with each checkpoint; kind, config, dtype, task options and any of
    batch_size, buckets, seed, workers are compared with a checkpoint before it is restored.
    Returns {"step", "losses" (every step's loss, this invocation), "val" (last validation), "model" (path),
    "state"}. Raises Interrupted when SIGINT/SIGTERM stopped the run (after saving a checkpoint).
    """
    output = Path(cfg.output)
    mode = rundir.resume_mode(resume)
    rundir.check_output(output, trainer.kind, mode)
    created = rundir.first_missing(output)
    # what a failed start may remove: the directories it made, or what it added to a directory holding no run
    before = None if created is not None or rundir.is_run(output) else set(os.listdir(output))
    done = {"steps": 0}
    try:
        with _StopOnSignal() as stop:
            return _train(trainer, data, cfg, output, mode, run_meta(trainer, meta), val_batches, opt_state, stop,
                          done)
    except BaseException:
        if done["steps"] == 0 and jax.process_index() == 0:
            _undo_start(output, created, before)
        raise


def _undo_start(output: Path, created: Path | None, before: set[str] | None) -> None:
    """A failed start leaves no directory that looks like a run."""
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
    elif before is not None:
        for p in output.iterdir():
            if p.name not in before:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _train(trainer, data, cfg, output, mode, meta, val_batches, opt_state, stop, done):
    output.mkdir(parents=True, exist_ok=True)
    held = rundir.lock(output) if jax.process_index() == 0 else None
    ckpt_dir = output / CKPT_DIR
    mngr = log = bar = None
    try:
        removed = rundir.clean_leftovers(output) if jax.process_index() == 0 else []
        mngr = rundir.manager(ckpt_dir, cfg.keep)
        rng = jax.random.key(cfg.seed)
        found = rundir.restore_latest(mngr, ckpt_dir, trainer, rng, meta, _warn) if mode != "no" else None
        start = found[0] if found is not None else 0
        if jax.process_index() == 0:
            rundir.truncate_log(output, start)
        log = _Log(output, cfg.tensorboard, start)
        if found is not None:
            start, state, rng, data_state, damaged = found
            if data_state and hasattr(data, "set_state"):
                data.set_state(data_state)
            log("resume", start, checkpoint=str(ckpt_dir / str(start)), damaged=[s for s, _ in damaged],
                removed=removed)
        else:
            state = trainer.init_state(opt_state)
            log("start", 0, **{k: v for k, v in meta.items() if k not in ("config", "task")}, steps=cfg.steps)
        bar = _Progress(cfg.steps, start, cfg.progress, trainer.task.unit)
        return _steps(trainer, data, cfg, output, meta, val_batches, stop, done, mngr, log, bar, start, state, rng)
    finally:
        if bar is not None:
            bar.close()
        if mngr is not None:
            _close_quietly(mngr)  # a failed write was reported already, or is superseded by what is propagating
            if jax.process_index() == 0:
                rundir.empty_trash(ckpt_dir)
        if log is not None:
            log.close()
        if held is not None:
            held.close()


def _close_quietly(mngr) -> None:
    try:
        mngr.wait_until_finished()
    except Exception:  # noqa: BLE001
        pass
    try:
        mngr.close()
    except Exception:  # noqa: BLE001
        pass


def _steps(trainer, data, cfg, output, meta, val_batches, stop, done, mngr, log, bar, start, state, rng):
    ckpt_dir = output / CKPT_DIR
    get_val = val_batches if callable(val_batches) else (lambda: val_batches)
    unit = trainer.task.unit
    losses, last_val = [], None
    pending: list = []  # (step, device metrics) not yet read back
    in_a_row = 0  # consecutive skipped steps up to the last read-back

    def flush() -> dict | None:
        """Reads back the pending steps' metrics (one host sync); stops the run on non-finite losses."""
        nonlocal in_a_row, pending
        if not pending:
            return None
        host = jax.device_get([m for _, m in pending])
        for (s, _), m in zip(pending, host):
            m = {k: np.asarray(v).item() for k, v in m.items() if np.ndim(v) == 0}
            losses.append(m["loss"])
            if m.pop("finite"):
                in_a_row = 0
                continue
            in_a_row += 1
            log("skipped", s, loss=m["loss"], loss_scale=m["loss_scale"], in_a_row=in_a_row)
            if not trainer.loss_scaling or in_a_row > cfg.max_skipped:
                pending = []
                rundir.wait(mngr)
                saved = mngr.latest_step()
                log("stop", s, reason="non-finite loss", loss=m["loss"], last_checkpoint=saved)
                raise NonFiniteLoss(s, m["loss"], saved, ckpt_dir)
        pending = []
        return m

    def save(step):
        flush()  # never checkpoint a state whose steps were not checked
        rundir.save(mngr, step, state, rng, data, meta)
        log("checkpoint", step, path=str(ckpt_dir / str(step)))

    t_last, items, steps_done = time.perf_counter(), 0, 0
    step = start
    it = iter(data)
    while step < cfg.steps and stop.requested(step, cfg.log_every) is None:
        try:
            batch = next(it)
        except StopIteration:
            log("data_exhausted", step)
            break
        state, metrics = trainer.train_step(state, trainer.shard_batch(batch), jax.random.fold_in(rng, step))
        step += 1
        done["steps"] += 1
        pending.append((step, metrics))
        items += trainer.items(batch)
        steps_done += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            m = flush()
            dt = time.perf_counter() - t_last
            rate = dict(steps_per_s=steps_done / dt, **{f"{unit}_per_s": items / dt})
            log("train", step, **m, lr=trainer.lr(state), **rate)
            bar.update(step, m["loss"], rate["steps_per_s"], rate[f"{unit}_per_s"])
            t_last, items, steps_done = time.perf_counter(), 0, 0
        if val_batches is not None and cfg.val_every and (step % cfg.val_every == 0 or step == cfg.steps):
            plot = output / "val" / f"step_{step:07d}.png" if cfg.plots else None
            last_val = validate(trainer, state, get_val(), jax.random.fold_in(rng, VAL_KEY), plot)
            log("val", step, **last_val)
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            save(step)
    flush()
    signum = stop.requested(step)  # every process the same
    if step != mngr.latest_step() and (step > 0 or signum is None):
        save(step)
    rundir.wait(mngr)
    if signum is not None:
        saved = mngr.latest_step()
        checkpoint = ckpt_dir / str(saved) if saved is not None else None
        log("interrupted", step, signal=signal.Signals(signum).name, checkpoint=checkpoint)
        raise Interrupted(signum, step, checkpoint, cfg.resume_command)
    model_dir = _export(trainer, state, output, meta)
    log("done", step, model=str(model_dir) if model_dir else None)
    return dict(step=step, losses=losses, val=last_val, model=model_dir, state=state)


def _export(trainer, state, output: Path, meta: dict):
    """The trained weights as a jtts model directory (process 0 writes); its source says where they came from."""
    if jax.process_index() != 0:
        return None
    from jtts.checkpoint import save_model

    step = int(jax.device_get(state["step"]))
    params = trainer.export_params(state)
    path = output / MODEL_DIR
    source = {"trained_by": "jtts train", "run": str(output.absolute()),
              "checkpoint": str((output / CKPT_DIR / str(step)).absolute()), "step": step,
              "parameters": int(sum(np.size(v) for v in state["params"].values())),
              **{k: v for k, v in meta.items() if k not in ("config", "kind", "task", "checksum")}}
    try:
        return save_model(path, trainer.kind, meta["config"], params, source=source)
    except JttsError:
        raise
    except Exception as e:  # noqa: BLE001  Orbax reports a full disk as a ValueError
        raise rundir.WriteError(f"cannot write the trained model to {path}: {rundir.os_reason(e)}; the run's "
                                f"checkpoints are complete (step {step})") from None


__all__ = ["LoopConfig", "train", "validate", "run_meta", "Interrupted", "NonFiniteLoss", "OutputDirError",
           "read_log"]
