"""On-disk layout of a converted jtts model, shared by the models (loading) and `jtts.convert` (writing).

A model directory holds
  model.json  -- {"format": 1, "kind": a kind of jtts.models.REGISTRY, "config": {...}, "source": {...}, "extras": {...},
                  "files": {"<file under params/>": [size, crc32], ...}}
  params/     -- an Orbax checkpoint of a flat {"a.b.c": array} dict in jtts' own parameter names, float32
                 (or float16/bfloat16 when converted with --dtype; loading upcasts to float32)

model.json is written last, inside a temporary sibling directory that then replaces `path` atomically
(`jtts.files.replace_dir`), so a directory that has a model.json is complete: a killed conversion leaves no
directory that looks like a model, and a killed replacement leaves the old model. model.json also records the
size and CRC-32 of every file under params/ ("files"), checked before loading, so a truncated or corrupted
parameter file is reported in one line instead of loading wrong weights or failing inside Orbax.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from jtts.errors import ModelDirError
from jtts.files import atomic_write, remove_stale, replace_dir, temp_dir_name

FORMAT_VERSION = 1
# The one separator of flat parameter names ("decoder.attention.query.kernel"), everywhere: convert tables,
# model directories, training state. Not "/": Orbax would read it as nesting.
SEP = "."
MODEL_FILE = "model.json"
PARAMS_DIR = "params"


def _checkpointer():
    import jax
    import orbax.checkpoint as ocp  # deferred: orbax import costs ~1 s

    if jax.process_count() == 1:
        return ocp.PyTreeCheckpointer()
    # One process reads or writes a model directory on its own (`jtts train`'s process 0 exports the model):
    # Orbax's default would wait at barriers for every process of the jax.distributed run, forever.
    solo = ocp.options.MultiprocessingOptions(primary_host=jax.process_index(), active_processes={jax.process_index()})
    return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(multiprocessing_options=solo), multiprocessing_options=solo)


@contextlib.contextmanager
def quiet_orbax():
    """Orbax reports one failed read or write three times: the exception (which the CLI prints as one line),
    ERROR logs with tracebacks from its worker threads, and a "RuntimeError: Event loop is closed" traceback
    per tensorstore callback that completes after Orbax closed its event loop (up to hundreds of lines). Keep
    the exception only: absl's logger is silenced for the call, and those callbacks' errors, which reach
    sys.unraisablehook even after the call has returned, are dropped for good."""
    global _previous_unraisablehook
    if _previous_unraisablehook is None:
        _previous_unraisablehook = sys.unraisablehook
        sys.unraisablehook = _drop_closed_loop
    log = logging.getLogger("absl")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


_previous_unraisablehook = None


def _drop_closed_loop(unraisable) -> None:
    if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
        _previous_unraisablehook(unraisable)


def save_model(path: str | os.PathLike, kind: str, config: Mapping[str, Any],
               params: Mapping[str, np.ndarray], *, source: Mapping[str, Any] | None = None,
               extras: Mapping[str, Any] | None = None) -> Path:
    """Atomically write a model directory, replacing an existing one only once the new one is complete (the
    caller decides whether replacing is wanted: `jtts convert` asks for --overwrite)."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, {path.name})  # what killed saves of this path left behind
    tmp = temp_dir_name(path)
    tmp.mkdir()
    try:
        tree = {k: np.asarray(v) for k, v in params.items()}
        try:
            with quiet_orbax():
                _checkpointer().save(tmp / PARAMS_DIR, tree)
        except Exception as e:  # tensorstore reports a full disk or a write error as ValueError and the like
            if isinstance(e, OSError):
                raise
            raise ModelDirError(f"{path}: cannot write the parameters ({_orbax_error(e)})") from None
        meta = {"format": FORMAT_VERSION, "kind": kind, "config": dict(config),
                "source": dict(source or {}), "extras": dict(extras or {}), "files": _file_sums(tmp / PARAMS_DIR)}
        with atomic_write(tmp / MODEL_FILE, "w") as f:  # last: its presence says the directory is complete
            f.write(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        replace_dir(tmp, path)
    except BaseException:
        _discard(tmp)
        raise
    return path


def _discard(tmp: Path, settle: float = 0.1, limit: float = 3.0) -> None:
    """Remove a failed save's directory. When a write fails (a full disk), Orbax raises while tensorstore still
    has writes in flight, and those recreate subdirectories of `tmp` for a moment: remove until it has stayed
    gone for `settle` seconds (at most `limit`). Anything left later is removed by the next save of the path."""
    deadline = time.monotonic() + limit
    while True:
        shutil.rmtree(tmp, ignore_errors=True)
        time.sleep(settle)
        if not tmp.exists() or time.monotonic() > deadline:
            return


def _orbax_error(e: Exception) -> str:
    """tensorstore's I/O errors embed the errno in a long message; the errno's text is what a user needs."""
    code = re.search(r"os_error_code='(\d+)'", str(e))
    return os.strerror(int(code[1])) if code else f"{type(e).__name__}: {e}"


def _file_sums(folder: Path) -> dict[str, list[int]]:
    """{relative path: [size, crc32]} of every file under `folder`. Orbax stores no checksums: a flipped
    byte inside a compressed chunk can decode to wrong weights without any error."""
    sums = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            sums[p.relative_to(folder).as_posix()] = [p.stat().st_size, _crc32(p)]
    return sums


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def verify_files(path: str | os.PathLike, meta: Mapping[str, Any]) -> None:
    """Check params/ against the sizes and checksums model.json records (directories written before jtts
    recorded them pass unchecked). Sizes first, so that a truncated or missing file is named before anything
    is read; then checksums (about 0.3 s for WaveGlow-256's 351 MB)."""
    if "files" not in meta:
        return
    try:
        files = [(str(rel), int(size), int(crc)) for rel, (size, crc) in meta["files"].items()]
    except (AttributeError, TypeError, ValueError):
        raise ModelDirError(f"{Path(path) / MODEL_FILE}: malformed \"files\" record") from None
    params = Path(path) / PARAMS_DIR
    for rel, size, _ in files:
        f = params / rel
        if not f.is_file():
            raise ModelDirError(f"{f}: missing; the model directory is damaged (convert or train it again)")
        if f.stat().st_size != size:
            raise ModelDirError(f"{f}: {f.stat().st_size:,} bytes, model.json records {size:,}; the model "
                                f"directory is damaged (truncated?)")
    for rel, _, crc in files:
        if _crc32(params / rel) != crc:
            raise ModelDirError(f"{params / rel}: checksum differs from model.json's; the model directory is "
                                f"damaged (corrupted)")


def read_meta(path: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
    path = Path(path)
    meta_file = path / MODEL_FILE
    if not path.is_dir():
        raise ModelDirError(f"{path}: not a jtts model directory (run `jtts convert` first)")
    if not meta_file.is_file():
        raise ModelDirError(f"{path}: no {MODEL_FILE}; the directory is incomplete or not a jtts model")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelDirError(f"{meta_file}: corrupt ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError as e:
        raise ModelDirError(f"{meta_file}: corrupt (not UTF-8 text at byte {e.start})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise ModelDirError(f"{meta_file}: corrupt (not a jtts model description)")
    if meta.get("format") != FORMAT_VERSION:
        raise ModelDirError(f"{meta_file}: unsupported format {meta.get('format')!r}")
    if kind is not None and meta.get("kind") != kind:
        raise ModelDirError(f"{path}: holds a {meta.get('kind')} model, not {kind}")
    return meta


class ParamReader:
    """A model directory's parameters, read a group of arrays at a time.

    `shapes` comes from Orbax's metadata (nothing is read); `read(names)` restores only those arrays (Orbax's
    partial restore) as float32 numpy arrays. Why groups: a whole-tree restore of WaveGlow-256 raises resident
    memory by about 2.7 times the 335 MB it returns (tensorstore's buffers, and what its threads free stays in
    glibc's per-thread arenas); group by group, with the freed memory handed back after each, the rise is about
    what is returned. Orbax versions without partial restore read the whole tree once and hand out parts of it.
    """

    def __init__(self, path: Path):
        self.shown = Path(path) / PARAMS_DIR  # as the user named it, for messages
        self.path = Path(path).absolute() / PARAMS_DIR
        self._ckpt = _checkpointer()
        with self._errors():
            meta = self._ckpt.metadata(self.path)
        tree = getattr(meta, "item_metadata", meta)
        tree = getattr(tree, "tree", tree)
        self._meta = dict(tree)
        self.shapes = {k: tuple(m.shape) for k, m in self._meta.items()}
        self._whole: dict[str, Any] | None = None

    @contextlib.contextmanager
    def _errors(self):
        try:
            with quiet_orbax():
                yield
        except Exception as e:  # orbax raises a variety of types for missing/corrupt files
            raise ModelDirError(f"{self.shown}: cannot read parameters ({type(e).__name__}: {e})") from None

    def read(self, names) -> dict[str, np.ndarray]:
        names = list(names)
        if self._whole is None:
            import orbax.checkpoint as ocp

            item = {n: self._meta[n] for n in names}
            restore_args = {n: ocp.RestoreArgs(restore_type=np.ndarray) for n in names}
            try:
                args = ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)
            except TypeError:  # an Orbax without partial restore
                with self._errors():
                    self._whole = dict(self._ckpt.restore(self.path))
            else:
                with self._errors():
                    tree = self._ckpt.restore(self.path, args=args)
                release_freed_memory()
                return {n: _as_float32(tree[n]) for n in names}
        return {n: _as_float32(self._whole[n]) for n in names}

    def read_all(self, group_bytes: int = 64 << 20) -> dict[str, np.ndarray]:
        """Every array, restored in groups of about `group_bytes`."""
        out: dict[str, np.ndarray] = {}
        group, size = [], 0
        for name, m in self._meta.items():
            group.append(name)
            size += int(np.prod(m.shape)) * np.dtype(m.dtype).itemsize
            if size >= group_bytes:
                out.update(self.read(group))
                group, size = [], 0
        if group:
            out.update(self.read(group))
        return out


def release_freed_memory() -> None:
    """Hand memory that threads freed back to the OS (glibc's malloc_trim; nothing elsewhere). Without it the
    process keeps counting hundreds of MB that Orbax's reader threads freed as its resident memory."""
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):
        pass


def open_model(path: str | os.PathLike, kind: str | None = None) -> tuple[dict[str, Any], ParamReader]:
    """(meta, ParamReader) of a model directory written by `save_model`, its files checked."""
    meta = read_meta(path, kind)
    verify_files(path, meta)
    return meta, ParamReader(Path(path))


def load_model(path: str | os.PathLike, kind: str | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Returns (meta, flat params) of a model directory written by `save_model`."""
    meta, reader = open_model(path, kind)
    # Weights may be stored in float16/bfloat16 (`jtts convert --dtype`); models always get float32 parameters.
    return meta, reader.read_all()


def _as_float32(value) -> np.ndarray:
    value = np.asarray(value)
    return value.astype(np.float32) if value.dtype.kind == "f" or value.dtype.name == "bfloat16" else value


def flat_state(module, variable_type=None) -> dict[str, Any]:
    """{"a.b.0.c": Variable} for an NNX module: the names `jtts.convert` tables, model directories and
    training state use."""
    from flax import nnx

    state = nnx.state(module, variable_type) if variable_type is not None else nnx.state(module)
    return {SEP.join(str(p) for p in path): var for path, var in nnx.to_flat_state(state)}


def check_params(module, shapes: Mapping[str, tuple]) -> dict[str, Any]:
    """`module`'s flat variables, after checking that `shapes` ({name: shape}) has exactly their names and
    shapes."""
    variables = flat_state(module)
    missing = sorted(set(variables) - set(shapes))
    unexpected = sorted(set(shapes) - set(variables))
    if missing or unexpected:
        raise ModelDirError(f"parameter names disagree: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, var in variables.items():
        if tuple(shapes[name]) != tuple(var.shape):
            raise ModelDirError(f"parameter {name}: shape {tuple(shapes[name])}, model expects {tuple(var.shape)}")
    return variables


def assign(module, params: Mapping[str, np.ndarray]) -> None:
    """Copies flat float32 params into `module`, checking that names and shapes agree exactly."""
    import jax.numpy as jnp

    for name, var in check_params(module, {k: v.shape for k, v in params.items()}).items():
        var.set_value(jnp.asarray(params[name], dtype=var.dtype))
