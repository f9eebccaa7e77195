"""A model's text front end (cleaners + DLE's 148 symbols + extra_symbols) lives in its config: training data,
warm start, `jtts synthesize`, the pipeline and the server all turn text into that model's ids. A warm start to a
symbol table extended at its end keeps the trained rows of the embedding."""
from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from jtts.text import DLE_TEXT, TextFrontend, sequence_to_text, symbol_table, symbols, text_to_sequence
from robust_helpers import TINY, tiny, tiny_dir
from test_train_data import CLIPS, write_ljspeech

N = len(symbols)  # 148


def test_extra_symbols_take_the_ids_after_dles():
    text = TextFrontend(("basic_cleaners",), "éß")
    assert symbol_table("éß")[N:] == ["é", "ß"] and text.n_symbols == N + 2
    ids = text.ids("Straße café")
    assert ids == [symbol_table("éß").index(c) for c in "straße café"] and ids[4] == N + 1 and ids[-1] == N
    assert text.text(ids) == "straße café" and sequence_to_text(ids) == "strae caf"  # DLE's table skips them
    # english_cleaners transliterate to ASCII before the lookup: why the cleaners belong to the front end
    assert TextFrontend(extra_symbols="éß").ids("Straße café") == DLE_TEXT.ids("Straße café") == \
        text_to_sequence("strasse cafe")
    # a letter among the extra symbols is something to speak, punctuation is not
    assert TextFrontend(("basic_cleaners",), "é").speakable([N]) and not TextFrontend(("basic_cleaners",), "¿").speakable([N])
    assert TextFrontend("basic_cleaners").cleaners == ("basic_cleaners",)


