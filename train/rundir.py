"""The run directory of `jtts train`: checked before anything loads or is created, locked while a run uses it,
its log kept to one line per step across resumes, and its Orbax checkpoints saved with a checksum, compared
with the command before anything is restored, and restored with a fall-back to the previous good one.

    RUN/checkpoints/<step>/       Orbax: items state {"train", "rng"}, data (the loader's JSON state), meta
    RUN/checkpoints/.deleted/     checkpoints past --keep: Orbax renames them here, jtts deletes them
    RUN/checkpoints-damaged/      checkpoints found unreadable on resume, moved here (not deleted)
    RUN/train_log.jsonl           see jtts.train.loop
    RUN/.lock                     flock'ed by the process that trains in RUN (released when it exits, even
                                  by kill -9)

A checkpoint's meta is JSON: kind, config, dtype, task options, batch layout (batch_size, buckets, seed,
workers), the run's other facts (data, init_from), step, and `checksum`: CRC-32 of every array of `state`.

Why more than Orbax: a checkpoint saved with other options (another --config, kind or batch size) fails deep
inside TensorStore with pages of internals, so the stored meta is compared with the command first and the
differences are named in one line. A truncated or deleted array file fails the same way, and flipped bytes
in an array file are read back without complaint (measured here: one flipped bit in a parameter file restored
silently), hence the checksum. A checkpoint that fails either way is moved to checkpoints-damaged/ with a
warning and the previous one is used. Orbax's temporaries from a killed save (`*.orbax-checkpoint-tmp-*`) and
a killed export's (`.model.partial-*`) are removed at start.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
import zlib
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from jtts.errors import JttsError, UsageError, one_line
from jtts.files import atomic_write

CKPT_DIR, DAMAGED_DIR, LOG_FILE, MODEL_DIR = "checkpoints", "checkpoints-damaged", "train_log.jsonl", "model"
LOCK_FILE = ".lock"
RESUME_MODES = ("no", "required", "if-any")
TMP_MARK = ".orbax-checkpoint-tmp"  # Orbax's suffix of a save in progress
# Orbax renames checkpoints past --keep into this subdirectory (todelete_subdir) instead of deleting them in
# place: a kill in the middle of deleting one would leave a half-deleted directory under a step's name.
TRASH = ".deleted"
# What a resume must agree on, and the option that sets each (for messages).
COMPARED = {"kind": "the model kind", "config": "--config/--set/--init-from", "dtype": "--dtype", "task": "",
            "batch_size": "--batch-size", "buckets": "--buckets, and the data set's lengths", "seed": "--seed",
            "workers": "--workers"}


class OutputDirError(UsageError):
    """A run directory that cannot be used as asked (a file, not writable, another kind's run, checkpoints
    without --resume, --resume without checkpoints, in use by another run)."""


# -- the directory ---------------------------------------------------------------------------------------------

def resume_mode(resume) -> str:
    """False/None -> "no", True -> "required", or one of RESUME_MODES as it is."""
    mode = {False: "no", None: "no", True: "required"}.get(resume, resume)
    if mode not in RESUME_MODES:
        raise ValueError(f"resume must be a bool or one of {RESUME_MODES}, got {resume!r}")
    return mode


def check_output(output, kind: str, resume=False) -> list[int]:
    """Everything about the run directory that can be checked before data or models load and before anything
    is created -> the steps of its checkpoints. OutputDirError (exit 2) naming the directory otherwise."""
    output, mode = Path(output), resume_mode(resume)
    if not output.exists():
        check_creatable(output)
        found = []
    else:
        _check_usable(output, kind)
        found = steps(output / CKPT_DIR)
    if found and mode == "no":
        raise OutputDirError(f"{output}: already holds checkpoints (steps up to {found[-1]}); pass --resume to "
                             f"continue, or choose another --output")
    if not found and mode == "required":
        raise OutputDirError(f"{output}: no checkpoint to resume from; drop --resume to start a new run there, "
                             f"or pass --resume-if-any")
    return found


def first_missing(path: Path) -> Path | None:
    """The outermost directory that creating `path` would create (None if it exists): what to remove again
    when a command that created it fails."""
    missing = None
    for p in (Path(path).absolute(), *Path(path).absolute().parents):
        if p.exists():
            return missing
        missing = p
    return missing


def check_creatable(output: Path) -> None:
    """A path that does not exist yet can be created as a directory (OutputDirError otherwise)."""
    parent = next(p for p in output.absolute().parents if p.exists())
    if not parent.is_dir():
        raise OutputDirError(f"cannot create {output}: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputDirError(f"cannot create {output}: {parent} is not writable")


def _check_usable(output: Path, kind: str) -> None:
    if not output.is_dir():
        raise OutputDirError(f"{output} is a file, not a run directory")
    for p in (output, output / CKPT_DIR, output / LOG_FILE):
        if p.exists() and not os.access(p, os.W_OK | (os.X_OK if p.is_dir() else 0)):
            raise OutputDirError(f"{p} is not writable")
    shown = sorted(p.name for p in output.iterdir() if not p.name.startswith("."))
    if shown and not is_run(output):
        raise OutputDirError(f"{output} is not empty and holds no jtts run ({', '.join(shown[:3])}"
                             f"{', ...' if len(shown) > 3 else ''}); choose a new or empty directory")
    other = run_kind(output)
    if other is not None and other != kind:
        raise OutputDirError(f"{output} holds a {other} run, not {kind}; choose another --output")


def is_run(output: Path) -> bool:
    return (output / LOG_FILE).is_file() or (output / CKPT_DIR).is_dir()


def run_kind(output: Path) -> str | None:
    """The model kind a run directory trains: from its newest readable checkpoint, else its log's start."""
    newest = newest_meta(output / CKPT_DIR)
    if newest is not None and isinstance(newest[1].get("kind"), str):
        return newest[1]["kind"]
    for event in read_log(output):
        if event.get("event") == "start" and isinstance(event.get("kind"), str):
            return event["kind"]
    return None


