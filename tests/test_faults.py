"""Fault injection for conversion and synthesis (issue 9): kill -9 at seeded random points of `jtts convert`
and `jtts synthesize -o DIR/`, damaged model directories, a full disk, read-only outputs.

The rule checked after every fault: the next command either completes correctly or fails with one line, and
nothing that looks complete is wrong (a directory with model.json loads and equals a clean conversion; a
manifest.tsv lists exactly the files beside it, each complete and right; no file that is not hidden is half
written). docs/reliability.md has the counts; `pytest tests/test_faults.py -q -s` prints them.

Killed commands run in a zygote (tests/zygote.py): real processes running `jtts.cli.main(argv)`, killed with
SIGKILL at their k-th file-system change or after a delay, both drawn with a seed from a clean run of the same
command. Training's faults are tests/test_train_faults.py's, not counted here.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from robust_helpers import tiny_dir
from zygote import Zygote

SEED = 9
STEPS = 16  # the test Tacotron 2 never stops by itself (gate bias -10): every utterance is STEPS frames
LINES = "The first line.\nA second, longer line of text.\nThird.\n"
EARLIER = "Four lines.\nFrom an earlier run.\nWith mels.\nAnd a fourth.\n"
# -- fixtures and checks --------------------------------------------------------------------------------------

TINY = {"tacotron2": dict(n_symbols=148, symbols_embedding_dim=32, encoder_embedding_dim=32,
                          encoder_n_convolutions=2, attention_rnn_dim=64, decoder_rnn_dim=64, prenet_dim=32,
                          attention_dim=16, attention_location_n_filters=8, postnet_embedding_dim=32,
                          postnet_n_convolutions=3),
        "waveglow": dict(n_flows=4, n_early_every=2, n_layers=2, n_channels=16)}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Tiny models, clean conversions and synthesis runs to compare with, and a zygote sharing the XLA cache."""
    from jtts.cli import main

    root = tmp_path_factory.mktemp("faults")
    saved = os.environ.get("JTTS_HOME")
    os.environ["JTTS_HOME"] = str(root / "home")
    m = {kind: tiny_dir(root, kind, TINY[kind], SEED + i, end_scale=0.5) for i, kind in enumerate(TINY)}
    (root / "lines.txt").write_text(LINES)
    (root / "earlier.txt").write_text(EARLIER)
    # no denoiser: its set-up traces WaveGlow once more, the largest part of a tiny synthesis
    synth = ["--tacotron2", str(m["tacotron2"]), "--waveglow", str(m["waveglow"]), "--max-decoder-steps",
             str(STEPS), "--denoise", "0", "-q"]
    assert main(["synthesize", "-i", str(root / "lines.txt"), "-o", str(root / "ref/"), *synth]) == 0
    assert main(["synthesize", "-i", str(root / "earlier.txt"), "-o", str(root / "earlier/"), "--save-mel",
                 *synth]) == 0
    (root / "earlier" / "notes.txt").write_text("the user's own file: never counted, never deleted\n")
    (root / "zygote").mkdir()
    zygote = Zygote(root / "zygote", dict(os.environ))
    pts = {kind: root / f"{kind}.pt" for kind in m}
    _all_ok(zygote.run(*({"argv": ["export", str(m[k]), "-o", str(pts[k]), "-q"]} for k in m)))
    _all_ok(zygote.run({"argv": ["convert", str(pts["tacotron2"]), "-o", str(root / "ref_model"), "-q"]},
                       {"argv": ["convert", str(pts["tacotron2"]), "-o", str(root / "old_model"), "-q",
                                 "--dtype", "float16"]}))
    yield dict(m, tacotron2_pt=pts["tacotron2"], waveglow_pt=pts["waveglow"], root=root, synth=synth,
               zygote=zygote, ref=_snapshot(root / "ref"), earlier=_snapshot(root / "earlier"),
               ref_model=_params(root / "ref_model"), old_model=_params(root / "old_model"))
    zygote.close()
    if saved is None:
        os.environ.pop("JTTS_HOME", None)
    else:
        os.environ["JTTS_HOME"] = saved


def _all_ok(results: list[dict]) -> None:
    for r in results:
        assert r["rc"] == 0, r["stderr"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}


def _params(model_dir: Path) -> dict:
    from jtts.checkpoint import load_model

    return load_model(model_dir)[1]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _one_line(stderr: str, command: str) -> str:
    """The error line, the only line on stderr but for warnings (the tiny Tacotron 2 reaches
    --max-decoder-steps, which synthesize reports for each utterance it has written)."""
    lines = [ln for ln in stderr.strip().splitlines() if not ln.startswith(f"jtts {command}: warning: ")]
    assert len(lines) == 1 and lines[0].startswith(f"jtts {command}: error: "), stderr
    return lines[0]


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _model_state(out: Path, allowed: dict) -> str:
    """'absent' or the name of the allowed parameter set `out` holds; fails on anything else (data loss)."""
    if not os.path.lexists(out):
        return "absent"
    assert (out / "model.json").is_file(), f"{out} exists without model.json: a half-written model"
    params = _params(out)
    for name, ref in allowed.items():
        if _same(params, ref):
            return name
    pytest.fail(f"{out} has model.json and loads, but its parameters are neither of {sorted(allowed)}")