@pytest.mark.parametrize("extra, message", [
    ("ée", "'e' is already a symbol"), ("éé", "'é' appears twice"), ("{", "'{' is already a symbol or has a meaning"),
    ("é\tß", "'\\t' is already a symbol"),
])
def test_bad_extra_symbols_are_refused(extra, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TextFrontend(extra_symbols=extra)


def test_config_records_the_text_frontend():
    from jtts import Tacotron2Config

    with pytest.raises(ValueError, match=r"n_symbols 148 is smaller than the symbol table \(148 \+ 2 extra_symbols\): "
                                         r"set n_symbols=150"):
        Tacotron2Config(extra_symbols="éß")
    with pytest.raises(ValueError, match="unknown text cleaner 'no_cleaners'"):
        Tacotron2Config(text_cleaners=["no_cleaners"])
    cfg = Tacotron2Config(n_symbols=150, extra_symbols="éß", text_cleaners=["basic_cleaners"])
    assert cfg.text_frontend == TextFrontend(("basic_cleaners",), "éß") and Tacotron2Config().text_frontend == DLE_TEXT
    # through model.json (a list in JSON) and back; DLE's constructor arguments know neither
    again = Tacotron2Config.from_dle(json.loads(json.dumps(dataclasses.asdict(cfg))))
    assert again == cfg and "extra_symbols" not in cfg.to_dle() and "text_cleaners" not in cfg.to_dle()


# -- warm start to an extended symbol table ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny 148-symbol Tacotron 2 model directory and its tensors."""
    from jtts.checkpoint import load_model

    path = tiny_dir(tmp_path_factory.mktemp("trained"), "tacotron2", TINY["tacotron2"], seed=4)
    return path, load_model(path)[1]


def _built(argv):
    from jtts.cli import build_parser
    from jtts.train import cli as tcli

    args = build_parser().parse_args(["train", "tacotron2", "-o", "unused", "--synthetic", *argv])
    tcli._check_options(args)
    config = tcli._config(args)
    return config, tcli._model(args, config)


def _tensors(model):
    from jtts.checkpoint import flat_state

    return {k: np.asarray(v.get_value()) for k, v in flat_state(model).items()}


def test_extended_table_grows_the_embedding(trained, capsys):
    """Rows of DLE's symbols keep what they learnt, the new rows start as a fresh model's; DLE's way
    (--ignore-layers embedding) re-initialises every row."""
    from jtts import models

    path, params = trained
    config, model = _built(["--init-from", str(path), "--set", "n_symbols=150", "extra_symbols=éß",
                            "text_cleaners=basic_cleaners", "--seed", "9"])
    assert config.text_frontend == TextFrontend(("basic_cleaners",), "éß")
    got, fresh = _tensors(model), _tensors(models.build("tacotron2", config, seed=9))
    emb = got["embedding.embedding"]
    assert emb.shape == (150, TINY["tacotron2"]["symbols_embedding_dim"])
    np.testing.assert_array_equal(emb[:N], params["embedding.embedding"])
    np.testing.assert_array_equal(emb[N:], fresh["embedding.embedding"][N:])
    assert not np.array_equal(emb[N:], 0 * emb[N:])
    for name, value in params.items():
        if name != "embedding.embedding":
            np.testing.assert_array_equal(got[name], value, err_msg=name)
    assert "embedding.embedding: 148 of 150 rows loaded, the rest fresh" in capsys.readouterr().err

    _, dle_way = _built(["--init-from", str(path), "--set", "n_symbols=150", "extra_symbols=éß",
                         "--ignore-layers", "embedding", "--seed", "9"])
    np.testing.assert_array_equal(_tensors(dle_way)["embedding.embedding"], fresh["embedding.embedding"])


def test_a_reordered_table_is_a_mismatch(tmp_path, capsys):
    """From a model with extra symbols "é", a table "ßé" moves é's id: not an extension, so the embedding must be
    named (one error listing it) rather than grown."""
    from jtts.cli import main

    e_model = tiny_dir(tmp_path / "e", "tacotron2", dict(TINY["tacotron2"], n_symbols=149, extra_symbols="é"), seed=6)
    base = ["train", "tacotron2", "--synthetic", "--steps", "1", "--no-progress", "--seed", "1"]
    assert main(base + ["-o", str(tmp_path / "r"), "--init-from", str(e_model), "--set", "n_symbols=150",
                        "extra_symbols=ßé"]) == 1
    err = capsys.readouterr().err.strip()
    assert "1 tensor(s) do not fit" in err and "embedding.embedding (149, 32) vs (150, 32)" in err, err
    assert not (tmp_path / "r").exists()
    # an extension of "é" grows
    config, model = _built(["--init-from", str(e_model), "--set", "n_symbols=150", "extra_symbols=éß"])
    assert _tensors(model)["embedding.embedding"].shape == (150, 32)


# -- training data and synthesis use the model's front end ----------------------------------------------------------

def test_training_data_takes_the_models_ids(trained, tmp_path, capsys):
    """A cache preprocessed with DLE's english_cleaners (which turn é into e) trains a model whose front end keeps
    é: the ids are made again from the transcripts with the model's cleaners and table."""
    from jtts.cli import build_parser, main
    from jtts.train import cli as tcli
    from jtts.train import preprocess as P
    from jtts.train.datasets import DataError, load_cache, with_text_frontend

    clips = [(uid, sr, sec, ch, raw, norm.replace("the", "thé").replace("The", "Thé")) for uid, sr, sec, ch, raw, norm in CLIPS]
    lj = write_ljspeech(tmp_path / "lj", clips)
    cache = P.preprocess(lj, tmp_path / "cache", frame_step=16, report=lambda line: None)
    assert json.loads((tmp_path / "cache" / "manifest.json").read_text())["cleaners"] == ["english_cleaners"]
    ds = load_cache(tmp_path / "cache")
    assert all(N not in u.tokens for u in ds) and with_text_frontend(ds, DLE_TEXT) is ds
    text = TextFrontend(("basic_cleaners",), "é")
    redone = with_text_frontend(ds, text)
    assert [u.tokens for u in redone] == [tuple(text.ids(u.text)) for u in ds]
    assert sum(u.tokens.count(N) for u in redone) == sum(u.text.count("é") for u in ds) > 0
    mute = dataclasses.replace(ds, utterances=[ds[0], dataclasses.replace(ds[5], text="¿?")])
    with pytest.raises(DataError, match=r"1 transcript\(s\) in .* say nothing to the model:\n.*metadata.csv:6: "
                                        r"transcript has no speakable symbol .*basic_cleaners.*'¿\?'"):
        with_text_frontend(mute, text)

    argv = ["train", "tacotron2", "--data", str(cache.origin), "-o", str(tmp_path / "run"), "--steps", "2",
            "--batch-size", "4", "--no-progress", "--seed", "0", "--init-from", str(trained[0]),
            "--set", "n_symbols=149", "extra_symbols=é", "text_cleaners=basic_cleaners"]
    args = build_parser().parse_args(argv)
    config = tcli._config(args)
    batches, _ = tcli._data(args, tcli._task(args), 4, config, 1)
    seen = np.concatenate([next(batches)["tokens"].ravel() for _ in range(4)])
    assert N in seen and seen.max() == N
    assert main(argv) == 0, capsys.readouterr().err
    from jtts import Tacotron2

    assert Tacotron2.from_checkpoint(tmp_path / "run" / "model").config.text_frontend == text


def test_synthesis_speaks_in_the_models_symbols(tmp_path):
    """The pipeline, `jtts synthesize`'s text preparation and the server prepare text with the model's front end:
    "Straße" is 6 symbols to a model that has ß (english_cleaners would make it 7: "strasse")."""
    from jtts import cli
    from jtts.pipeline import prepare_all, synthesize
    from jtts.sentences import prepare
    from jtts.serve.engine import Engine
    from jtts.serve.request import prepare_text

    edits = dict(n_symbols=149, extra_symbols="ß", text_cleaners=["basic_cleaners"], max_decoder_steps=6)
    taco = tiny("tacotron2", seed=3, **edits)
    text = taco.config.text_frontend
    assert text == TextFrontend(("basic_cleaners",), "ß")
    want = text.ids("Straße.")
    assert N in want and len(want) == len(DLE_TEXT.ids("Straße.")) - 1
    # a Prepared made with DLE's front end is prepared again for this model
    assert prepare_all([prepare("Straße.")], text_frontend=text)[0].ids == [want]
    wg = tiny("waveglow", seed=2).inference()
    utt = synthesize(["Straße."], taco, wg, denoiser=None, seed=0)[0]
    assert utt.alignment.shape[1] == len(want)
    # jtts synthesize reads the front end from the model directory before loading it
    model_dir = tiny_dir(tmp_path, "tacotron2", {**TINY["tacotron2"], **edits}, seed=3)
    assert cli.text_frontend_of(str(model_dir)) == text
    assert cli.text_frontend_of(None) == cli.text_frontend_of(str(tmp_path / "missing")) == DLE_TEXT
    engine = Engine(taco, wg)
    try:
        assert engine.text_frontend == text
        assert prepare_text("Straße.", text_frontend=engine.text_frontend).ids == [want]
    finally:
        engine.close()
