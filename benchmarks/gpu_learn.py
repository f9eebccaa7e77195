"""Continue a `jtts train tacotron2` run on a lent GPU for a fixed number of minutes, in one call of the device
tool, and bring its checkpoints back for `benchmarks/learn_speech.py` to judge here (issue 10, item 2).

The lent machine reaches no registry and takes at most 64 MiB of files, so everything it needs is packed here
first: the starting weights as a jtts model directory, and the training and held-out mel caches as float16
(byte-shuffled, LZMA: 123 MB of float32 mels travel as 39 MB; the rounding, at most 2^-11 of a log-mel value,
is far below what training resolves). Back come at most six slimmed checkpoints (weights and BatchNorm
statistics, no Adam moments; `learn_speech.py` reads them as it reads a run), the training log and the
trainer's output. Those files are written while the run goes on, so a call cut short still returns what was
trained by then.

    # here, no device time: wheels the image lacks (grain, ...), then the payload
    benchmarks/gpu.sh --prepare
    python benchmarks/gpu_learn.py pack RUN --step N --train CACHE --val CACHE
    # the one call: device tool `run`, carry [".gpu"], timeout_s 600
    bash benchmarks/gpu.sh --learn --minutes 8
    # here again: FILES is the call's files_at
    python benchmarks/gpu_learn.py unpack FILES -o runs/gpu
    python benchmarks/learn_speech.py runs/gpu --val CACHE --draws 4 --max-decoder-steps 1000

`device` (what `gpu.sh --learn` runs) starts `jtts train tacotron2 --init-from` the packed weights with the
options below (any after `--` are appended), stops it with SIGTERM after --minutes (it finishes its step and
saves), and meanwhile slims every new checkpoint into OUT. It runs on a CPU too (`--out DIR`, small
`--minutes`), which is how it is checked before a device call.
"""
from __future__ import annotations

import argparse
import json
import lzma
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

from jtts.files import atomic_write

MAGIC = b"jtts-mels-f16\n"
PAYLOAD = Path(".gpu/learn")
MAX_MODELS = 6  # the device tool returns at most 8 files: these, the log and the trainer's output
# The mid run's recipe (docs/learning.md) at the batch a GPU makes cheap: the decoder's per-step cost barely
# grows with the batch there, so 8x the batch costs about what 16 did; lr 5e-4 (the CPU run's from 3,312 on).
TRAIN_OPTIONS = ["--batch-size", "128", "--lr", "5e-4", "--guided-attention", "50", "--gate-pos-weight", "10",
                 "--buckets", "4", "--ckpt-every", "50", "--val-every", "200", "--log-every", "10",
                 "--keep", "1000", "--seed", "0", "--steps", "1000000", "--no-progress"]


# -- mel caches as one compressed file -------------------------------------------------------------------------

def pack_cache(cache: Path, out: Path) -> int:
    """A `jtts preprocess` cache -> one file: its manifest, then every mel as float16, byte-shuffled, LZMA."""
    manifest = json.loads((cache / "manifest.json").read_text())
    mels = [np.load(cache / u["mel"]) for u in manifest["utterances"]]
    half = np.concatenate([m.astype(np.float16).ravel() for m in mels])
    shuffled = half.view(np.uint8).reshape(-1, 2).T.tobytes()  # low bytes, then high bytes: compresses better
    header = json.dumps({"manifest": manifest, "shapes": [m.shape for m in mels]}).encode()
    with atomic_write(out) as f:
        f.write(MAGIC + len(header).to_bytes(8, "little") + header + lzma.compress(shuffled, preset=6))
    return out.stat().st_size


def unpack_cache(packed: Path, cache: Path) -> int:
    """The inverse of pack_cache, mels back as float32 .npy (what the trainer reads)."""
    blob = packed.read_bytes()
    if not blob.startswith(MAGIC):
        raise SystemExit(f"{packed}: not a packed mel cache")
    n = int.from_bytes(blob[len(MAGIC):len(MAGIC) + 8], "little")
    start = len(MAGIC) + 8
    header = json.loads(blob[start:start + n])
    raw = np.frombuffer(lzma.decompress(blob[start + n:]), np.uint8)
    half = raw.reshape(2, -1).T.copy().view(np.float16).ravel()
    manifest, offset = header["manifest"], 0
    for u, shape in zip(manifest["utterances"], header["shapes"]):
        size = int(np.prod(shape))
        path = cache / u["mel"]
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, half[offset:offset + size].reshape(shape).astype(np.float32))
        offset += size
    (cache / "manifest.json").write_text(json.dumps(manifest))
    return len(manifest["utterances"])


