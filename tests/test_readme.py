"""The README's commands, run as written (so the page cannot rot): the main job against a local mirror of
NGC serving small checkpoints, the conversion commands, the Python API block, and the test command CI runs."""
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import jtts.cli as cli
from small_tts import TACO_PATH, WG_PATH, FileServer, small_checkpoints

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(lang: str = "") -> list[str]:
    return [m.group(2) for m in re.finditer(r"```(\w*)\n(.*?)```", README, re.S) if m.group(1) == lang]


def shell_lines(block: str) -> list[list[str]]:
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    # gate bias +10: the decoder stops at its first step, so the main job runs in seconds on CPU
    return small_checkpoints(tmp_path_factory.mktemp("readme_ckpt"), gate_bias=10.0)


def test_main_job_command(checkpoints, tmp_path):
    main_job = next(b for b in blocks() if "jtts synthesize" in b).strip()
    steps = [shlex.split(s) for s in main_job.split("&&")]
    assert steps[0][:3] == ["python3", "-m", "venv"] and "torch==2.13.0" in steps[1], main_job
    synth = steps[-1]
    assert synth[0] == ".venv/bin/jtts" and synth[1] == "synthesize", synth
    taco, wg = checkpoints
    server = FileServer({TACO_PATH: taco.read_bytes(), WG_PATH: wg.read_bytes()})
    try:
        env = dict(os.environ, JTTS_HOME=str(tmp_path / "cache"), JTTS_BASE_URL=server.url)
        # the installed entry point of the environment running the tests stands in for .venv/bin/jtts
        res = subprocess.run([sys.executable, "-m", "jtts", *synth[1:]], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)
    finally:
        server.close()
    assert res.returncode == 0, res.stderr
    out = tmp_path / synth[synth.index("-o") + 1]
    audio, rate = sf.read(out)
    assert rate == 22050 and len(audio) == 256 and np.abs(audio).max() > 0
    assert (tmp_path / "cache" / "models" / "tacotron2" / "model.json").is_file()
    assert "real-time factor" in res.stderr


def test_test_command_is_what_ci_runs():
    cmd = next(b for b in blocks() if "tests/run.sh" in b).strip()
    assert cmd == "tests/run.sh"
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^exec tests/run\.sh\s*$", ci, re.M), ci


def test_conversion_commands_and_python_api(tmp_path, monkeypatch, capsys):
    # a decoder that never stops by itself: the API block's infer runs its full 2000 default steps
    taco, wg = small_checkpoints(tmp_path / "ckpt", gate_bias=-10.0)
    convert_block = next(b for b in blocks() if "jtts convert" in b)
    lines = shell_lines(convert_block)
    # NGC's file names in the README stand for the small checkpoints here
    shutil.copy(taco, tmp_path / "nvidia_tacotron2pyt_fp16.pt")
    shutil.copy(wg, tmp_path / "nvidia_waveglow256pyt_fp16.pt")
    monkeypatch.chdir(tmp_path)
    for argv in lines:
        assert argv[0] == "jtts", argv
        assert cli.main(argv[1:]) == 0, argv
    out = capsys.readouterr().out
    assert "waveglow" in out and "parameters" in out
    assert (tmp_path / "waveglow.pt").is_file() and (tmp_path / "models" / "tacotron2" / "model.json").is_file()

    (api,) = blocks("python")
    scope: dict = {}
    exec(compile(api, "README.md", "exec"), scope)
    audio = np.asarray(scope["audio"])
    assert audio.shape == (1, 2000 * 256) and np.isfinite(audio).all() and np.abs(audio).max() > 0


def test_synthesize_examples(checkpoints, tmp_path):
    block = next(b for b in blocks() if "jtts synthesize -i" in b)
    taco, wg = checkpoints
    # what the examples name: a text file, a list on stdin, a converted Tacotron 2 and a WaveGlow .pt
    (tmp_path / "chapter.txt").write_text("First line.\nSecond line, with more words.\n")
    (tmp_path / "lines.txt").write_text("One.\nTwo.\nThree.\n")
    from jtts.convert import convert

    convert(taco, tmp_path / "models" / "tacotron2")
    shutil.copy(wg, tmp_path / "waveglow.pt")
    server = FileServer({TACO_PATH: taco.read_bytes(), WG_PATH: wg.read_bytes()})
    env = dict(os.environ, JTTS_HOME=str(tmp_path / "cache"), JTTS_BASE_URL=server.url,
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    try:
        for line in block.splitlines():
            cmd = line.split("#")[0].strip()
            if not cmd:
                continue
            res = subprocess.run(cmd, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
            assert res.returncode == 0, (cmd, res.stderr)
    finally:
        server.close()
    assert sf.info(tmp_path / "out.wav").samplerate == 22050 and sf.info(tmp_path / "own.wav").frames > 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0001.wav", "0002.wav", "0003.wav", "manifest.tsv"]


def test_training_commands(tmp_path, monkeypatch, capsys):
    """The README's training block on a tiny LJSpeech-layout set: each line as written, with overrides appended
    (argparse keeps the last value) that shrink the model and the number of steps."""
    import torch

    from jtts.convert import convert
    from reference.waveglow_torch import waveglow_small_config
    from reference.weights import live_waveglow, save_dle_checkpoint
    from test_train_data import write_ljspeech

    block = next(b for b in blocks() if "jtts train" in b)
    write_ljspeech(tmp_path / "LJSpeech-1.1")
    wcfg = waveglow_small_config()
    torch.manual_seed(0)
    save_dle_checkpoint(tmp_path / "nvidia_waveglow256pyt_fp16.pt", live_waveglow(wcfg, seed=5), wcfg)
    convert(tmp_path / "nvidia_waveglow256pyt_fp16.pt", tmp_path / "models" / "waveglow")
    monkeypatch.chdir(tmp_path)
    quick = ["--no-progress", "--batch-size", "2", "--log-every", "1", "--ckpt-every", "1"]
    for argv in shell_lines(block):
        assert argv[0] == "jtts", argv
        if argv[1] == "train" and argv[2] == "tacotron2":
            argv += quick + ["--config", "small", "--buckets", "1", "--val-every", "2",
                             "--steps", "3" if "--resume" in argv else "2"]
        elif argv[1] == "train":
            argv += quick + ["--steps", "1", "--segment-length", "2048"]
        assert cli.main(argv[1:]) == 0, (argv, capsys.readouterr().err)
    from jtts.train.loop import read_log

    steps = [e["step"] for e in read_log(tmp_path / "runs" / "taco") if e["event"] == "train"]
    assert steps == [1, 2, 3], steps  # two steps, then the resumed third
    assert (tmp_path / "runs" / "wg-ft" / "model" / "model.json").is_file()
    assert list((tmp_path / "runs" / "taco" / "val").glob("*.png"))
