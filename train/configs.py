"""Which model config a `jtts train` run gets, and which audio front end `jtts preprocess` uses.

    --config full | small | FILE.json | MODEL_DIR   the base: DLE's NGC size, the task's small preset, a JSON file
                                                    of config values (a partial one: the rest DLE's defaults; a
                                                    model.json: its config) or a model directory's config.
                                                    Default: the --init-from model's config, else full.
    --set KEY=VALUE ...                             edits over the base, front-end keys dotted:
                                                    n_symbols=160, audio.sample_rate=16000, mask_padding=true

VALUE is JSON (160, 7600.5, true) or else a plain string. Every key and value type is checked against the kind's
config dataclass before anything loads, and a rejected one is a UsageError naming where it came from (the
option or the file) -- a misspelt key is never silently ignored. Free of JAX: the options' parser and `--help`
import this module.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from jtts.errors import UsageError
from jtts.frontend import AudioConfig

PRESETS = ("full", "small")
NESTED = {"audio": AudioConfig}  # config fields that are dataclasses of their own, set as audio.KEY


def set_option(text: str) -> str:
    """argparse type of --set: "KEY=VALUE", checked for its form here and against the config when resolved."""
    key, eq, _ = text.partition("=")
    if not eq or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. n_symbols=160 or audio.sample_rate=16000), "
                                         f"got {text!r}")
    return text


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_sets(sets: Sequence[str]) -> list[tuple[str, Any, str]]:
    """--set words -> (key, value, the word itself, for messages)."""
    out = []
    for word in sets or ():
        key, _, value = set_option(word).partition("=")
        out.append((key.strip(), _value(value.strip()), f"--set {word}"))
    return out


# -- one flat {"key": value, "audio.key": value} view of a config --------------------------------------------

def _flatten(values: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in values.items():
        if k in NESTED and isinstance(v, Mapping):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in flat.items():
        head, dot, tail = k.partition(".")
        if dot:
            out.setdefault(head, {})[tail] = v
        else:
            out[k] = v
    return out


def _defaults(config_class) -> dict[str, Any]:
    """Every settable key with the type its value must have: DLE's default config, flattened."""
    return _flatten(dataclasses.asdict(config_class()))


def _coerce(key: str, value: Any, default: Any, where: str, kind: str) -> Any:
    """`value` in the type of the default's value (an int is a valid float); UsageError otherwise."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = True
    if not ok:
        raise UsageError(f"{where}: {kind} config key {key} takes {'true/false' if isinstance(default, bool) else type(default).__name__} "
                         f"values (default {json.dumps(default)}), got {json.dumps(value)}")
    return value


def _check(values: Mapping[str, Any], defaults: Mapping[str, Any], where: str, kind: str) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            hint = f" (did you mean {close[0]}?)" if close else f" (keys: {', '.join(defaults)})"
            raise UsageError(f"{where}: {kind} configs have no key {key}{hint}")
        out[key] = _coerce(key, value, defaults[key], where, kind)
    return out


def _build(config_class, flat: Mapping[str, Any], where: str, kind: str):
    try:
        return config_class(**_nest(flat))
    except (TypeError, ValueError) as e:
        raise UsageError(f"{where}: invalid {kind} config: {e}") from None


# -- sources -------------------------------------------------------------------------------------------------

def read_config_file(path, kind: str | None = None) -> tuple[dict[str, Any], str | None]:
    """(config values, kind or None) of a model directory, a model.json or a JSON object of config values."""
    from jtts.checkpoint import MODEL_FILE, read_meta

    p = Path(path)
    if p.is_dir():
        meta = read_meta(p, kind)
        return meta["config"], meta["kind"]
    if not p.is_file():
        raise UsageError(f"--config {path}: no such file or model directory (or one of {', '.join(PRESETS)})")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UsageError(f"{p}: not JSON ({e.msg} at line {e.lineno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{p}: cannot read ({e})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{p}: expected a JSON object of config values")
    if p.name == MODEL_FILE or ("kind" in data and isinstance(data.get("config"), dict)):
        if kind is not None and data.get("kind") != kind:
            raise UsageError(f"{p}: holds a {data.get('kind')} config, not {kind}")
        return data["config"], data.get("kind")
    return data, None


def resolve(kind: str, config: str | None = None, sets: Sequence[str] = (), init_from=None):
    """The config object of a `jtts train` run (see the module docstring); nothing is built or loaded."""
    from jtts import models

    entry = models.get(kind)
    cls = entry.config_class
    defaults = _defaults(cls)
    if config == "small":
        base, where = dict(entry.task_class().small), "--config small"
    elif config in (None, "full"):
        base, where = {}, "--config full"
        if config is None and init_from is not None:
            base, where = read_config_file(init_from, kind)[0], f"{init_from} (--init-from)"
    else:
        base, where = read_config_file(config, kind)[0], str(config)
    flat = _flatten(dataclasses.asdict(_build(cls, _check(_flatten(base), defaults, where, kind), where, kind)))
    edits = parse_sets(sets)
    for key, value, word in edits:
        flat[key] = _check({key: value}, defaults, word, kind)[key]
    return _build(cls, flat, " ".join(w for _, _, w in edits) or where, kind)


def frontend(config: str | None = None, sets: Sequence[str] = ()) -> AudioConfig:
    """`jtts preprocess`'s front end: --config's (a model directory or config JSON; the presets and none are DLE's)
    with --set audio.KEY=VALUE edits."""
    from jtts import models

    audio: Any = None
    if config not in (None, *PRESETS):
        values, kind = read_config_file(config)
        if kind is not None:
            audio = _build(models.get(kind).config_class, _flatten(values), str(config), kind).audio
        else:
            audio = _build_audio(values, str(config))
    flat = _flatten({"audio": dataclasses.asdict(AudioConfig.of(audio))})
    defaults = {k: v for k, v in _flatten({"audio": dataclasses.asdict(AudioConfig())}).items()}
    for key, value, word in parse_sets(sets):
        if not key.startswith("audio."):
            raise UsageError(f"{word}: jtts preprocess takes only the audio front end's keys (audio.sample_rate, "
                             f"audio.fmax, ...)")
        flat[key] = _check({key: value}, defaults, word, "audio")[key]
    try:
        return AudioConfig(**_nest(flat)["audio"])
    except ValueError as e:
        raise UsageError(f"{' '.join(sets)}: {e}") from None


def _build_audio(values: Mapping[str, Any], where: str) -> AudioConfig:
    """The front end of a JSON config of no known kind: its "audio", with n_mels its n_mel_channels if given."""
    extra = {"n_mels": values["n_mel_channels"]} if isinstance(values.get("n_mel_channels"), int) else {}
    try:
        return AudioConfig.of(values.get("audio"), **extra)
    except (TypeError, ValueError) as e:
        raise UsageError(f"{where}: {e}") from None