def _synth_state(folder: Path, env: dict) -> str:
    """What a killed `synthesize --overwrite` over the earlier run left: 'earlier' (untouched), 'new'
    (finished), or 'incomplete' (no manifest); every visible file is complete and belongs to one of the two."""
    files = _snapshot(folder)
    assert files.pop("notes.txt") == env["earlier"]["notes.txt"]
    for name, data in files.items():
        assert data in (env["ref"].get(name), env["earlier"].get(name)), f"{name} is neither old nor new"
    if "manifest.tsv" not in files:
        return "incomplete"
    for state in ("earlier", "new"):
        want = {k: v for k, v in env["earlier" if state == "earlier" else "ref"].items() if k != "notes.txt"}
        if files == want:
            return state
    pytest.fail(f"manifest.tsv beside files of another run: {sorted(files)}")


def _kill_points(zygote: Zygote, job: dict, n: int, rng: random.Random) -> list[dict]:
    """n kill jobs for `job`: two thirds at seeded file-system changes, one third after seeded delays, both
    drawn over what a clean run of the same job does (its number of changes and its duration)."""
    clean = zygote.run(dict(job))[0]
    assert clean["rc"] == 0 and not clean["killed"], clean["stderr"]
    n_events = len(clean["events"])
    at_events = sorted(rng.sample(range(1, n_events + 1), min(n_events, n - n // 3)))
    delays = [round(rng.uniform(0.05, 0.8) * clean["seconds"], 3) for _ in range(n - len(at_events))]
    return [dict(job, kill_at=k) for k in at_events] + [dict(job, kill_after=d) for d in delays]


# -- kill -9 ----------------------------------------------------------------------------------------------------

def test_kill9_convert(env, capsys):
    """jtts convert killed at 16 seeded points, half of them writing a new directory and half replacing an
    older model (--overwrite): the path always holds nothing, the old model or the complete new one."""
    from jtts.cli import main

    root, rng, counts = env["root"], random.Random(SEED), dict(injected=0, survived=0, finished_first=0)
    base = ["convert", str(env["tacotron2_pt"]), "-q"]
    jobs = []
    for i, job in enumerate(_kill_points(env["zygote"], {"argv": base + ["-o", str(root / "c_clean" / "m")]}, 16,
                                         rng)):
        replace = i % 2 == 1
        out = root / f"c{i}" / "m"
        out.parent.mkdir()
        if replace:
            shutil.copytree(root / "old_model", out)
        jobs.append(dict(job, argv=base + ["-o", str(out)] + (["--overwrite"] if replace else []), out=str(out)))
    for job, res in zip(jobs, env["zygote"].run(*jobs)):
        out = Path(job["out"])
        replace = "--overwrite" in job["argv"]
        allowed = {"new": env["ref_model"], **({"old": env["old_model"]} if replace else {})}
        state = _model_state(out, allowed)
        assert not (replace and state == "absent"), f"the old model vanished: {res['events'][-1:]}"
        if not res["killed"]:
            assert res["rc"] == 0 and state == "new", res["stderr"]
            counts["finished_first"] += 1
            continue
        counts["injected"] += 1
        counts[f"left {state}"] = counts.get(f"left {state}", 0) + 1
        # the next command: refused in one line while the path exists, then done with --overwrite
        again = base + ["-o", str(out)]
        if state != "absent":
            capsys.readouterr()
            assert main(again) == 2
            assert "already exists; pass --overwrite" in _one_line(capsys.readouterr().err, "convert")
            again.append("--overwrite")
        assert main(again) == 0 and _same(_params(out), env["ref_model"])
        assert _hidden(out.parent) == [], "temporaries of the killed run were left behind"
        counts["survived"] += 1
    print(f"\nkill -9 jtts convert: {counts}")
    assert counts["injected"] >= 10 and counts["survived"] == counts["injected"]


def test_kill9_at_every_step_of_replacing_a_model(env):
    """`jtts convert --overwrite` killed at each file-system change from writing model.json to removing the
    replaced directory: at every instant the path holds the old or the new model, never nothing."""
    root, zygote = env["root"], env["zygote"]
    argv = ["convert", str(env["tacotron2_pt"]), "-q", "--overwrite", "-o"]
    shutil.copytree(root / "old_model", root / "r_clean")
    events = zygote.run({"argv": argv + [str(root / "r_clean")]})[0]["events"]
    first = next(i for i, e in enumerate(events, 1) if "model.json" in e)
    last = next(i for i, e in enumerate(events, 1) if i > first and " shutil.rmtree " in e) + 1
    jobs = []
    for k in range(first, last + 1):
        shutil.copytree(root / "old_model", root / f"r{k}")
        jobs.append({"argv": argv + [str(root / f"r{k}")], "kill_at": k})
    results = zygote.run(*jobs)
    states = [_model_state(Path(job["argv"][-1]), {"old": env["old_model"], "new": env["ref_model"]})
              for job in jobs]
    print(f"\nkill -9 jtts convert --overwrite at changes {first}-{last} of {len(events)}: {states}")
    assert all(r["killed"] for r in results) and "absent" not in states
    assert states[0] == "old" and states[-1] == "new"


def test_kill9_synthesize(env, capsys):
    """jtts synthesize -o DIR/ --overwrite over an earlier 4-utterance run (with mels and a user's file),
    killed at 8 seeded points: DIR holds the earlier run, the new one, or no manifest; never a mix."""
    from jtts.cli import main
    from jtts.speak import _earlier_outputs

    root, rng, counts = env["root"], random.Random(SEED + 1), dict(injected=0, survived=0, finished_first=0)
    argv = ["synthesize", "-i", str(root / "lines.txt"), "--overwrite", *env["synth"]]
    shutil.copytree(root / "earlier", root / "s_clean")
    jobs = []
    for i, job in enumerate(_kill_points(env["zygote"], {"argv": argv + ["-o", str(root / "s_clean")]}, 8, rng)):
        out = root / f"s{i}"
        shutil.copytree(root / "earlier", out)
        jobs.append(dict(job, argv=argv + ["-o", str(out) + "/"], out=str(out)))
    for job, res in zip(jobs, env["zygote"].run(*jobs)):
        out = Path(job["out"])
        state = _synth_state(out, env)
        if not res["killed"]:
            assert res["rc"] == 0 and state == "new", res["stderr"]
            counts["finished_first"] += 1
            continue
        counts["injected"] += 1
        counts[f"left {state}"] = counts.get(f"left {state}", 0) + 1
        if _earlier_outputs(out):
            capsys.readouterr()
            assert main([a for a in job["argv"] if a != "--overwrite"]) == 2
            assert "pass --overwrite" in _one_line(capsys.readouterr().err, "synthesize")
        assert main(job["argv"]) == 0
        assert _synth_state(out, env) == "new" and _hidden(out) == []
        counts["survived"] += 1
    print(f"\nkill -9 jtts synthesize: {counts}")
    assert counts["injected"] >= 6 and counts["survived"] == counts["injected"]


# -- damaged model directories ----------------------------------------------------------------------------------

def _largest(model_dir: Path) -> Path:
    return max((p for p in (model_dir / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _flip(path: Path, where: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "params truncated": (lambda d: os.truncate(_largest(d), _largest(d).stat().st_size // 2), "truncated"),
    "params deleted": (lambda d: _largest(d).unlink(), "missing"),
    # inside a compressed chunk: Orbax itself loads this without complaint, with one weight changed
    "params byte flipped": (lambda d: _flip(_largest(d)), "checksum differs"),
    "Orbax metadata flipped": (lambda d: _flip(d / "params" / "_METADATA", 0.3), "checksum differs"),
    "model.json truncated": (lambda d: os.truncate(d / "model.json", 200), "model.json: corrupt"),
    "model.json not text": (lambda d: (d / "model.json").write_bytes(b"\x89\xff\xfe" * 50), "not UTF-8"),
    "model.json a list": (lambda d: (d / "model.json").write_text("[1, 2]"), "not a jtts model description"),
    "model.json files record": (lambda d: _edit_meta(d, files={"x": "y"}), 'malformed "files" record'),
}


def _edit_meta(d: Path, **changes) -> None:
    meta = json.loads((d / "model.json").read_text())
    (d / "model.json").write_text(json.dumps({**meta, **changes}))


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_model_is_one_line(damage, env, tmp_path, capsys):
    from jtts.cli import main

    model = tmp_path / "tacotron2"
    shutil.copytree(env["root"] / "ref_model", model)
    hurt, needle = DAMAGE[damage]
    hurt(model)
    out = tmp_path / "x.wav"
    argv = ["synthesize", "Hello there.", "-o", str(out), *env["synth"]]
    argv[argv.index("--tacotron2") + 1] = str(model)
    assert main(argv) == 1
    line = _one_line(capsys.readouterr().err, "synthesize")
    assert needle in line and str(model) in line, line
    assert not out.exists()
    assert main(["export", str(model), "-o", str(tmp_path / "x.pt")]) == 1
    assert needle in _one_line(capsys.readouterr().err, "export")


# -- full disk --------------------------------------------------------------------------------------------------

def test_file_size_limit_is_one_line_and_leaves_nothing(env):
    """RLIMIT_FSIZE (EFBIG, as a quota or full disk would refuse the write) in the middle of conversion and of
    synthesis: one line, no model directory, no manifest, no partial file (works without root)."""
    root = env["root"]
    conv, synth_dir = root / "fs" / "m", root / "fs" / "out"
    conv.parent.mkdir()
    res = env["zygote"].run(
        {"argv": ["convert", str(env["waveglow_pt"]), "-o", str(conv), "-q"], "fsize": 256 * 1024},
        {"argv": ["synthesize", "-i", str(root / "lines.txt"), "-o", f"{synth_dir}/", *env["synth"]], "fsize": 4096})
    for r, command, needle in zip(res, ("convert", "synthesize"),
                                  (f"{conv}: cannot write the parameters (File too large)",
                                   f"File too large: '{synth_dir / '0001.wav'}'")):
        assert r["rc"] == 1 and not r["killed"], r["stderr"]
        assert needle in _one_line(r["stderr"], command)
    assert sorted(os.listdir(conv.parent)) == ["out"]  # neither the model nor its temporaries
    assert os.listdir(synth_dir) == []


@pytest.fixture
def mount(tmp_path):
    """mount(size, ro=False) -> a fresh tmpfs (root only; skipped where mounting is not allowed)."""
    mounted = []

    def make(size: str, ro: bool = False) -> Path:
        where = tmp_path / f"mnt{len(mounted)}"
        where.mkdir()
        opts = f"size={size}" + (",ro" if ro else "")
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)],
                                               capture_output=True).returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(where)
        return where

    yield make
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_full_tmpfs_is_one_line_and_leaves_nothing(env, mount):
    """A 2 MB tmpfs: the WaveGlow conversion (~26 MB) runs out of space; synthesis fills the last 16 KB after
    the first WAV. One line each; no model, no manifest, no temporaries; what is there is complete."""
    disk = mount("2m")
    root = env["root"]
    conv = env["zygote"].run({"argv": ["convert", str(env["waveglow_pt"]), "-o", str(disk / "m"), "-q"]})[0]
    assert conv["rc"] == 1 and "No space left on device" in _one_line(conv["stderr"], "convert")
    assert os.listdir(disk) == []
    stat = os.statvfs(disk)
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * (stat.f_bavail * stat.f_frsize - 16 * 1024))
    syn = env["zygote"].run({"argv": ["synthesize", "-i", str(root / "lines.txt"), "-o", f"{disk}/out/",
                                      *env["synth"]]})[0]
    assert syn["rc"] == 1 and "No space left on device" in _one_line(syn["stderr"], "synthesize")
    left = _snapshot(disk / "out")
    assert "manifest.tsv" not in left and _hidden(disk / "out") == []
    assert all(data == env["ref"][name] for name, data in left.items())


# -- read-only outputs -------------------------------------------------------------------------------------------

def _must_not_run(*args, **kwargs):
    raise AssertionError("a model or checkpoint was read although the output could not be written")


def test_read_only_output_fails_before_any_model_loads(env, mount, tmp_path, capsys, monkeypatch):
    import jtts.cli as cli
    import jtts.convert

    if os.geteuid() == 0:
        ro = mount("1m")
        (ro / "existing").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
    else:
        ro = tmp_path / "ro"
        (ro / "existing").mkdir(parents=True)
        ro.chmod(0o555)
        (ro / "existing").chmod(0o555)
    monkeypatch.setattr(cli, "_load", _must_not_run)
    monkeypatch.setattr(jtts.convert, "convert", _must_not_run)
    monkeypatch.setattr(jtts.convert, "export", _must_not_run)
    for argv, command in (
            (["synthesize", "Hello.", "-o", str(ro / "x.wav"), *env["synth"]], "synthesize"),
            (["synthesize", "Hello.", "-o", f"{ro}/new/", *env["synth"]], "synthesize"),
            (["synthesize", "Hello.", "-o", f"{ro}/existing/", *env["synth"]], "synthesize"),
            (["convert", str(env["tacotron2_pt"]), "-o", str(ro / "m")], "convert"),
            (["export", str(env["root"] / "ref_model"), "-o", str(ro / "x.pt")], "export")):
        assert cli.main(argv) == 1, argv
        line = _one_line(capsys.readouterr().err, command)
        assert "cannot write there" in line and ("Read-only" in line or "Permission denied" in line), line
    assert sorted(os.listdir(ro)) == ["existing"] and os.listdir(ro / "existing") == []

