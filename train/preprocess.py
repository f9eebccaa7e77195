"""`jtts preprocess`: every training mel computed once into a cache (DLE's --load-mel-from-disk).

Cache layout: OUT/mels/NAME.npy, one (n_mels, frames) float32 log-mel per utterance, and OUT/manifest.json
(format, the audio front end's settings, and per utterance: mel file, source audio, text, token ids, samples at
the front end's rate,
the FILE:LINE it came from). Mel paths are relative to the cache, and so are audio paths (which only WaveGlow
batches read): a cache moved together with its dataset keeps working, and one moved without it still trains
Tacotron 2 (WaveGlow then names the audio files it cannot find).

A cache is complete exactly when its manifest exists. Each mel is written under a temporary name and
renamed; an old manifest is deleted before anything is overwritten and the new one is renamed into place
last, so a killed run never leaves a directory that `load_cache` takes for complete.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from jtts.errors import UsageError
from jtts.files import atomic_write
from jtts.train.rundir import check_creatable, first_missing
from jtts.train.datasets import (CACHE_FORMAT, CACHE_VERSION, DEFAULT_CLEANERS, MANIFEST, DataError,
                                 Dataset, Report, _stderr, audio_in_cache, load_cache, load_dataset,
                                 mels_from_prepadded, padded_samples, prepad, read_audio)

__all__ = ["preprocess", "run_preprocess"]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # not every platform opens directories
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _bounded_map(pool, fn, items, window: int):
    """pool.map without submitting everything at once (which would hold a whole corpus of audio)."""
    pending = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _names(dataset: Dataset) -> list[str]:
    names, seen = [], set()
    for i, u in enumerate(dataset):
        name = Path(u.audio).stem
        if name in seen:  # same file name in two folders of a filelist
            name = f"{name}-{i}"
        seen.add(name)
        names.append(name)
    return names


def preprocess(data, out_dir, *, root=None, on_error: str = "skip", max_seconds: float | None = None,
               cleaners=DEFAULT_CLEANERS, batch_size: int = 8, frame_step: int = 64, read_threads: int = 2,
               report: Report | None = None, progress: Callable[[int, int], None] | None = None,
               audio=None) -> Dataset:
    """Mels of every usable utterance of `data` (LJSpeech directory, filelist or Dataset) into `out_dir`;
    returns the cache as a Dataset. Bad entries, including audio whose body turns out unreadable, are
    reported and skipped or fatal per `on_error`. audio: the front end (`jtts.frontend.AudioConfig`, the
    model's; default DLE's).

    Mels are computed `batch_size` at a time with clips zero-padded to a multiple of `frame_step` frames,
    so `jtts.audio.mel_spectrogram` compiles once per multiple, not once per clip length; the values are
    those of each clip on its own (see `jtts.train.datasets.prepad`).

    The output is checked before the data set is read (a file, not writable, or a non-empty directory that
    is not a mel cache: UsageError); a directory this call created is removed again if it fails."""
    out = Path(out_dir)
    _check_output(out)
    created = first_missing(out)
    try:
        return _write_cache(data, out, root=root, on_error=on_error, max_seconds=max_seconds, cleaners=cleaners,
                            batch_size=batch_size, frame_step=frame_step, read_threads=read_threads,
                            report=_stderr if report is None else report, progress=progress, audio=audio)
    except Exception:
        # Not on KeyboardInterrupt: like a kill, it leaves a cache without a manifest, which nothing takes
        # for complete, and the next run writes over it.
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise


def _check_output(out: Path) -> None:
    if not out.exists():
        check_creatable(out)
        return
    if not out.is_dir():
        raise UsageError(f"{out} is a file, not a cache directory")
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f"{out} is not writable")
    shown = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    if shown and not ((out / MANIFEST).is_file() or (out / "mels").is_dir()):
        raise UsageError(f"{out} is not empty and is not a mel cache ({', '.join(shown[:3])}"
                         f"{', ...' if len(shown) > 3 else ''}); choose a new or empty directory")


def _write_cache(data, out: Path, *, root, on_error, max_seconds, cleaners, batch_size, frame_step, read_threads,
                 report, progress, audio) -> Dataset:
    if not isinstance(data, Dataset) and Path(data, MANIFEST).exists():
        raise DataError(f"{data} is already a mel cache")
    dataset = load_dataset(data, root=root, on_error=on_error, max_seconds=max_seconds, cleaners=cleaners,
                           report=report, audio=audio)
    if dataset.cached:
        raise DataError(f"{dataset.origin} is already a mel cache")
    fe = dataset.audio
    mel_dir = out / "mels"
    mel_dir.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    for leftover in mel_dir.glob(".*.tmp"):  # from a killed run
        leftover.unlink(missing_ok=True)

    names = _names(dataset)
    order = sorted(range(len(dataset)), key=lambda i: dataset[i].frames)
    problems = list(dataset.problems)
    done: dict[int, str] = {}

    def read(i):
        try:
            return i, read_audio(dataset[i]), None
        except DataError as e:
            return i, None, e

    def flush(group, frames):
        x = np.zeros((batch_size, padded_samples(frames, fe)), np.float32)
        lengths = np.ones(batch_size, np.int64)
        for r, (i, clip) in enumerate(group):
            x[r] = prepad(clip, frames, fe)
            lengths[r] = dataset[i].frames
        mels = mels_from_prepadded(x, lengths, frames, fe)
        for r, (i, _) in enumerate(group):
            rel = f"mels/{names[i]}.npy"
            mel = np.ascontiguousarray(mels[r, :, :dataset[i].frames])
            with atomic_write(out / rel) as f:
                np.save(f, mel, allow_pickle=False)
            done[i] = rel
        if progress is not None:
            progress(len(done), len(dataset))

    group, group_frames = [], None
    with ThreadPoolExecutor(max(1, read_threads)) as pool:
        for i, clip, err in _bounded_map(pool, read, order, window=4 * batch_size):
            if err is not None:
                problems.append(str(err))
                report(problems[-1])
                if on_error == "fail":
                    raise err
                continue
            frames = -(-dataset[i].frames // frame_step) * frame_step
            if group and (frames != group_frames or len(group) == batch_size):
                flush(group, group_frames)
                group = []
            group.append((i, clip))
            group_frames = frames
        if group:
            flush(group, group_frames)

    if not done:
        raise DataError(f"no usable utterances in {dataset.origin} ({len(problems)} bad entries skipped)", problems)
    entries = [{"mel": done[i], "audio": audio_in_cache(u.audio, out), "text": u.text, "tokens": list(u.tokens),
                "samples": u.samples, "frames": u.frames, "source": u.source}
               for i, u in enumerate(dataset) if i in done]
    manifest = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "mel": fe.cache_params(), "origin": dataset.origin,
                "cleaners": list(dataset.cleaners), "problems": problems, "utterances": entries}
    _fsync_dir(mel_dir)
    with atomic_write(out / MANIFEST, "w") as f:
        f.write(json.dumps(manifest, indent=1))
    _fsync_dir(out)
    return load_cache(out)


# -- command line ---------------------------------------------------------------------------------------

def run_preprocess(args, audio=None) -> int:
    """`jtts preprocess`; audio: the front end (from --config / --set), default DLE's."""
    shown = [0]

    def progress(done, total):
        if done == total or done - shown[0] >= 500:
            shown[0] = done
            print(f"{done}/{total} mels", file=sys.stderr, flush=True)

    try:
        cache = preprocess(args.dataset, args.output, root=args.dataset_path, on_error=args.on_error,
                           max_seconds=args.max_seconds, cleaners=args.text_cleaners or DEFAULT_CLEANERS,
                           progress=None if args.quiet else progress, audio=audio)
    except DataError as e:
        # The FILE:LINE lines were reported as found; the summary line is enough here.
        print(f"jtts preprocess: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    if not args.quiet:
        skipped = f", {len(cache.problems)} bad entries skipped" if cache.problems else ""
        print(f"wrote {len(cache)} mels to {args.output}{skipped}")
    return 0
