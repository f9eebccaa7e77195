"""Files that are either complete or absent: every output jtts writes (WAV, PNG, .npy, manifests, cache
records, mel caches, exported checkpoints) goes through `atomic_write`, so an interrupted or failed run never
leaves a truncated file under a name that looks finished."""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """Yield a file open on a hidden temporary sibling of `path` (".<name>.<random>.tmp"); when the block ends
    without an exception it is flushed, fsynced (a renamed file must not turn out empty after a crash) and
    renamed over `path`; on any exception it is removed."""
    path = Path(path).absolute()
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # os.open rather than tempfile: mode 0o666 lets the umask decide the final permissions
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
