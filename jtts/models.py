"""The model registry: one entry per model kind, the only place that maps a kind's name to its code.

    kind        model class            config class              PyTorch name table        training task
    tacotron2   jtts.tacotron2         Tacotron2Config           jtts.convert.tacotron2    jtts.train.tasks
    waveglow    jtts.waveglow          WaveGlowConfig            jtts.convert.waveglow     jtts.train.tasks

Entries name their code as "module:attribute" strings, resolved on first use, so that reading the registry
(for `jtts --help`, say) imports neither JAX nor torch. Adding a model kind is one module per side (model,
name table, optionally a training task) plus one line in `REGISTRY`; see docs/extending.md.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any

from jtts.errors import JttsError, ModelDirError


def _resolve(ref: str):
    module, _, attr = ref.partition(":")
    mod = importlib.import_module(module)
    return getattr(mod, attr) if attr else mod


@dataclass(frozen=True)
class ModelKind:
    name: str
    model: str   # "module:Class": an nnx.Module with (config, *, dtype, rngs), `config` and `dtype` attributes
    config: str  # "module:Class": a frozen dataclass with from_dle(dict) and to_dle()
    names: str   # module with table(cfg), infer_config(state, dle_config, source), SIGNATURES, optional
    #              prepare_state_dict(state) and is_buffer(key): the PyTorch side, used both ways by jtts.convert
    task: str | None = None  # "module:Class" of its jtts.train task (batch layout, loss, throughput unit)
    summary: str = ""

    @property
    def model_class(self):
        return _resolve(self.model)

    @property
    def config_class(self):
        return _resolve(self.config)

    @property
    def names_module(self):
        return _resolve(self.names)

    def task_class(self):
        if self.task is None:
            raise JttsError(f"{self.name} models cannot be trained by jtts")
        return _resolve(self.task)

    def make_config(self, values: dict[str, Any] | None = None):
        return self.config_class(**(values or {}))


REGISTRY: dict[str, ModelKind] = {k.name: k for k in (
    ModelKind("tacotron2", "jtts.tacotron2:Tacotron2", "jtts.tacotron2:Tacotron2Config", "jtts.convert.tacotron2",
              "jtts.train.tasks:Tacotron2Task", "text -> mel spectrogram"),
    ModelKind("waveglow", "jtts.waveglow:WaveGlow", "jtts.waveglow:WaveGlowConfig", "jtts.convert.waveglow",
              "jtts.train.tasks:WaveGlowTask", "mel spectrogram -> audio"),
)}
KINDS: tuple[str, ...] = tuple(REGISTRY)


def get(kind: str) -> ModelKind:
    try:
        return REGISTRY[kind]
    except KeyError:
        raise JttsError(f"unknown model kind {kind!r} (expected one of {', '.join(KINDS)})") from None


def kind_of(model) -> str:
    """The registry name of a model instance (or class)."""
    cls = model if isinstance(model, type) else type(model)
    for name, entry in REGISTRY.items():
        if f"{cls.__module__}:{cls.__qualname__}" == entry.model:
            return name
    raise TypeError(f"not a registered jtts model: {cls.__name__}")


def build(kind: str, config=None, *, dtype=None, seed: int = 0, abstract: bool = False):
    """A model of `kind` with fresh weights (config: a config object, a dict of overrides, or None)."""
    import jax.numpy as jnp
    from flax import nnx

    entry = get(kind)
    cfg = config if isinstance(config, entry.config_class) else entry.make_config(config)
    cls = entry.model_class
    make = lambda: cls(cfg, dtype=jnp.float32 if dtype is None else dtype, rngs=nnx.Rngs(seed))  # noqa: E731
    return nnx.eval_shape(make) if abstract else make()


def load(path: str | os.PathLike, *, kind: str | None = None, dtype=None, inference: bool = False):
    """The model in a `jtts convert` / `jtts train` model directory (no torch needed); `kind` refuses others.

    inference=True asks for what synthesises rather than the trainable module, where the model class has a
    cheaper way to it than building the module first (`inference_from_flat(config, reader, dtype)`): WaveGlow
    returns its folded `WaveGlowInference` at a third of the peak memory. Other kinds return the module."""
    from jtts.checkpoint import assign, check_params, open_model

    meta, reader = open_model(path, kind)
    entry = get(meta["kind"])
    try:
        cfg = entry.make_config(meta["config"])
    except (TypeError, ValueError) as e:
        raise ModelDirError(f"{path}: model.json holds an invalid {entry.name} config ({e})") from None
    model = build(entry.name, cfg, dtype=dtype, abstract=True)
    check_params(model, reader.shapes)
    fold = getattr(entry.model_class, "inference_from_flat", None)
    if inference and fold is not None:
        return fold(cfg, reader, model.dtype)
    assign(model, reader.read_all())
    return model


class FromCheckpoint:
    """Mixin for registered models: `Model.from_checkpoint(path, dtype=...)`, i.e. `load` refusing other kinds."""

    @classmethod
    def from_checkpoint(cls, path, *, dtype=None):
        return load(path, kind=kind_of(cls), dtype=dtype)
