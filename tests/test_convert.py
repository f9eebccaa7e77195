"""`jtts convert` / `jtts export`: every checkpoint layout NVIDIA ships, both weight-norm spellings, the round
trip back into the PyTorch model, and every way a file can be wrong."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from jtts.checkpoint import read_meta
from jtts.cli import main
from jtts.convert import CheckpointError, convert, export
from reference.tacotron2_torch import Tacotron2 as RefTacotron2
from reference.tacotron2_torch import tacotron2_small_config
from reference.waveglow_torch import WaveGlow as RefWaveGlow
from reference.waveglow_torch import waveglow_config, waveglow_small_config
from reference.weights import (live_tacotron2, live_waveglow, save_dle_checkpoint, save_hub_checkpoint,
                               save_state_dict)


@pytest.fixture(scope="module")
def small_taco():
    cfg = tacotron2_small_config()
    return cfg, live_tacotron2(cfg, seed=11)


@pytest.fixture(scope="module")
def small_wg():
    cfg = waveglow_small_config()
    return cfg, live_waveglow(cfg, seed=12)


def _roundtrip_equal(model_dir, ref_cls, ref_model, tmp_path, **ref_kwargs):
    """Export, load into the PyTorch model with strict=True, and compare every tensor bit for bit."""
    out = export(model_dir, tmp_path / "exported.pt")
    blob = torch.load(out, weights_only=True)
    fresh = ref_cls(**blob["config"], **ref_kwargs)
    fresh.load_state_dict(blob["state_dict"], strict=True)
    want = ref_model.state_dict()
    assert set(blob["state_dict"]) == set(want)
    for k, v in want.items():
        got = blob["state_dict"][k]
        assert got.dtype == v.dtype and torch.equal(got, v), k


@pytest.mark.parametrize("layout", ["training", "training_fp16", "hub", "bare"])
def test_tacotron2_layouts(layout, small_taco, tmp_path):
    cfg, ref = small_taco
    src = tmp_path / "taco.pt"
    if layout == "training":
        save_dle_checkpoint(src, ref, cfg, module_prefix=True, with_optimizer=True)
    elif layout == "training_fp16":
        save_dle_checkpoint(src, ref, cfg, module_prefix=True, dtype=torch.float16)
    elif layout == "hub":
        save_hub_checkpoint(src, ref, cfg)
    else:
        save_state_dict(src, ref)
    out = convert(src, tmp_path / "model")
    meta = read_meta(out, "tacotron2")
    for key in ("encoder_embedding_dim", "attention_rnn_dim", "attention_location_kernel_size", "prenet_dim",
                "postnet_embedding_dim", "n_symbols"):
        assert meta["config"][key] == cfg[key], key
    assert meta["source"]["parameters"] == sum(p.numel() for p in ref.parameters())
    if layout == "training_fp16":
        from jtts.checkpoint import load_model
        _, params = load_model(out)
        emb = ref.embedding.weight.detach().half().float().numpy()
        assert params["embedding.embedding"].dtype == np.float32
        assert np.array_equal(params["embedding.embedding"], emb)
    else:
        _roundtrip_equal(out, RefTacotron2, ref, tmp_path)


@pytest.mark.parametrize("style", ["old", "new"])
def test_waveglow_weight_norm_spellings_and_roundtrip(style, small_wg, tmp_path):
    cfg, _ = small_wg
    ref = live_waveglow(cfg, seed=12, weight_norm_style=style)
    keys = ref.state_dict().keys()
    assert any(k.endswith("weight_g" if style == "old" else "original0") for k in keys)
    src = tmp_path / "wg.pt"
    save_dle_checkpoint(src, ref, cfg, module_prefix=True)
    out = convert(src, tmp_path / "model")
    meta = read_meta(out, "waveglow")
    assert meta["config"]["n_channels"] == 32 and meta["config"]["n_flows"] == 12
    assert meta["config"]["n_early_every"] == 4 and meta["config"]["n_early_size"] == 2
    # export always writes DLE's own (old) spelling, which DLE's model loads
    _roundtrip_equal(out, RefWaveGlow, live_waveglow(cfg, seed=12, weight_norm_style="old"), tmp_path)


@pytest.mark.parametrize("channels", [256, 512])
def test_waveglow_channel_widths_inferred(channels, tmp_path):
    # NGC widths with fewer layers/flows keep the test light; widths, kernel and early outputs come from shapes
    cfg = waveglow_config(channels, n_flows=8, WN_config=dict(n_layers=2, n_channels=channels, kernel_size=3))
    ref = live_waveglow(cfg, seed=3)
    save_hub_checkpoint(tmp_path / "wg.pt", ref, cfg)
    meta = read_meta(convert(tmp_path / "wg.pt", tmp_path / "model"))
    assert meta["config"]["n_channels"] == channels and meta["config"]["n_layers"] == 2
    assert meta["config"]["n_flows"] == 8 and meta["config"]["kernel_size"] == 3


class _Payload:
    """Unpickling this would create a file: the converter must refuse before anything runs."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_malicious_pickle_is_refused_and_nothing_runs(small_taco, tmp_path):
    cfg, ref = small_taco
    marker = tmp_path / "pwned"
    src = tmp_path / "evil.pt"
    torch.save({"state_dict": ref.state_dict(), "config": cfg, "extra": _Payload(marker)}, src)
    with pytest.raises(CheckpointError, match="refused"):
        convert(src, tmp_path / "model")
    assert not marker.exists()
    assert not (tmp_path / "model").exists()


