"""Resumable, verified HTTP downloads of single files. Knows nothing of models: `jtts.hub` decides what to
fetch and where; this module gets one URL into one file, or says in one line why not.

Next to each finished file `dest` lies `dest.json`, {"url", "size", "sha256"[, ...]}, written when the file
first arrived complete; later downloads into `dest` must match it. An interrupted transfer leaves `dest.part`,
which the next attempt continues with an HTTP Range request.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import ipaddress
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from jtts.errors import HubError
from jtts.files import atomic_write

CHUNK = 1 << 20


class Offline(HubError):
    """The server could not be reached at all (DNS failure, connection refused, no route)."""


class Unavailable(HubError):
    """The server answered, but not with the file: an HTTP error `status`, or (status None) a body whose first
    bytes are not what the caller expects (an HTML or JSON page served with 200)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class _Dropped(Exception):
    """The transfer stopped part-way; what arrived is kept in the .part file."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def record_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".json")


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def read_record(dest: Path) -> dict | None:
    """The record written when `dest` first arrived complete, or None (absent or unreadable)."""
    try:
        rec = json.loads(record_path(dest).read_text())
        return rec if isinstance(rec, dict) and isinstance(rec.get("sha256"), str) else None
    except (OSError, json.JSONDecodeError):
        return None


def write_record(dest: Path, url: str, size: int, sha256: str, **extra) -> None:
    with atomic_write(record_path(dest), "w") as f:
        f.write(json.dumps({"url": url, "size": size, "sha256": sha256, **extra}, indent=2, sort_keys=True) + "\n")


def forget(dest: Path) -> None:
    """Remove `dest`, its record and any partial download of it."""
    for p in (dest, record_path(dest), part_path(dest)):
        p.unlink(missing_ok=True)


def _expected(dest: Path, size: int | None, sha256: str | None) -> tuple[int | None, str | None]:
    """What the file must be: the caller's size/sha256 where given, else what was recorded for `dest`."""
    rec = read_record(dest) or {}
    return (size if size is not None else rec.get("size")), (sha256 or rec.get("sha256"))


def settle(tmp: Path, dest: Path, url: str, *, size: int | None = None, sha256: str | None = None,
           **extra) -> Path:
    """Check the complete file `tmp` against the expected size and sha256, record it and rename it to `dest`.
    A file that fails is deleted (keeping it would only make the next attempt resume a wrong file)."""
    size, want = _expected(dest, size, sha256)
    got = tmp.stat().st_size
    if size is not None and got != size:
        tmp.unlink()
        raise HubError(f"{url}: received {got:,} bytes, expected {size:,}; the partial file was deleted")
    digest = sha256_file(tmp)
    if want and digest != want:
        tmp.unlink()
        raise HubError(f"{url}: sha256 {digest} differs from the expected {want} (the file on the server "
                       f"changed or arrived damaged); delete {record_path(dest)} to accept the new file")
    write_record(dest, url, got, digest, **extra)
    os.replace(tmp, dest)
    part_path(dest).unlink(missing_ok=True)  # a transfer of another URL for `dest` is no longer needed
    return dest


def has_magic(head: bytes, magic: tuple[bytes, ...] | None) -> bool:
    return magic is None or any(head.startswith(m) for m in magic)