def lock(output: Path):
    """An exclusive flock on RUN/.lock for as long as the returned file stays open (None where flock is
    missing); OutputDirError if another process holds it."""
    try:
        import fcntl
    except ImportError:
        return None
    f = open(output / LOCK_FILE, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise OutputDirError(f"{output} is in use by another jtts train ({holder})") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    return f


def clean_leftovers(output: Path) -> list[str]:
    """Removes what killed saves and exports left behind; returns the names removed."""
    gone = clean_temporaries(output / CKPT_DIR)
    for p in sorted(output.glob(f".{MODEL_DIR}.partial-*")) + sorted(output.glob(f".{MODEL_DIR}.old-*")):
        shutil.rmtree(p, ignore_errors=True)
        gone.append(p.name)
    return gone


def read_log(output) -> list[dict]:
    """The events of RUN/train_log.jsonl (a line cut short by a kill is skipped)."""
    path = Path(output) / LOG_FILE
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def truncate_log(output: Path, step: int) -> int:
    """Keeps the log's events up to `step`, the checkpoint a run continues from (its later events will be
    logged again); rewritten atomically. Returns the number of lines dropped."""
    path = output / LOG_FILE
    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    kept = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue  # cut short by a kill
        if isinstance(event, dict) and event.get("step", 0) <= step:
            kept.append(line + "\n")
    if len(kept) < len(lines):
        with atomic_write(path, "w") as f:
            f.writelines(kept)
    return len(lines) - len(kept)


# -- checkpoints ----------------------------------------------------------------------------------------------

def steps(ckpt_dir: Path) -> list[int]:
    """Step numbers of the (finished) checkpoints in `ckpt_dir`, ascending."""
    ckpt_dir = Path(ckpt_dir)
    return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()) if ckpt_dir.is_dir() else []


def manager(ckpt_dir: Path, keep: int):
    """The run's Orbax CheckpointManager: `keep` checkpoints, old ones renamed into TRASH before deletion."""
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(Path(ckpt_dir).absolute(), options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, todelete_subdir=TRASH))


def empty_trash(ckpt_dir: Path) -> list[str]:
    """Deletes the checkpoints Orbax moved out of the way; returns their names."""
    trash = Path(ckpt_dir) / TRASH
    gone = []
    for p in sorted(trash.iterdir()) if trash.is_dir() else []:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        gone.append(f"{TRASH}/{p.name}")
    return gone


def clean_temporaries(ckpt_dir: Path) -> list[str]:
    """Removes what killed saves left (Orbax writes `<step>.orbax-checkpoint-tmp-<time>` and renames it when
    complete) and the trash; returns the names removed."""
    ckpt_dir = Path(ckpt_dir)
    gone = empty_trash(ckpt_dir)
    for p in sorted(ckpt_dir.glob(f"*{TMP_MARK}*")) if ckpt_dir.is_dir() else []:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        gone.append(p.name)
    return gone