def test_truncated_file_one_line_error_and_no_output(small_taco, tmp_path, capsys):
    cfg, ref = small_taco
    src = tmp_path / "taco.pt"
    save_hub_checkpoint(src, ref, cfg)
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    code = main(["convert", str(src), "-o", str(tmp_path / "model")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and "truncated or corrupt" in err and str(src) in err
    assert not (tmp_path / "model").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model")], "no partial directory left"


def test_not_a_checkpoint(tmp_path, capsys):
    src = tmp_path / "notes.pt"
    src.write_text("hello, I am not a checkpoint\n")
    assert main(["convert", str(src), "-o", str(tmp_path / "m")]) == 1
    assert "not a readable PyTorch checkpoint" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="no such file"):
        convert(tmp_path / "missing.pt", tmp_path / "m")
    torch.save({"weights": [1, 2, 3]}, tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="no state_dict"):
        convert(tmp_path / "list.pt", tmp_path / "m")


def test_wrong_model_kind(small_taco, tmp_path, capsys):
    cfg, ref = small_taco
    save_hub_checkpoint(tmp_path / "taco.pt", ref, cfg)
    code = main(["convert", str(tmp_path / "taco.pt"), "-o", str(tmp_path / "m"), "--kind", "waveglow"])
    assert code == 1 and "is a tacotron2 checkpoint, not waveglow" in capsys.readouterr().err
    torch.save({"state_dict": {"foo.weight": torch.zeros(3)}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a state_dict of any known model"):
        convert(tmp_path / "other.pt", tmp_path / "m")


def test_wrong_missing_and_unexpected_keys_are_named(small_taco, tmp_path):
    cfg, ref = small_taco
    sd = ref.state_dict()

    def attempt(state, config=cfg):
        torch.save({"state_dict": state, "config": config}, tmp_path / "x.pt")
        with pytest.raises(CheckpointError) as e:
            convert(tmp_path / "x.pt", tmp_path / "m")
        assert not (tmp_path / "m").exists()
        return str(e.value)

    bad = dict(sd)
    bad["decoder.gate_layer.linear_layer.weight"] = torch.zeros(1, 7)
    msg = attempt(bad)
    assert "decoder.gate_layer.linear_layer.weight" in msg and "(1, 7)" in msg
    missing = {k: v for k, v in sd.items() if k != "postnet.convolutions.4.1.running_var"}
    assert "missing keys postnet.convolutions.4.1.running_var" in attempt(missing)
    extra = {**sd, "decoder.surprise.weight": torch.zeros(2)}
    assert "unexpected keys decoder.surprise.weight" in attempt(extra)
    assert "config says prenet_dim=256 but the weights have prenet_dim=32" in attempt(sd, {**cfg, "prenet_dim": 256})


def test_failed_conversion_keeps_existing_model(small_taco, tmp_path):
    cfg, ref = small_taco
    save_hub_checkpoint(tmp_path / "taco.pt", ref, cfg)
    out = convert(tmp_path / "taco.pt", tmp_path / "model")
    before = json.loads((out / "model.json").read_text())
    (tmp_path / "bad.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError):
        convert(tmp_path / "bad.pt", tmp_path / "model")
    assert json.loads((out / "model.json").read_text()) == before


def test_cli_convert_info_export(small_taco, tmp_path, capsys):
    cfg, ref = small_taco
    save_dle_checkpoint(tmp_path / "taco.pt", ref, cfg)
    assert main(["convert", str(tmp_path / "taco.pt"), "-o", str(tmp_path / "model")]) == 0
    assert main(["info", str(tmp_path / "model")]) == 0
    out = capsys.readouterr().out
    assert "tacotron2" in out and "training checkpoint" in out and "epoch 1500" in out
    assert main(["export", str(tmp_path / "model"), "-o", str(tmp_path / "back.pt")]) == 0
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert torch.equal(back["state_dict"]["embedding.weight"], ref.embedding.weight.detach())
    assert main(["info", str(tmp_path / "nowhere")]) == 1
    assert "not a jtts model directory" in capsys.readouterr().err