def is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Downloader:
    """Fetches URLs into files: resumes with Range requests, retries dropped transfers with backoff, shows
    progress (a rich bar on a terminal, one line otherwise, nothing when quiet) and verifies size and sha256."""

    def __init__(self, *, quiet: bool = False, retries: int = 4, backoff: float = 1.0, timeout: float = 30.0):
        self.quiet, self.retries, self.backoff, self.timeout = quiet, retries, backoff, timeout

    def kept(self, dest: Path, url: str) -> bool:
        """Whether `dest` is present and matches its record (a file put there by hand is recorded as found).
        A file that does not match is deleted, so that it is fetched again."""
        if not dest.is_file():
            return False
        rec, digest = read_record(dest), sha256_file(dest)
        if rec is None:
            write_record(dest, url, dest.stat().st_size, digest)
            return True
        if dest.stat().st_size == rec.get("size") and digest == rec["sha256"]:
            return True
        self.say(f"{dest}: sha256 {digest[:12]} differs from the {rec['sha256'][:12]} recorded when it was "
                 f"downloaded; fetching it again")
        dest.unlink()
        return False

    def fetch(self, url: str, dest: Path, *, size: int | None = None, sha256: str | None = None,
              magic: tuple[bytes, ...] | None = None, **extra) -> Path:
        """Download `url` to `dest` (resuming `dest.part`), verify and record it (`extra` goes into the record).
        `magic`: the prefixes the file may start with; any other answer raises Unavailable, nothing kept."""
        part = part_path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        expected, _ = _expected(dest, size, sha256)
        failures = 0
        while True:
            try:
                self._transfer(url, part, expected, magic)
                break
            except _Dropped as e:
                failures += 1
                have = part.stat().st_size if part.exists() else 0
                if failures > self.retries:
                    raise HubError(f"{url}: download interrupted {failures} times (last: {e}); {have:,} bytes "
                                   f"kept in {part}, run again to resume") from None
                self.say(f"{url}: {e}; resuming at byte {have:,}")
                time.sleep(self.backoff * min(2 ** (failures - 1), 8))
        return settle(part, dest, url, size=size, sha256=sha256, **extra)

    def _open(self, req: urllib.request.Request):
        # Loopback servers (tests, local mirrors) are reached directly even when a proxy is configured.
        handlers = [urllib.request.ProxyHandler({})] if is_loopback(req.full_url) else []
        return urllib.request.build_opener(*handlers).open(req, timeout=self.timeout)

    def _request(self, url: str, part: Path, offset: int):
        """The server's answer to a GET of `url` from byte `offset`; the errors are sorted into what retrying
        can fix (_Dropped), what it cannot (Unavailable) and no server at all (Offline)."""
        headers = {"User-Agent": "jtts", "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            return self._open(urllib.request.Request(url, headers=headers))
        except urllib.error.HTTPError as e:
            if e.code == 416 and offset:  # our partial file does not fit the server's file: start over
                part.unlink()
                raise _Dropped("the server refused to resume (HTTP 416)") from None
            raise Unavailable(f"{url}: HTTP {e.code} {e.reason}", e.code) from None
        except urllib.error.URLError as e:
            reason = e.reason
            raise Offline(reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)) from None
        except (TimeoutError, socket.timeout, ConnectionError) as e:
            raise Offline(f"{type(e).__name__}: {e}") from None

    def _transfer(self, url: str, part: Path, expected: int | None, magic: tuple[bytes, ...] | None) -> None:
        """Append the rest of `url` to `part`. Raises _Dropped when the stream stops early, Offline when the
        server cannot be reached, HubError for answers that retrying cannot fix."""
        offset = part.stat().st_size if part.exists() else 0
        if expected is not None and offset >= expected:
            if offset == expected:
                return
            part.unlink()
            offset = 0
        with self._request(url, part, offset) as resp:
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
            block = _read(resp)
            if mode == "wb" and not has_magic(block, magic):
                part.unlink(missing_ok=True)
                kind = resp.headers.get("Content-Type")
                raise Unavailable(f"{url}: answered {block[:16]!r}{f' ({kind})' if kind else ''}, not the file")
            if total is not None and expected is not None and total != expected:
                part.unlink(missing_ok=True)
                raise HubError(f"{url}: the server offers {total:,} bytes, expected {expected:,}; nothing was kept")
            with open(part, mode) as f, self._progress(part.name.removesuffix(".part"), total, offset) as advance:
                while block:
                    f.write(block)
                    advance(len(block))
                    block = _read(resp)
        got = part.stat().st_size
        if total is not None and got < total:
            raise _Dropped(f"connection closed at byte {got:,} of {total:,}")
        if total is not None and got > total:
            part.unlink()
            raise HubError(f"{url}: received {got:,} bytes, more than the {total:,} announced; nothing was kept")

    @contextlib.contextmanager
    def _progress(self, name: str, total: int | None, done: int):
        if self.quiet or not sys.stderr.isatty():
            size = f" ({total / 1e6:,.1f} MB)" if total else ""
            self.say(f"downloading {name}{size}" + (f", resuming at {done:,} bytes" if done else ""))
            yield lambda n: None
            return
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      TimeRemainingColumn(), console=Console(stderr=True), transient=False) as bar:
            task = bar.add_task(name, total=total, completed=done)
            yield lambda n: bar.advance(task, n)

    def say(self, message: str) -> None:
        if not self.quiet:
            print(f"jtts: {message}", file=sys.stderr, flush=True)


def _read(resp) -> bytes:
    try:
        return resp.read(CHUNK)
    except (http.client.IncompleteRead, ConnectionError, TimeoutError, OSError) as e:
        raise _Dropped(f"connection lost ({type(e).__name__})") from None


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
