"""Model cache: NVIDIA's NGC checkpoints are downloaded once, converted once, and loaded from disk afterwards.
The transfer itself (resume, retries, progress, size/sha256 records) is `jtts.download`'s; this module decides
what goes where in the cache, when a cached model is stale, and how a checkpoint becomes a model directory.

Cache layout (root: $JTTS_HOME, else $XDG_CACHE_HOME/jtts, else ~/.cache/jtts):

    downloads/<file>.pt        the checkpoint exactly as served (kept: a damaged model is rebuilt from it offline)
    downloads/<file>.pt.part   an interrupted download; the next attempt resumes it with an HTTP Range request
    downloads/<file>.pt.json   {"url", "size", "sha256"} recorded when the file first arrived complete
    downloads/<file>.zip.part  an interrupted download of the version's zip (see below)
    models/tacotron2/          converted model directories (`jtts.checkpoint` layout); their model.json
    models/waveglow/           records the sha256 of the download they were converted from

A model directory is used only if its model.json names the recorded download and the model loads; anything
else (a directory left by a killed run, a deleted parameter file, a stale conversion) is removed and rebuilt.

NGC serves each model version both as single files (`.../versions/<v>/files/<file>.pt`) and as one zip
(`.../versions/<v>/zip`, what DLE's newer scripts fetch). The file URL is tried first; when it is refused
(HTTP 401/403/404) or answers with something that is not a checkpoint (an HTML or JSON page), the zip is
downloaded, its .pt member extracted and verified, and the zip deleted; the record's "url" and "member" then
name the zip.

The base URL is NGC's unless `base_url=` or $JTTS_BASE_URL says otherwise; the files keep NGC's relative
paths below it, so a mirror (or a test server on 127.0.0.1) only has to copy the tree.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import urllib.parse
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from jtts.download import CHUNK, Downloader, Offline, Unavailable, forget, has_magic, read_record, settle
from jtts import models
from jtts.errors import HubError, ModelDirError

__all__ = ["Hub", "HubError", "Remote", "REMOTES", "KINDS", "NGC_BASE_URL", "cache_root",
           "enable_compilation_cache", "resolve_base_url"]

NGC_BASE_URL = "https://api.ngc.nvidia.com/v2/models/"
# torch.save's zip format, or the pickle protocol byte of the legacy format
CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80")
ZIP_MAGIC = (b"PK\x03\x04",)
# answers after which the version's zip is tried: the single file is missing or not public
FALLBACK_STATUSES = {401, 403, 404}


@dataclass(frozen=True)
class Remote:
    """One downloadable checkpoint: its path below the base URL, when known in advance its size/sha256, and the
    path of its version's zip (None: no fallback)."""
    kind: str
    path: str
    size: int | None = None
    sha256: str | None = None
    zip_path: str | None = None

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def zip_name(self) -> str:
        return Path(self.name).stem + ".zip"


def _ngc(kind: str, model: str, version: str, file: str) -> Remote:
    base = f"nvidia/{model}/versions/{version}"
    return Remote(kind, f"{base}/files/{file}", zip_path=f"{base}/zip")


# NGC's own files; their exact sizes and hashes were not available here, so the first complete download
# of each is what later runs are checked against.
REMOTES = {
    "tacotron2": _ngc("tacotron2", "tacotron2_pyt_ckpt_amp", "19.12.0", "nvidia_tacotron2pyt_fp16.pt"),
    "waveglow": _ngc("waveglow", "waveglow_ckpt_amp_256", "20.01.0", "nvidia_waveglow256pyt_fp16.pt"),
}
KINDS = tuple(REMOTES)  # the kinds the pipeline downloads by default


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