# -- here, before the call ---------------------------------------------------------------------------------------

def fresh_dir(path: Path, marker: str) -> None:
    """Empty `path` for this script's use, refusing to delete a folder it did not make (one without `marker`)."""
    if path.exists():
        if any(path.iterdir()) and not (path / marker).exists():
            raise SystemExit(f"{path}: exists and is not this script's (no {marker}); give another folder")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / marker).touch()


def pack(args) -> int:
    sys.path.insert(0, str(Path(__file__).parent))
    from learn_speech import export

    if not (args.run / "checkpoints" / str(args.step) / "state").is_dir():
        raise SystemExit(f"{args.run}: no checkpoint {args.step} (checkpoints/{args.step}/state)")
    for cache in (args.train, args.val):
        if not (cache / "manifest.json").is_file():
            raise SystemExit(f"{cache}: not a mel cache (no manifest.json; make one with `jtts preprocess`)")
    out = args.out
    fresh_dir(out, ".gpu_learn_payload")
    export(args.run, args.step, out / "init")
    sizes = {name: pack_cache(cache, out / f"{name}.mels") for name, cache in (("train", args.train),
                                                                                 ("val", args.val))}
    (out / "origin.json").write_text(json.dumps({"run": str(args.run.absolute()), "step": args.step,
                                                 "train": str(args.train), "val": str(args.val)}))
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"packed {out}: init from {args.run} step {args.step}; train {sizes['train'] / 2**20:.1f} MiB, "
          f"val {sizes['val'] / 2**20:.1f} MiB; {total / 2**20:.1f} MiB in all")
    return 0


# -- on the device -------------------------------------------------------------------------------------------

def slim(run: Path, step: int, out: Path) -> Path:
    """Checkpoint `step` of `run` without its Adam moments, as a one-checkpoint run directory in a tar."""
    import orbax.checkpoint as ocp

    from jtts.checkpoint import quiet_orbax

    src = run / "checkpoints" / str(step)
    work = out.parent / f".slim-{step}"
    shutil.rmtree(work, ignore_errors=True)
    dst = work / "checkpoints" / str(step)
    with quiet_orbax():
        state = ocp.StandardCheckpointer().restore(src.absolute() / "state")
        train = {"params": state["train"]["params"], "stats": state["train"]["stats"]}
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(dst.absolute() / "state", {"train": train})
        checkpointer.wait_until_finished()
    shutil.copytree(src / "meta", dst / "meta")
    with atomic_write(out) as f, tarfile.open(fileobj=f, mode="w") as tar:
        tar.add(work, arcname=".")
    shutil.rmtree(work)
    return out


def tars(folder: Path) -> list[Path]:
    """The step_N.tar files in `folder` (what slim writes), by step."""
    return sorted(folder.glob("step_*.tar"), key=tar_step)


def tar_step(path: Path) -> int:
    return int(path.stem.split("_")[1])


def thin(out: Path) -> None:
    """Keep at most MAX_MODELS checkpoint tars, as evenly spaced as can be: drop the inner one whose
    neighbours are closest together, never the first or the newest."""
    while True:
        kept = tars(out)
        if len(kept) <= MAX_MODELS:
            return
        steps = [tar_step(p) for p in kept]
        inner = min(range(1, len(kept) - 1), key=lambda i: steps[i + 1] - steps[i - 1])
        kept[inner].unlink()


def new_checkpoints(run: Path, done: set[int]) -> list[int]:
    """Checkpoints of `run` that Orbax has finished writing and `done` does not hold yet."""
    from jtts.train.rundir import CKPT_DIR, steps

    ckpts = run / CKPT_DIR
    return [s for s in steps(ckpts) if s not in done and (ckpts / str(s) / "commit_success.txt").exists()]


