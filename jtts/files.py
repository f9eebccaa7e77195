"""Files and directories that are either complete or absent.

Every output jtts writes (WAV, PNG, .npy, manifests, cache records, mel caches, exported checkpoints) goes
through `atomic_write`, and every model directory through `replace_dir`, so an interrupted or failed run never
leaves something under a name that looks finished. What a killed run does leave is a hidden temporary whose
name carries the writer's process id (".NAME.PID-RANDOM.tmp", ".NAME.partial-PID-RANDOM",
".NAME.old-PID-RANDOM"); `remove_stale` deletes those whose writer is gone.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import shutil
from pathlib import Path

_STALE = re.compile(r"^\.(?P<name>.+)\.(?:(?P<pid>\d+)-[0-9a-f]{12}\.tmp|(?:partial|old)-(?P<dpid>\d+)-\w+)$")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """Yield a file open on a hidden temporary sibling of `path`; when the block ends without an exception it
    is flushed, fsynced (a renamed file must not turn out empty after a crash) and renamed over `path`; on any
    exception it is removed, and an OSError that names no file (a full disk) is given `path`. Write through
    f.write: a C library writing through a callback may swallow the OSError (soundfile does)."""
    path = Path(path).absolute()
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(6)}.tmp")
    # os.open rather than tempfile: mode 0o666 lets the umask decide the final permissions
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.filename is None:  # a failed write() names no file; the one-line error should
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def temp_dir_name(path: Path, role: str = "partial") -> Path:
    """A hidden sibling of `path` for a directory being built (role "partial") or retired ("old")."""
    return path.with_name(f".{path.name}.{role}-{os.getpid()}-{secrets.token_hex(6)}")


def replace_dir(new: Path, path: Path) -> None:
    """Move the complete directory `new` to `path`, replacing what is there, so that at every instant `path`
    is either the old or the new directory: an atomic exchange (Linux renameat2) where the file system has
    one, else two renames with a window of microseconds in which `path` is absent."""
    if not os.path.lexists(path):
        os.rename(new, path)  # fails (ENOTEMPTY/EEXIST) rather than merge if another run created it meanwhile
        return
    if _exchange(new, path):
        _remove(new)  # now the old directory
        return
    old = temp_dir_name(path, "old")
    os.rename(path, old)
    os.rename(new, path)
    _remove(old)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths; False where the system or file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: not supported here
        return False
    raise OSError(err, os.strerror(err), str(b))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def stale_temporaries(folder: str | os.PathLike, names=None) -> list[Path]:
    """The temporaries in `folder` that a jtts writer left when it was killed (its process is gone). `names`:
    only those of these final names (a collection, or a predicate on the name). A writer on another machine
    sharing the folder looks gone: do not point two machines' runs at one output path."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    wanted = names if callable(names) or names is None else set(names).__contains__
    found = []
    for p in folder.iterdir():
        m = _STALE.match(p.name)
        if m and (wanted is None or wanted(m["name"])) and not _alive(int(m["pid"] or m["dpid"])):
            found.append(p)
    return sorted(found)


def remove_stale(folder: str | os.PathLike, names=None) -> list[Path]:
    """Delete `stale_temporaries(folder, names)`; -> what was deleted."""
    gone = stale_temporaries(folder, names)
    for p in gone:
        _remove(p)
    return gone


def probe_writable(folder: str | os.PathLike) -> None:
    """Create `folder` (and parents) and prove a file can be created in it; raises OSError otherwise."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".jtts-probe.{os.getpid()}-{secrets.token_hex(6)}.tmp"
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    probe.unlink()
    remove_stale(folder, {"jtts-probe"})  # probes of killed runs


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)