def stored_meta(step_dir: Path) -> dict | None:
    """The meta JSON a checkpoint was saved with (Orbax's JsonSave file), or None if it cannot be read."""
    try:
        meta = json.loads((Path(step_dir) / "meta" / "metadata").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def newest_meta(ckpt_dir: Path) -> tuple[int, dict] | None:
    """(step, meta) of the newest checkpoint whose meta can be read."""
    for step in reversed(steps(ckpt_dir)):
        meta = stored_meta(Path(ckpt_dir) / str(step))
        if meta is not None:
            return step, meta
    return None


def _normal(x):
    return json.loads(json.dumps(x, default=str))  # tuples -> lists, numbers as JSON holds them


def differences(stored: dict, current: dict) -> list[str]:
    """What a resume from `stored` would change, one phrase each; keys missing on either side are not compared
    (older checkpoints, or facts not known yet), nor fields of a compared dict that `stored` lacks (a config
    field added since the checkpoint was written, such as the audio front end: it had the default then)."""
    out = []
    for key, option in COMPARED.items():
        if key not in stored or key not in current:
            continue
        a, b = _normal(stored[key]), _normal(current[key])
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            fields = [k for k in sorted(a) if a.get(k) != b.get(k)]
            if not fields:
                continue
            if option:  # one option sets them all: the first few are enough
                shown = "; ".join(f"{k} {a.get(k)!r} (this command: {b.get(k)!r})" for k in fields[:3])
                more = f"; and {len(fields) - 3} more" if len(fields) > 3 else ""
                out.append(f"{key} ({option}): {shown}{more}")
            else:
                out += [f"{key} {k} {a.get(k)!r} (this command: {b.get(k)!r}) (--{k.replace('_', '-')})"
                        for k in fields]
        else:
            flag = f" ({option})" if option.startswith("--") else ""
            out.append(f"{key} {a!r} (this command: {b!r}){flag}")
    return out


def check_matches(step_dir: Path, stored: dict, current: dict) -> None:
    diff = differences(stored, current)
    if diff:
        raise UsageError(f"cannot resume from {step_dir}: it was saved with other settings: {'; '.join(diff)}; "
                         f"use the options it was saved with, or another --output")


def checksum(tree) -> int:
    """CRC-32 of every array of `tree` in tree order (values and shapes; replicated arrays read on this host)."""
    leaves = [x.addressable_data(0) if isinstance(x, jax.Array) and not x.is_fully_addressable else x
              for x in jax.tree.leaves(tree)]
    crc = 0
    for a in jax.device_get(leaves):  # one transfer
        a = np.ascontiguousarray(np.asarray(a))
        crc = zlib.crc32(repr((a.dtype.str, a.shape)).encode(), crc)
        crc = zlib.crc32(a.view(np.uint8).reshape(-1) if a.size else b"", crc)
    return crc


class WriteError(JttsError):
    """A checkpoint could not be written (disk full, permissions, a vanished directory): the run stops, and the
    message names the cause and the newest complete checkpoint."""


def save(mngr, step: int, state, rng, data, meta: dict) -> None:
    """Starts writing checkpoint `step` (Orbax finishes it in the background; `wait` for it). An earlier save
    that failed in the background surfaces here as WriteError."""
    import orbax.checkpoint as ocp

    ckpt_dir = Path(str(mngr.directory))
    try:
        if jax.process_index() == 0:
            empty_trash(ckpt_dir)  # what the previous saves moved out (Orbax renames, we delete)
        data_state = data.get_state() if hasattr(data, "get_state") else {}
        # the key's data as numpy: a jax.Array of it lives on one device of one process, which Orbax cannot
        # save when several processes save together
        tree = dict(train=state, rng=np.asarray(jax.random.key_data(rng)))
        meta = {**meta, "step": step, "checksum": checksum(tree)}
        mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                data=ocp.args.JsonSave(data_state), meta=ocp.args.JsonSave(meta)))
    except Exception as e:  # noqa: BLE001  Orbax/TensorStore report I/O failures as ValueErrors and bare Exceptions
        raise write_error(ckpt_dir, e) from None


def wait(mngr) -> None:
    """Waits for the checkpoint being written; WriteError if it failed."""
    try:
        mngr.wait_until_finished()
    except Exception as e:  # noqa: BLE001  as in save
        raise write_error(Path(str(mngr.directory)), e) from None


def write_error(ckpt_dir: Path, e: BaseException, what: str | None = None) -> WriteError:
    """WriteError for a failed write of `what` (default: a checkpoint) in a run whose checkpoints are in
    `ckpt_dir`, naming the cause and the newest complete checkpoint."""
    newest = steps(ckpt_dir)
    kept = f"the newest complete checkpoint is step {newest[-1]}" if newest else "no checkpoint was completed"
    return WriteError(f"cannot write {what or f'a checkpoint in {ckpt_dir}'}: {os_reason(e)}; the run stopped and "
                      f"{kept} (resume with --resume once the cause is fixed)")


def os_reason(e: BaseException) -> str:
    """The operating system's words for an I/O failure buried in TensorStore's message, if any."""
    inner = _innermost(e)
    if isinstance(inner, OSError) and inner.strerror:
        return inner.strerror
    code = re.search(r"os_error_code='?(\d+)", str(inner))
    return os.strerror(int(code.group(1))) if code else one_line(f"{type(inner).__name__}: {inner}", 200)