def device(args) -> int:
    trainer_platform = args.trainer_platform or os.environ.get("JAX_PLATFORMS")
    os.environ["JAX_PLATFORMS"] = "cpu"  # this process only reads checkpoints; the trainer has the device
    out, work = args.out, args.work
    out.mkdir(parents=True, exist_ok=True)
    fresh_dir(work, ".gpu_learn_work")
    t0 = time.monotonic()
    for name in ("train", "val"):
        n = unpack_cache(args.payload / f"{name}.mels", work / "cache" / name)
        print(f"unpacked {n} {name} utterances ({time.monotonic() - t0:.0f} s)", flush=True)
    run = work / "run"
    command = [sys.executable, "-m", "jtts", "train", "tacotron2", "--data", str(work / "cache" / "train"),
               "--val", str(work / "cache" / "val"), "-o", str(run), "--init-from", str(args.payload / "init"),
               *TRAIN_OPTIONS, *args.train_args]
    print("$ " + " ".join(command), flush=True)
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env["PYTHONUNBUFFERED"] = "1"
    if trainer_platform:
        env["JAX_PLATFORMS"] = trainer_platform
    with open(out / "train.log", "w") as log:
        trainer = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline, stopped, done = time.monotonic() + args.minutes * 60, False, set()

    def collect():
        for step in new_checkpoints(run, done):
            t = time.monotonic()
            slim(run, step, out / f"step_{step}.tar")
            done.add(step)
            thin(out)
            shutil.copy(run / "train_log.jsonl", out / "train_log.jsonl")
            print(f"checkpoint {step} slimmed in {time.monotonic() - t:.1f} s", flush=True)

    while trainer.poll() is None:
        if not stopped and time.monotonic() > deadline:
            print(f"{args.minutes} minutes up: SIGTERM (the trainer finishes its step and saves)", flush=True)
            trainer.send_signal(signal.SIGTERM)
            stopped = True
        collect()
        time.sleep(2)
    collect()
    if (run / "train_log.jsonl").exists():
        shutil.copy(run / "train_log.jsonl", out / "train_log.jsonl")
    print(f"trainer exited with {trainer.returncode}; kept {[p.name for p in tars(out)]}", flush=True)
    # 128 + 15: jtts train's exit status when SIGTERM stopped it (after saving), not a failure here
    return 0 if trainer.returncode in (0, 128 + signal.SIGTERM) and done else 1


# -- here, after the call ----------------------------------------------------------------------------------------

def unpack(args) -> int:
    found = tars(args.files)
    if not found:
        raise SystemExit(f"{args.files}: no step_*.tar (the files of a `gpu.sh --learn` call)")
    args.out.mkdir(parents=True, exist_ok=True)
    for t in found:
        with tarfile.open(t) as tar:
            tar.extractall(args.out, filter="data")
    if (args.files / "train_log.jsonl").exists():
        shutil.copy(args.files / "train_log.jsonl", args.out / "train_log.jsonl")
    print(f"{args.out}: checkpoints {[tar_step(t) for t in found]}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack", help="here: the starting weights and the mel caches into .gpu/learn")
    a.add_argument("run", type=Path)
    a.add_argument("--step", type=int, required=True)
    a.add_argument("--train", type=Path, required=True)
    a.add_argument("--val", type=Path, required=True)
    a.add_argument("--out", type=Path, default=PAYLOAD)
    d = sub.add_parser("device", help="there (gpu.sh --learn): train for --minutes, slim checkpoints into --out")
    d.add_argument("--minutes", type=float, required=True)
    d.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out/gpu_learn")))
    d.add_argument("--payload", type=Path, default=PAYLOAD)
    d.add_argument("--work", type=Path, default=Path("/tmp/jtts-gpu-learn"))
    d.add_argument("--trainer-platform", help="JAX_PLATFORMS for the trainer (default: JAX's choice)")
    d.add_argument("train_args", nargs="*", help="more `jtts train` options (after --)")
    u = sub.add_parser("unpack", help="here: the call's files -> a run directory learn_speech.py reads")
    u.add_argument("files", type=Path)
    u.add_argument("-o", "--out", type=Path, required=True)
    args = p.parse_args(argv)
    return {"pack": pack, "device": device, "unpack": unpack}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
