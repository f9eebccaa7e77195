"""Training batches for Tacotron 2 and WaveGlow: bucketed, padded, deterministic, resumable, read by Grain.

    it = tacotron2_batches("cache/", 64, seed=1)      # or an LJSpeech dir, a filelist, a Dataset
    batch = next(it)                                  # dict of numpy arrays
    state = it.get_state()                            # JSON-able; set_state(state) on a fresh iterator
                                                      # continues with exactly the batches that follow

Which utterances form batch i is a pure function of (dataset, settings, seed, i): epoch e = i // batches
per epoch is shuffled with a generator seeded by (seed, e), so resuming needs only the position, and
Grain's iterator state is exactly that (plus per-worker positions with worker processes).

Tacotron 2 batches follow DLE's collate: rows sorted by text length, longest first; tokens and mels
zero-padded; gate target 1 from the last real frame (mel_length - 1) to the end of the padding. Unlike
DLE, shapes are not the batch maxima but the smallest of a few (tokens, frames) buckets that fits, so a
jitted step compiles once per bucket; and shuffled batches are drawn from pools of `sort_pool` batches
sorted by length, so a batch holds similar lengths and little padding (sort_pool=1 is DLE's plain shuffle).

WaveGlow batches are DLE's: a random `segment_length`-sample window of each clip (start uniform over the
clip, drawn from (seed, epoch)), clips shorter than that zero-padded at the end, and the mel of that
window: (B, 80, 1 + segment_length // 256) = 32 frames for 8000 samples.

Without a mel cache, mels are computed on the fly with `jtts.audio.mel_spectrogram` in the main process
(worker processes only read and resample audio, so JAX never runs in them); they equal the cached ones.
Both use the dataset's audio front end (`Dataset.audio`: the model's, see `load_dataset`).

Several processes (jax.distributed): `shard=(jax.process_index(), jax.process_count())` makes every process
plan the same global batches (same seed) and read only its own contiguous block of rows of each, in the row
order and bucket of the whole batch, so that the processes' blocks, concatenated in process order, are the
batch one process would build (what `jax.make_array_from_process_local_data` assembles). Validation batches
are read whole by every process (`Trainer.eval_step` takes its rows from them): a last batch that does not
split evenly then runs replicated.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

import numpy as np

from jtts.train.datasets import (MANIFEST, MEL_PARAMS, DataError, Dataset, Utterance, load_cache,
                                 load_dataset, mels_from_audio, mels_from_prepadded, padded_samples,
                                 prepad, read_audio, read_filelist, read_ljspeech, read_mel)

__all__ = ["BatchIterator", "tacotron2_batches", "tacotron2_val_batches", "waveglow_batches",
           "waveglow_val_batches", "tacotron2_buckets", "DataError", "Dataset", "Utterance", "load_dataset",
           "load_cache", "read_ljspeech", "read_filelist", "read_audio", "read_mel", "mels_from_audio",
           "MANIFEST", "MEL_PARAMS", "SEGMENT_LENGTH"]

SEGMENT_LENGTH = 8000  # DLE's WaveGlow training segment
_FOREVER = 1_000_000   # epochs when num_epochs is None: a Grain MapDataset needs a length
_STATE_FORMAT = "jtts-batches/1"


def _round_up(x: int, m: int) -> int:
    return -(-int(x) // m) * m


def tacotron2_buckets(dataset: Dataset, k: int = 8, *, frame_multiple: int = 16,
                      token_multiple: int = 8) -> tuple[tuple[int, int], ...]:
    """Up to k (max tokens, max frames) shapes from the dataset's length quantiles, increasing in both, the
    last holding the longest text and the longest clip. Frame sizes are multiples of `frame_multiple`
    (which must then be a multiple of the decoder's frames per step; DLE uses 1)."""
    if k < 1:
        raise ValueError(f"need at least one bucket, got {k}")
    frames = np.array([u.frames for u in dataset])
    tokens = np.array([len(u.tokens) for u in dataset])
    ranked = np.sort(frames)
    cuts = sorted({_round_up(ranked[-(-len(ranked) * (i + 1) // k) - 1], frame_multiple) for i in range(k)})
    out, running = [], 0
    for m in cuts:
        running = max(running, _round_up(tokens[frames <= m].max(initial=1), token_multiple))
        out.append((running, m))
    return tuple(out)


def _check_buckets(buckets, dataset: Dataset) -> tuple[tuple[int, int], ...]:
    b = tuple(sorted((int(t), int(m)) for t, m in buckets))
    if not b or any(t < 1 or m < 1 for t, m in b):
        raise ValueError(f"buckets must be (tokens, frames) pairs of positive sizes, got {buckets!r}")
    if any(t1 > t2 for (t1, _), (t2, _) in zip(b, b[1:])):
        # Otherwise a batch of long-text and long-audio utterances could fit no bucket.
        raise ValueError(f"bucket token sizes must grow with frame sizes, got {b}")
    t_max, m_max = b[-1]
    over = [f"{u.source}: {len(u.tokens)} tokens, {u.frames} frames" for u in dataset
            if len(u.tokens) > t_max or u.frames > m_max]
    if over:
        raise DataError(f"{len(over)} utterance(s) exceed the largest bucket ({t_max} tokens, {m_max} frames); "
                        f"first: {over[0]}", over)
    return b


class _Source:
    """Random access to whole batches (what Grain reads, in worker processes or threads)."""

    kind = ""

    def __init__(self, dataset: Dataset, batch_size: int, *, seed: int, shuffle: bool, drop_remainder: bool,
                 num_epochs: int | None, sort_pool: int = 1, shard: tuple[int, int] = (0, 1)):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        index, count = shard
        if not 0 <= index < count or batch_size % count:
            raise ValueError(f"shard {index} of {count}: the global batch size {batch_size} must be a multiple "
                             f"of the process count")
        self.shard = (int(index), int(count))
        self.audio = dataset.audio
        if num_epochs is not None and num_epochs < 1:
            raise ValueError(f"num_epochs must be at least 1 or None, got {num_epochs}")
        self.utterances = list(dataset)
        self.batch_size, self.seed, self.shuffle = batch_size, int(seed), shuffle
        self.drop_remainder, self.num_epochs, self.sort_pool = drop_remainder, num_epochs, max(1, sort_pool)
        n = len(self.utterances)
        self.per_epoch = n // batch_size if drop_remainder else -(-n // batch_size)
        if self.per_epoch == 0:
            raise DataError(f"{dataset.origin}: {n} utterance(s), fewer than one batch of {batch_size}; "
                            f"a batch size of at most {n} fits")
        self.frames = np.array([u.frames for u in self.utterances])
        self._plan = (None, None)

    def __len__(self) -> int:
        return self.per_epoch * (self.num_epochs or _FOREVER)

    def settings(self) -> dict:
        # What decides the batches (not num_epochs: a run may be extended and still resume).
        return {"kind": self.kind, "batch_size": self.batch_size, "seed": self.seed, "shuffle": self.shuffle,
                "drop_remainder": self.drop_remainder, "sort_pool": self.sort_pool,
                "data": [[u.samples, len(u.tokens)] for u in self.utterances]}

    def _rng(self, epoch: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, stream])

    def plan(self, epoch: int) -> list[np.ndarray]:
        """Utterance indices of each batch of the epoch, in order."""
        cached_epoch, batches = self._plan  # one tuple read: safe against Grain's reader threads
        if cached_epoch == epoch:
            return batches
        n, b = len(self.utterances), self.batch_size
        rng = self._rng(epoch, 0)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.drop_remainder:
            order = order[:n // b * b]
        if self.shuffle and self.sort_pool > 1:
            pool = self.sort_pool * b
            order = np.concatenate([c[np.argsort(-self.frames[c], kind="stable")]
                                    for c in np.split(order, list(range(pool, len(order), pool)))])
        batches = [order[s:s + b] for s in range(0, len(order), b)]
        if self.shuffle:
            batches = [batches[k] for k in rng.permutation(len(batches))]
        self._plan = (epoch, batches)
        return batches

    def __getitem__(self, i: int) -> dict:
        epoch, j = divmod(int(i), self.per_epoch)
        return self.load(epoch, self.plan(epoch)[j])

    def rows(self, n: int) -> slice:
        """This process's block of the rows of a global batch of n."""
        index, count = self.shard
        return slice(n * index // count, n * (index + 1) // count)

    def load(self, epoch: int, indices: np.ndarray) -> dict:
        """The rows of the global batch `indices` that this process reads."""
        raise NotImplementedError

    def finalize(self, batch: dict) -> dict:
        """Main-process step after a worker's `load` (JAX work)."""
        return batch


class _Tacotron2Source(_Source):
    kind = "tacotron2"

    def __init__(self, dataset, batch_size, *, buckets, **kw):
        super().__init__(dataset, batch_size, **kw)
        self.buckets = buckets
        self.cached = dataset.cached

    def settings(self) -> dict:
        # Not whether mels are cached: both give the same batches, so a run may resume on a new cache.
        return {**super().settings(), "buckets": [list(b) for b in self.buckets]}

    def bucket(self, n_tokens: int, n_frames: int) -> tuple[int, int]:
        return next((t, m) for t, m in self.buckets if t >= n_tokens and m >= n_frames)

    def load(self, epoch, indices):
        utts = [self.utterances[k] for k in indices]
        utts.sort(key=lambda u: -len(u.tokens))  # DLE's collate order; stable for equal lengths
        t, m = self.bucket(max(len(u.tokens) for u in utts), max(u.frames for u in utts))  # the whole batch's
        utts = utts[self.rows(len(utts))]
        b = len(utts)
        out = {"tokens": np.zeros((b, t), np.int32),
               "token_lengths": np.array([len(u.tokens) for u in utts], np.int32),
               "mel_lengths": np.array([u.frames for u in utts], np.int32),
               "gate": np.zeros((b, m), np.float32)}
        if self.cached:
            out["mels"] = np.zeros((b, self.audio.n_mels, m), np.float32)
        else:
            out["_audio"] = np.zeros((b, padded_samples(m, self.audio)), np.float32)
        for r, u in enumerate(utts):
            out["tokens"][r, :len(u.tokens)] = u.tokens
            out["gate"][r, u.frames - 1:] = 1.0
            if self.cached:
                out["mels"][r, :, :u.frames] = read_mel(u)
            else:
                out["_audio"][r] = prepad(read_audio(u), m, self.audio)
        return out

    def finalize(self, batch):
        if "_audio" in batch:
            batch["mels"] = mels_from_prepadded(batch.pop("_audio"), batch["mel_lengths"], batch["gate"].shape[1],
                                                self.audio)
        return batch


class _WaveGlowSource(_Source):
    kind = "waveglow"

    def __init__(self, dataset, batch_size, *, segment_length, **kw):
        super().__init__(dataset, batch_size, **kw)
        if segment_length < self.audio.hop:
            raise ValueError(f"segment_length must be at least {self.audio.hop}, got {segment_length}")
        self.segment_length = int(segment_length)
        self.samples = np.array([u.samples for u in self.utterances])
        _check_audio_present(self.utterances, dataset.origin)

    def settings(self) -> dict:
        return {**super().settings(), "segment_length": self.segment_length}

    def load(self, epoch, indices):
        seg = self.segment_length
        # Drawn for every clip at once so that a clip's window depends on (seed, epoch, clip) only.
        starts = self._rng(epoch, 1).integers(0, np.maximum(self.samples - seg, 0) + 1)
        indices = indices[self.rows(len(indices))]
        audio = np.zeros((len(indices), seg), np.float32)
        for r, k in enumerate(indices):
            a = read_audio(self.utterances[k])
            s = int(starts[k])
            a = a[s:s + seg]
            audio[r, :len(a)] = a
        return {"audio": audio}

    def finalize(self, batch):
        from jtts.audio import mel_spectrogram

        batch["mels"] = np.asarray(mel_spectrogram(batch["audio"], **self.audio.mel_kwargs()), np.float32)
        return batch


def _check_audio_present(utterances, origin: str) -> None:
    """WaveGlow reads the clips themselves, also from a mel cache: say at start which it cannot find, rather than
    at the first batch that needs one."""
    missing = [u for u in utterances if not os.path.isfile(u.audio)]
    if not missing:
        return
    u = missing[0]
    hint = (" (a mel cache finds its audio relative to itself: move the dataset along with the cache, or run "
            "`jtts preprocess` again)" if u.mel is not None else "")
    raise DataError(f"{origin}: {len(missing)} of {len(utterances)} audio files not found, first {u.audio} "
                    f"(for {u.source}){hint}", [f"{m.source}: missing audio file {m.audio}" for m in missing])


def _jsonable(x):
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, (np.ndarray, tuple)):
        return list(x.tolist() if isinstance(x, np.ndarray) else x)
    if isinstance(x, bytes):
        return x.decode()
    raise TypeError(f"loader state holds a {type(x).__name__}, which JSON cannot store")


class BatchIterator:
    """Iterator of batch dicts with a JSON-able position: get_state() / set_state(state).

    `position` counts the batches returned; `epoch` = position // batches_per_epoch. The Grain pipeline
    (and its worker processes) starts on the first next() or set_state()."""

    def __init__(self, source: _Source, *, worker_count: int = 0, read_threads: int = 4, prefetch: int = 4):
        self._source = source
        self.worker_count, self.read_threads, self.prefetch = worker_count, read_threads, prefetch
        self.batches_per_epoch = source.per_epoch
        self.num_epochs = source.num_epochs
        blob = json.dumps(source.settings(), sort_keys=True).encode()
        self.fingerprint = hashlib.sha256(blob).hexdigest()[:16]
        self.position = 0
        self._it = None

    @property
    def buckets(self):
        """Tacotron 2: the (tokens, frames) shapes batches are padded to; WaveGlow: None."""
        return getattr(self._source, "buckets", None)

    @property
    def epoch(self) -> int:
        return self.position // self.batches_per_epoch

    def _iterator(self):
        if self._it is None:
            import grain

            ds = grain.MapDataset.source(self._source).to_iter_dataset(
                grain.ReadOptions(num_threads=max(1, self.read_threads), prefetch_buffer_size=max(1, self.prefetch)))
            if self.worker_count > 0:
                _absl_flags_parsed()
                ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.worker_count,
                                                                 per_worker_buffer_size=max(1, self.prefetch)))
            self._it = iter(ds)
        return self._it

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = next(self._iterator())
        self.position += 1
        if self.worker_count > 0:
            # Own copies, not views of Grain's shared memory: the segment is freed at once, and no
            # array outlives the interpreter's teardown of the modules its cleanup needs.
            batch = {k: np.array(v) for k, v in batch.items()}
        return self._source.finalize(dict(batch))

    def get_state(self) -> dict:
        loader = json.loads(json.dumps(self._iterator().get_state(), default=_jsonable))
        return {"format": _STATE_FORMAT, "fingerprint": self.fingerprint, "position": self.position,
                "worker_count": self.worker_count, "loader": loader}

    def set_state(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
            raise DataError(f"not a {_STATE_FORMAT} loader state")
        if state.get("fingerprint") != self.fingerprint:
            raise DataError("the loader state was saved with another dataset or other batch settings "
                            "(batch size, seed, buckets, ...); resuming would not give the same batches")
        if state.get("worker_count") != self.worker_count:
            raise DataError(f"the loader state was saved with worker_count={state.get('worker_count')}, "
                            f"this loader has {self.worker_count}; use the same number to resume")
        self._iterator().set_state(state["loader"])
        self.position = int(state["position"])

    def close(self) -> None:
        it, self._it = self._it, None
        if it is not None and hasattr(it, "close"):
            it.close()


def _absl_flags_parsed() -> None:
    # Grain's multiprocessing reads absl flags; a program that is not an absl app never parses them.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _dataset(data) -> Dataset:
    return data if isinstance(data, Dataset) else load_dataset(data)


def tacotron2_batches(data, batch_size: int, *, seed: int = 0, buckets: int | Sequence[tuple[int, int]] = 8,
                      drop_remainder: bool = True, shuffle: bool = True, num_epochs: int | None = None,
                      sort_pool: int = 32, worker_count: int = 0, read_threads: int = 4,
                      prefetch: int = 4, shard: tuple[int, int] = (0, 1)) -> BatchIterator:
    """Tacotron 2 batches: "tokens" (B, T_in) int32, "token_lengths" (B,) int32, "mels" (B, n_mels, T) float32,
    "mel_lengths" (B,) int32, "gate" (B, T) float32, with (T_in, T) one of `iterator.buckets`.

    data: a Dataset, mel cache, LJSpeech directory or filelist (paths relative to the current directory;
    use `read_filelist(..., root=...)` for another root). buckets: a count (derived from the lengths by
    `tacotron2_buckets`) or explicit (tokens, frames) pairs. num_epochs None repeats forever.
    shard: (process index, process count): batch_size is the global batch, of which this process reads the
    rows `index * B / count` up to `(index + 1) * B / count`."""
    dataset = _dataset(data)
    buckets = (tacotron2_buckets(dataset, buckets) if isinstance(buckets, (int, np.integer))
               else _check_buckets(buckets, dataset))
    source = _Tacotron2Source(dataset, batch_size, buckets=buckets, seed=seed, shuffle=shuffle,
                              drop_remainder=drop_remainder, num_epochs=num_epochs, sort_pool=sort_pool, shard=shard)
    return BatchIterator(source, worker_count=worker_count, read_threads=read_threads, prefetch=prefetch)


def tacotron2_val_batches(data, batch_size: int, *, buckets: int | Sequence[tuple[int, int]] = 8,
                          **kw) -> BatchIterator:
    """Every utterance once, in dataset order, the last batch possibly smaller."""
    return tacotron2_batches(data, batch_size, buckets=buckets, shuffle=False, drop_remainder=False,
                             num_epochs=1, **kw)


def waveglow_batches(data, batch_size: int, *, seed: int = 0, segment_length: int = SEGMENT_LENGTH,
                     drop_remainder: bool = True, shuffle: bool = True, num_epochs: int | None = None,
                     worker_count: int = 0, read_threads: int = 4, prefetch: int = 4,
                     shard: tuple[int, int] = (0, 1)) -> BatchIterator:
    """WaveGlow batches: "audio" (B, segment_length) float32 and its "mels" (B, n_mels, 1 + segment_length // hop).
    shard: as for `tacotron2_batches`."""
    source = _WaveGlowSource(_dataset(data), batch_size, segment_length=segment_length, seed=seed,
                             shuffle=shuffle, drop_remainder=drop_remainder, num_epochs=num_epochs, shard=shard)
    return BatchIterator(source, worker_count=worker_count, read_threads=read_threads, prefetch=prefetch)


def waveglow_val_batches(data, batch_size: int, *, seed: int = 0, **kw) -> BatchIterator:
    """Every clip once, in dataset order (windows still drawn from `seed`), the last batch possibly smaller."""
    return waveglow_batches(data, batch_size, seed=seed, shuffle=False, drop_remainder=False, num_epochs=1, **kw)