def _innermost(e: BaseException) -> BaseException:
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    return e


def _restore_one(mngr, step: int, trainer, rng):
    import orbax.checkpoint as ocp

    target = dict(train=trainer.abstract_state(),
                  rng=jax.ShapeDtypeStruct(jax.random.key_data(rng).shape, np.uint32, sharding=trainer.replicated))
    out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                     data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
    expected = out["meta"].get("checksum")
    if expected is not None and checksum(out["state"]) != expected:
        raise _Damaged("its arrays do not match the checksum saved with them (a file was changed or damaged)")
    return out["state"]["train"], jax.random.wrap_key_data(out["state"]["rng"]), out["data"], out["meta"]


class _Damaged(Exception):
    pass


def _reason(e: BaseException) -> str:
    """One short line for why a checkpoint could not be read (not TensorStore's spec dumps)."""
    if isinstance(e, _Damaged):
        return str(e)
    inner = _innermost(e)
    text = " ".join(f"{type(inner).__name__}: {inner}".split())
    for code, meaning in (("NOT_FOUND", "a file is missing"), ("OUT_OF_RANGE", "a file is truncated"),
                          ("DATA_LOSS", "a file is damaged"), ("FileNotFoundError", "a file is missing"),
                          ("JSONDecodeError", "a JSON file is damaged"), ("KeyError", "an item is missing")):
        if code in text:
            return f"{meaning} ({one_line(text, 160)})"
    return f"cannot be read ({one_line(text, 160)})"


def restore_latest(mngr, ckpt_dir: Path, trainer, rng, meta: dict, warn: Callable[[str], None]):
    """Restores the newest good checkpoint -> (step, state, rng, data state, [(damaged step, reason)]), or None
    when there is no checkpoint. Each candidate's stored meta is compared with `meta` first (UsageError naming
    the differences); one that cannot be read is moved to checkpoints-damaged/ with a warning, once an older
    good one is found. None good: JttsError listing why, and nothing is moved."""
    ckpt_dir = Path(ckpt_dir)
    damaged: list[tuple[int, str]] = []
    for step in reversed(steps(ckpt_dir)):
        step_dir = ckpt_dir / str(step)
        stored = stored_meta(step_dir)
        if stored is None:
            damaged.append((step, "its meta/metadata file is missing or damaged"))
            continue
        check_matches(step_dir, stored, meta)
        try:
            state, rng_out, data_state, _ = _restore_one(mngr, step, trainer, rng)
        except Exception as e:  # noqa: BLE001  Orbax/TensorStore raise bare Exceptions, ValueErrors, KeyErrors...
            damaged.append((step, _reason(e)))
            continue
        for bad, why in damaged if jax.process_index() == 0 else ():
            moved = _move_aside(ckpt_dir, bad)
            warn(f"checkpoint step {bad} in {ckpt_dir} is unreadable: {why}; moved to {moved}, "
                 f"resuming from step {step}")
        if damaged:
            if jax.process_count() > 1:  # every process lists the checkpoints again only once they were moved
                from jax.experimental import multihost_utils

                multihost_utils.sync_global_devices("jtts-damaged-checkpoints-moved")
            mngr.reload()
        return step, state, rng_out, data_state, damaged
    if damaged:
        listed = "; ".join(f"step {s}: {why}" for s, why in damaged)
        raise JttsError(f"no readable checkpoint in {ckpt_dir} ({listed}); move the directory away to start over")
    return None


def _move_aside(ckpt_dir: Path, step: int) -> Path:
    dest_dir = ckpt_dir.parent / DAMAGED_DIR
    dest_dir.mkdir(exist_ok=True)
    dest = dest_dir / str(step)
    if dest.exists():
        dest = dest_dir / f"{step}.{time.strftime('%Y%m%d-%H%M%S')}"
    (ckpt_dir / str(step)).rename(dest)
    return dest


def verify_checkpoints(ckpt_dir: Path, trainer) -> dict[int, str | None]:
    """Every checkpoint in `ckpt_dir` restored and checked against its checksum -> {step: None, or why it is
    unreadable}. For fault-injection tests: whatever a kill left, no checkpoint that looks complete may be wrong."""
    import orbax.checkpoint as ocp

    mngr = ocp.CheckpointManager(Path(ckpt_dir).absolute(), options=ocp.CheckpointManagerOptions(read_only=True))
    found: dict[int, str | None] = {}
    try:
        for step in steps(ckpt_dir):
            try:
                _restore_one(mngr, step, trainer, jax.random.key(0))
                found[step] = None
            except Exception as e:  # noqa: BLE001  as in restore_latest
                found[step] = _reason(e)
    finally:
        mngr.close()
    return found
