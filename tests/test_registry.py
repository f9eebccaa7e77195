"""The model registry (one entry per kind serves loading, conversion both ways and training), the error
hierarchy's exit statuses, and a CLI start-up that does not import JAX."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
from flax import nnx

from jtts import models
from jtts.errors import JttsError, ModelDirError, UsageError

# -- a third model kind, defined here: one module's worth of code plus one registry line ---------------------


@dataclass(frozen=True)
class ToyConfig:
    n_in: int = 3
    n_out: int = 2

    @classmethod
    def from_dle(cls, config):
        return cls(**{k: int(v) for k, v in config.items() if k in ("n_in", "n_out")})

    def to_dle(self):
        return dict(n_in=self.n_in, n_out=self.n_out)


class Toy(models.FromCheckpoint, nnx.Module):
    def __init__(self, config=ToyConfig(), *, dtype=np.float32, rngs):
        self.config, self.dtype = config, dtype
        self.proj = nnx.Linear(config.n_in, config.n_out, rngs=rngs)

    def __call__(self, x):
        return self.proj(x)


class toy_names:  # noqa: N801 -- stands in for a convert/<kind>.py module
    from jtts.convert.tables import LINEAR, SAME, Rule

    SIGNATURES = ("toy.",)

    @staticmethod
    def table(cfg):
        R = toy_names.Rule
        return [R("toy.weight", "proj.kernel", toy_names.LINEAR), R("toy.bias", "proj.bias", toy_names.SAME)]

    @staticmethod
    def infer_config(state, dle_config=None, source="checkpoint"):
        n_out, n_in = state["toy.weight"].shape
        return ToyConfig(n_in=n_in, n_out=n_out)


@pytest.fixture
def toy_kind(monkeypatch):
    entry = models.ModelKind("toy", f"{__name__}:Toy", f"{__name__}:ToyConfig", f"{__name__}:toy_names")
    monkeypatch.setitem(models.REGISTRY, "toy", entry)
    return entry


def test_every_entry_resolves():
    for name, entry in models.REGISTRY.items():
        cls = entry.model_class
        assert models.kind_of(cls) == name
        assert entry.config_class().__class__ is entry.config_class
        assert callable(entry.names_module.table) and entry.names_module.SIGNATURES
        assert entry.task_class().kind == name


def test_a_new_kind_converts_loads_and_exports(toy_kind, tmp_path):
    import torch

    from jtts.convert import convert, detect_kind, export

    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal(2).astype(np.float32)
    src = tmp_path / "toy.pt"
    torch.save({"state_dict": {"toy.weight": torch.from_numpy(w), "toy.bias": torch.from_numpy(b)}}, src)
    assert detect_kind({"toy.weight": w}, "x") == "toy"
    out = convert(src, tmp_path / "toy")
    model = Toy.from_checkpoint(out)
    assert model.config == ToyConfig(3, 2)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(model(x)), x @ w.T + b, rtol=1e-6, atol=1e-6 * np.abs(x).sum())
    back = torch.load(export(out, tmp_path / "back.pt"), weights_only=True)["state_dict"]
    assert np.array_equal(back["toy.weight"].numpy(), w) and np.array_equal(back["toy.bias"].numpy(), b)
    with pytest.raises(JttsError, match="cannot be trained"):
        toy_kind.task_class()


def test_load_refuses_another_kind(toy_kind, tmp_path):
    from jtts.checkpoint import save_model

    params = {"proj.kernel": np.zeros((3, 2), np.float32), "proj.bias": np.zeros(2, np.float32)}
    save_model(tmp_path / "m", "toy", {"n_in": 3, "n_out": 2}, params)
    with pytest.raises(ModelDirError, match="holds a toy model, not tacotron2"):
        models.load(tmp_path / "m", kind="tacotron2")
    save_model(tmp_path / "bad", "toy", {"n_in": 3, "n_out": 2, "n_hidden": 5}, params)
    with pytest.raises(ModelDirError, match="invalid toy config"):
        models.load(tmp_path / "bad")


def test_unknown_kind_is_one_clear_error():
    with pytest.raises(JttsError, match="unknown model kind 'hifigan'.*tacotron2, waveglow"):
        models.get("hifigan")


# -- errors and exit statuses -----------------------------------------------------------------------------------


def test_errors_carry_exit_statuses():
    from jtts.errors import CheckpointError, DataError, HubError, NonFiniteLoss, NothingToSpeak

    assert UsageError.exit_code == 2 and NonFiniteLoss.exit_code == 3
    assert all(e.exit_code == 1 for e in (JttsError, CheckpointError, ModelDirError, HubError, DataError,
                                          NothingToSpeak))
    assert all(issubclass(e, JttsError) for e in (UsageError, CheckpointError, DataError, NonFiniteLoss))


def test_empty_text_is_a_usage_error(tmp_path, capsys):
    from jtts.cli import main

    (tmp_path / "empty.txt").write_text("\n  \n")
    assert main(["synthesize", "-i", str(tmp_path / "empty.txt"), "-o", str(tmp_path / "x.wav")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no text" in err and "empty.txt" in err


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    """Only errors a user can cause become one line: anything else propagates (a ValueError from a bug too)."""
    import jtts.cli as cli
    import jtts.speak as speak

    def broken(*a, **k):
        raise ValueError("bug inside jtts")

    monkeypatch.setattr(speak, "_prepare", broken)
    with pytest.raises(ValueError, match="bug inside jtts"):
        cli.main(["synthesize", "hello", "-o", str(tmp_path / "x.wav")])


# -- start-up ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--help"], ["synthesize", "--help"], ["train", "--help"]])
def test_help_does_not_import_jax_or_torch(argv):
    code = ("import sys, runpy; sys.argv = ['jtts'] + %r\n"
            "try:\n    runpy.run_module('jtts', run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
            "heavy = sorted(m for m in ('jax', 'torch', 'flax', 'orbax') if m in sys.modules)\n"
            "print('HEAVY', heavy, 'EXIT', code)") % (argv,)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "usage: jtts" in res.stdout, res.stdout + res.stderr
    assert "HEAVY [] EXIT 0" in res.stdout, res.stdout[-300:] + res.stderr[-300:]
