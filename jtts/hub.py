"""Model cache: NVIDIA's NGC checkpoints are downloaded once, converted once, and loaded from disk afterwards.

Cache layout (root: $JTTS_HOME, else $XDG_CACHE_HOME/jtts, else ~/.cache/jtts):

    downloads/<file>.pt        the checkpoint exactly as served (kept: a damaged model is rebuilt from it offline)
    downloads/<file>.pt.part   an interrupted download; the next attempt resumes it with an HTTP Range request
    downloads/<file>.pt.json   {"url", "size", "sha256"} recorded when the file first arrived complete
    models/tacotron2/          converted model directories (`jtts.checkpoint` layout); their model.json
    models/waveglow/           records the sha256 of the download they were converted from

A model directory is used only if its model.json names the recorded download and the model loads; anything
else (a directory left by a killed run, a deleted parameter file, a stale conversion) is removed and rebuilt.

The base URL is NGC's unless `base_url=` or $JTTS_BASE_URL says otherwise; the files keep NGC's relative
paths below it, so a mirror (or a test server on 127.0.0.1) only has to copy the tree.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import ipaddress
import json
import os
import shutil
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from jtts.files import atomic_write

NGC_BASE_URL = "https://api.ngc.nvidia.com/v2/models/"
KINDS = ("tacotron2", "waveglow")
CHUNK = 1 << 20


@dataclass(frozen=True)
class Remote:
    """One downloadable checkpoint: its path below the base URL and, when known in advance, its size/sha256."""
    kind: str
    path: str
    size: int | None = None
    sha256: str | None = None

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


# NGC's own files; their exact sizes and hashes were not available here, so the first complete download
# of each is what later runs are checked against.
REMOTES = {
    "tacotron2": Remote("tacotron2", "nvidia/tacotron2_pyt_ckpt_amp/versions/19.12.0/files/nvidia_tacotron2pyt_fp16.pt"),
    "waveglow": Remote("waveglow", "nvidia/waveglow_ckpt_amp_256/versions/20.01.0/files/nvidia_waveglow256pyt_fp16.pt"),
}


class HubError(ValueError):
    """A download or cache problem, described in one line."""


class _Offline(Exception):
    """The server could not be reached at all (DNS failure, connection refused, no route)."""


class _Dropped(Exception):
    """The transfer stopped part-way; what arrived is kept in the .part file."""


def cache_root(override: str | os.PathLike | None = None) -> Path:
    if override:
        return Path(override).expanduser()
    if os.environ.get("JTTS_HOME"):
        return Path(os.environ["JTTS_HOME"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "jtts"


def enable_compilation_cache(root: str | os.PathLike | None = None) -> Path | None:
    """Keep XLA's compiled programs in <cache>/xla so a new process skips compilation for shapes it has seen
    (Tacotron 2 ~2 s and WaveGlow ~2-6 s per bucket on a 2-core CPU). JTTS_XLA_CACHE=0 turns it off."""
    if os.environ.get("JTTS_XLA_CACHE", "1") == "0":
        return None
    import jax

    path = cache_root(root) / "xla"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home: compile every time rather than fail
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path


def resolve_base_url(override: str | None = None) -> str:
    url = override or os.environ.get("JTTS_BASE_URL") or NGC_BASE_URL
    return url if url.endswith("/") else url + "/"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _write_json_atomic(path: Path, data: dict) -> None:
    with atomic_write(path, "w") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Hub:
    """Downloads, verifies, converts and loads the default models. Every method is safe to call again
    after any failure: each step resumes from what the previous one left complete."""

    def __init__(self, cache: str | os.PathLike | None = None, base_url: str | None = None, *,
                 offline: bool = False, quiet: bool = False, retries: int = 4, backoff: float = 1.0,
                 timeout: float = 30.0, remotes: dict[str, Remote] | None = None):
        self.root = cache_root(cache)
        self.base_url = resolve_base_url(base_url)
        self.offline, self.quiet = offline, quiet
        self.retries, self.backoff, self.timeout = retries, backoff, timeout
        self.remotes = dict(remotes or REMOTES)

    # -- paths ------------------------------------------------------------------------------------------

    def url(self, kind: str) -> str:
        return urllib.parse.urljoin(self.base_url, self.remotes[kind].path)

    def download_path(self, kind: str) -> Path:
        return self.root / "downloads" / self.remotes[kind].name

    def _record_path(self, kind: str) -> Path:
        p = self.download_path(kind)
        return p.with_name(p.name + ".json")

    def model_path(self, kind: str) -> Path:
        return self.root / "models" / kind

    def _record(self, kind: str) -> dict | None:
        try:
            rec = json.loads(self._record_path(kind).read_text())
            return rec if isinstance(rec, dict) and isinstance(rec.get("sha256"), str) else None
        except (OSError, json.JSONDecodeError):
            return None

    # -- public -----------------------------------------------------------------------------------------

    def load(self, kind: str, dtype=None):
        """The cached model of `kind`, downloaded and converted first if need be."""
        from jtts.checkpoint import ModelDirError

        if kind == "tacotron2":
            from jtts.tacotron2 import Tacotron2 as cls
        else:
            from jtts.waveglow import WaveGlow as cls
        kwargs = {} if dtype is None else {"dtype": dtype}
        path = self.ensure(kind)
        try:
            return cls.from_checkpoint(path, **kwargs)
        except ModelDirError as e:  # passed the cheap checks but a parameter file is damaged
            self._say(f"cached {kind} model is damaged ({e}); rebuilding it")
            with self._lock():
                shutil.rmtree(path, ignore_errors=True)
            return cls.from_checkpoint(self.ensure(kind), **kwargs)

    def ensure(self, kind: str, *, _pending: tuple[str, ...] = ()) -> Path:
        """Path of a usable converted model of `kind` in the cache (downloading/converting as needed)."""
        if kind not in self.remotes:
            raise HubError(f"unknown model kind {kind!r} (expected one of {', '.join(KINDS)})")
        with self._lock():
            self._sweep()
            path = self.model_path(kind)
            reason = self._stale(kind)
            if reason is None:
                return path
            if path.exists():
                self._say(f"cached {kind} model at {path} is unusable ({reason}); rebuilding it")
                shutil.rmtree(path, ignore_errors=True)
            pt = self._downloaded(kind, _pending or (kind,))
            from jtts.convert import convert

            rec = self._record(kind) or {}
            self._say(f"converting {pt.name} -> {path}")
            return convert(pt, path, kind=kind, source={"url": rec.get("url"), "sha256": rec.get("sha256")})

    def download(self, kind: str) -> Path:
        """The verified checkpoint file of `kind` in the cache, downloaded (or its download resumed) if need be."""
        with self._lock():
            return self._downloaded(kind, (kind,))

    def ensure_all(self, kinds=KINDS) -> dict[str, Path]:
        """Like `ensure` for several kinds; an unreachable server is reported once, naming every missing file."""
        kinds = tuple(kinds)
        with self._lock():
            pending = tuple(k for k in kinds if self._stale(k) is not None and not self.download_path(k).is_file())
        return {k: self.ensure(k, _pending=pending or (k,)) for k in kinds}

    # -- cache validity -----------------------------------------------------------------------------------

    def _stale(self, kind: str) -> str | None:
        """Why the cached model directory cannot be used, or None if it looks complete and current."""
        from jtts.checkpoint import PARAMS_DIR, ModelDirError, read_meta

        path = self.model_path(kind)
        if not path.exists():
            return "missing"
        try:
            meta = read_meta(path, kind)
        except ModelDirError as e:
            return str(e)
        if not (path / PARAMS_DIR).is_dir():
            return f"no {PARAMS_DIR}/ directory"
        rec = self._record(kind)
        made_from = meta.get("source", {}).get("sha256")
        if rec is not None and made_from != rec["sha256"]:
            return "converted from another download"
        return None

    def _sweep(self) -> None:
        """Remove temporaries that killed runs leave behind (only ever under the lock)."""
        for folder in (self.root / "models", self.root / "downloads"):
            if not folder.is_dir():
                continue
            for p in folder.iterdir():
                if p.name.startswith(".") and (".partial-" in p.name or ".old-" in p.name or p.name.endswith(".tmp")):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _lock(self):
        """Serialise cache updates between processes (two runs must not append to one .part file)."""
        if getattr(self, "_held", False):
            yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no locking
            fcntl = None
        with open(self.root / ".lock", "a") as f:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_EX)
            self._held = True
            try:
                yield
            finally:
                self._held = False
                if fcntl is not None:
                    fcntl.flock(f, fcntl.LOCK_UN)

    # -- downloading ----------------------------------------------------------------------------------------

    def _downloaded(self, kind: str, pending: tuple[str, ...]) -> Path:
        """The verified checkpoint file for `kind`, fetched (or its fetch resumed) if absent or damaged."""
        dest = self.download_path(kind)
        rec = self._record(kind)
        if dest.is_file():
            digest = sha256_file(dest)
            if rec is None:
                self._record_download(kind, dest, digest)
                return dest
            if dest.stat().st_size == rec.get("size") and digest == rec["sha256"]:
                return dest
            self._say(f"{dest}: sha256 {digest[:12]} differs from the {rec['sha256'][:12]} recorded when it was "
                      f"downloaded; fetching it again")
            dest.unlink()
        if self.offline:
            raise HubError(self._offline_message(pending, "--offline given"))
        try:
            return self._fetch(kind)
        except _Offline as e:
            raise HubError(self._offline_message(pending, str(e))) from None

    def _offline_message(self, kinds: tuple[str, ...], why: str) -> str:
        host = urllib.parse.urlsplit(self.base_url).netloc or self.base_url
        urls = " and ".join(self.url(k) for k in kinds)
        flags = " ".join(f"--{k} {self.remotes[k].name}" for k in kinds)
        return (f"cannot download the model{'s' if len(kinds) > 1 else ''} from {host} ({why}): fetch {urls} "
                f"yourself and pass {'them' if len(kinds) > 1 else 'it'} as `{flags}` (a .pt checkpoint or a "
                f"directory written by `jtts convert`), or put {'them' if len(kinds) > 1 else 'it'} in "
                f"{self.root / 'downloads'}/")

    def _record_download(self, kind: str, path: Path, digest: str) -> None:
        _write_json_atomic(self._record_path(kind), {"url": self.url(kind), "size": path.stat().st_size,
                                                     "sha256": digest})

    def _fetch(self, kind: str) -> Path:
        url, dest = self.url(kind), self.download_path(kind)
        part = dest.with_name(dest.name + ".part")
        dest.parent.mkdir(parents=True, exist_ok=True)
        remote, rec = self.remotes[kind], self._record(kind)
        expected = remote.size if remote.size is not None else (rec or {}).get("size")
        failures = 0
        while True:
            try:
                self._transfer(url, part, expected)
                break
            except _Dropped as e:
                failures += 1
                have = part.stat().st_size if part.exists() else 0
                if failures > self.retries:
                    raise HubError(f"{url}: download interrupted {failures} times (last: {e}); {have:,} bytes "
                                   f"kept in {part}, run again to resume") from None
                self._say(f"{url}: {e}; resuming at byte {have:,}")
                time.sleep(self.backoff * min(2 ** (failures - 1), 8))
        size = part.stat().st_size
        if expected is not None and size != expected:
            part.unlink()
            raise HubError(f"{url}: received {size:,} bytes, expected {expected:,}; the partial file was deleted")
        digest = sha256_file(part)
        want = remote.sha256 or (rec or {}).get("sha256")
        if want and digest != want:
            part.unlink()
            raise HubError(f"{url}: sha256 {digest} differs from the expected {want} (the file on the server "
                           f"changed or arrived damaged); delete {self._record_path(kind)} to accept the new file")
        _write_json_atomic(self._record_path(kind), {"url": url, "size": size, "sha256": digest})
        os.replace(part, dest)
        return dest

    def _open(self, req: urllib.request.Request):
        # Loopback servers (tests, local mirrors) are reached directly even when a proxy is configured.
        handlers = [urllib.request.ProxyHandler({})] if _is_loopback(req.full_url) else []
        return urllib.request.build_opener(*handlers).open(req, timeout=self.timeout)

    def _transfer(self, url: str, part: Path, expected: int | None) -> None:
        """Append the rest of `url` to `part`. Raises _Dropped when the stream stops early, _Offline when the
        server cannot be reached, HubError for answers that retrying cannot fix."""
        offset = part.stat().st_size if part.exists() else 0
        if expected is not None and offset >= expected:
            if offset == expected:
                return
            part.unlink()
            offset = 0
        headers = {"User-Agent": "jtts", "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            resp = self._open(urllib.request.Request(url, headers=headers))
        except urllib.error.HTTPError as e:
            if e.code == 416 and offset:  # our partial file does not fit the server's file: start over
                part.unlink()
                raise _Dropped("the server refused to resume (HTTP 416)") from None
            raise HubError(f"{url}: HTTP {e.code} {e.reason}") from None
        except urllib.error.URLError as e:
            reason = e.reason
            raise _Offline(reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)) from None
        except (TimeoutError, socket.timeout, ConnectionError) as e:
            raise _Offline(f"{type(e).__name__}: {e}") from None
        with resp:
            if offset and resp.status == 206:
                start, total = _content_range(resp.headers.get("Content-Range"))
                if start != offset:
                    part.unlink()
                    raise _Dropped(f"the server resumed at byte {start}, not {offset}")
                mode = "ab"
            else:  # 200: the whole file (a server that ignores Range sends it from the start)
                offset, mode = 0, "wb"
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
            if total is not None and expected is not None and total != expected:
                part.unlink(missing_ok=True)
                raise HubError(f"{url}: the server offers {total:,} bytes, expected {expected:,}; nothing was kept")
            with open(part, mode) as f, self._progress(part.name, total, offset) as advance:
                while True:
                    try:
                        block = resp.read(CHUNK)
                    except (http.client.IncompleteRead, ConnectionError, TimeoutError, OSError) as e:
                        raise _Dropped(f"connection lost ({type(e).__name__})") from None
                    if not block:
                        break
                    f.write(block)
                    advance(len(block))
        got = part.stat().st_size
        if total is not None and got < total:
            raise _Dropped(f"connection closed at byte {got:,} of {total:,}")
        if total is not None and got > total:
            part.unlink()
            raise HubError(f"{url}: received {got:,} bytes, more than the {total:,} announced; nothing was kept")

    @contextlib.contextmanager
    def _progress(self, name: str, total: int | None, done: int):
        if self.quiet or not sys.stderr.isatty():
            if not self.quiet:
                size = f" ({total / 1e6:,.1f} MB)" if total else ""
                print(f"jtts: downloading {name}{size}" + (f", resuming at {done:,} bytes" if done else ""),
                      file=sys.stderr, flush=True)
            yield lambda n: None
            return
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      TimeRemainingColumn(), console=Console(stderr=True), transient=False) as bar:
            task = bar.add_task(name, total=total, completed=done)
            yield lambda n: bar.advance(task, n)

    def _say(self, message: str) -> None:
        if not self.quiet:
            print(f"jtts: {message}", file=sys.stderr, flush=True)


def _content_range(value: str | None) -> tuple[int, int | None]:
    """'bytes 100-199/1000' -> (100, 1000); the total may be '*' (unknown)."""
    try:
        unit, _, rest = (value or "").partition(" ")
        span, _, total = rest.partition("/")
        if unit != "bytes":
            raise ValueError
        return int(span.split("-")[0]), (None if total == "*" else int(total))
    except ValueError:
        raise _Dropped(f"unreadable Content-Range {value!r}") from None