class Hub:
    """Downloads, verifies, converts and loads the default models. Every method is safe to call again
    after any failure: each step resumes from what the previous one left complete."""

    def __init__(self, cache: str | os.PathLike | None = None, base_url: str | None = None, *,
                 offline: bool = False, quiet: bool = False, retries: int = 4, backoff: float = 1.0,
                 timeout: float = 30.0, remotes: dict[str, Remote] | None = None):
        self.root = cache_root(cache)
        self.base_url = resolve_base_url(base_url)
        self.offline, self.quiet = offline, quiet
        self.remotes = dict(remotes or REMOTES)
        self.downloader = Downloader(quiet=quiet, retries=retries, backoff=backoff, timeout=timeout)
        self._held = False

    # -- paths ------------------------------------------------------------------------------------------

    def url(self, kind: str) -> str:
        return urllib.parse.urljoin(self.base_url, self.remotes[kind].path)

    def zip_url(self, kind: str) -> str | None:
        zip_path = self.remotes[kind].zip_path
        return urllib.parse.urljoin(self.base_url, zip_path) if zip_path else None

    def download_path(self, kind: str) -> Path:
        return self.root / "downloads" / self.remotes[kind].name

    def model_path(self, kind: str) -> Path:
        return self.root / "models" / kind

    # -- public -----------------------------------------------------------------------------------------

    def load(self, kind: str, dtype=None, *, inference: bool = False):
        """The cached model of `kind`, downloaded and converted first if need be (`inference`: see
        `jtts.models.load`)."""
        path = self.ensure(kind)
        try:
            return models.load(path, kind=kind, dtype=dtype, inference=inference)
        except ModelDirError as e:  # passed the cheap checks but a parameter file is damaged
            self._say(f"cached {kind} model is damaged ({e}); rebuilding it")
            with self._lock():
                shutil.rmtree(path, ignore_errors=True)
            return models.load(self.ensure(kind), kind=kind, dtype=dtype, inference=inference)

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

            rec = read_record(pt) or {}
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
        from jtts.checkpoint import PARAMS_DIR, read_meta

        path = self.model_path(kind)
        if not path.exists():
            return "missing"
        try:
            meta = read_meta(path, kind)
        except ModelDirError as e:
            return str(e)
        if not (path / PARAMS_DIR).is_dir():
            return f"no {PARAMS_DIR}/ directory"
        rec = read_record(self.download_path(kind))
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
        if self._held:
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
        if self.downloader.kept(dest, self.url(kind)):
            return dest
        if self.offline:
            raise HubError(self._offline_message(pending, "--offline given"))
        try:
            return self._fetch(kind)
        except Offline as e:
            raise HubError(self._offline_message(pending, str(e))) from None

    def _fetch(self, kind: str) -> Path:
        """Download the checkpoint's own URL, or, when that is refused or not a checkpoint, its version's zip."""
        remote, url, dest = self.remotes[kind], self.url(kind), self.download_path(kind)
        try:
            return self.downloader.fetch(url, dest, size=remote.size, sha256=remote.sha256, magic=CHECKPOINT_MAGIC)
        except Unavailable as e:
            zip_url = self.zip_url(kind)
            if zip_url is None or (e.status is not None and e.status not in FALLBACK_STATUSES):
                raise
            first = e
        archive = dest.with_name(remote.zip_name)
        try:
            self.downloader.fetch(zip_url, archive, magic=ZIP_MAGIC)
        except Unavailable as e:
            raise HubError(f"{first}; {e}; {self._manual_hint((kind,), 'either URL')}") from None
        try:
            return self._extract(kind, archive, zip_url, why=str(first))
        finally:
            forget(archive)  # extracted, or unusable: either way the zip is of no further use

    def _extract(self, kind: str, archive: Path, zip_url: str, why: str) -> Path:
        """Stream the checkpoint out of the downloaded zip into the cache, verified and recorded."""
        remote, dest = self.remotes[kind], self.download_path(kind)
        tmp = dest.with_name(f".{dest.name}.unzip.tmp")  # swept if a run is killed here
        try:
            with zipfile.ZipFile(archive) as z:
                member = _checkpoint_member(z, remote.name, zip_url)
                with z.open(member) as src, open(tmp, "wb") as out:
                    block = src.read(CHUNK)
                    if not has_magic(block, CHECKPOINT_MAGIC):
                        raise HubError(f"{zip_url}: {member} is not a torch checkpoint (starts {block[:16]!r})")
                    while block:
                        out.write(block)
                        block = src.read(CHUNK)
            settle(tmp, dest, zip_url, size=remote.size, sha256=remote.sha256, member=member)
            self._say(f"{why}; using {member} from the version's zip {zip_url} instead")
            return dest
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, zlib.error) as e:
            raise HubError(f"{zip_url}: unreadable zip ({type(e).__name__}: {e}); it was deleted") from None
        finally:
            tmp.unlink(missing_ok=True)

    def _manual_hint(self, kinds: tuple[str, ...], what: str) -> str:
        it = "them" if len(kinds) > 1 else "it"
        flags = " ".join(f"--{k} {self.remotes[k].name}" for k in kinds)
        return (f"fetch {what} yourself and pass {it} as `{flags}` (a .pt checkpoint or a directory written by "
                f"`jtts convert`), or put {it} in {self.root / 'downloads'}/")

    def _offline_message(self, kinds: tuple[str, ...], why: str) -> str:
        host = urllib.parse.urlsplit(self.base_url).netloc or self.base_url
        urls = " and ".join(self.url(k) for k in kinds)
        return f"cannot download the model{'s' if len(kinds) > 1 else ''} from {host} ({why}): " + \
            self._manual_hint(kinds, urls)

    def _say(self, message: str) -> None:
        self.downloader.say(message)


def _checkpoint_member(z: zipfile.ZipFile, name: str, zip_url: str) -> str:
    """The zip member holding the checkpoint: the one named like the single file, else the only .pt."""
    names = [i.filename for i in z.infolist() if not i.is_dir()]
    pts = [n for n in names if n.endswith(".pt")]
    exact = [n for n in pts if n.rsplit("/", 1)[-1] == name]
    if exact or len(pts) == 1:
        return (exact or pts)[0]
    held = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "") if names else "nothing"
    what = f"several .pt files and none named {name}" if pts else "no .pt checkpoint"
    raise HubError(f"{zip_url}: the zip holds {what} (it holds: {held})")
