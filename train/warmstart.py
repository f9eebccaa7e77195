"""Warm start (`jtts train KIND --init-from MODEL --ignore-layers PATTERN ...`): a model of the run's config gets
every tensor of a trained model whose name and shape match, and keeps its fresh initialisation where a pattern
names the tensor (the embedding when the symbol set grows, say).

Names are jtts' "."-joined parameter names (`embedding.embedding`, `decoder.attention_rnn.ih.kernel`), BatchNorm
statistics included (`jtts.checkpoint.flat_state(model)` lists them). A PATTERN is a glob (`*` crosses dots) that names a tensor
or a whole module: `embedding`, `decoder.attention*`, `postnet.convs.4`. DLE's PyTorch names
(`embedding.weight`, its `--ignore-layers` default) are accepted too, translated by the kind's convert table.

A symbol table extended at its end (a Tacotron 2 config with more `extra_symbols`, the old ones first) grows the
embedding instead: its trained rows are loaded and only the new symbols' rows start fresh, so the symbols the
model knows keep what it learnt of them (DLE's way, `--ignore-layers embedding`, re-learns every row).

Anything that does not fit and was not named -- a tensor whose shape differs, one the trained model lacks, one
the new model has no place for -- is an error listing every such tensor, before any training: a silent partial
load is the classic fine-tuning bug.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Mapping, Sequence

import numpy as np

from jtts.errors import JttsError, UsageError


@dataclass
class WarmStart:
    loaded: list[str]          # tensors copied from the trained model (grown ones included)
    reinitialised: list[str]   # tensors the patterns named: fresh initialisation kept
    grown: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (rows loaded, rows in all)

    def summary(self, source) -> str:
        kept = f"; re-initialised: {', '.join(self.reinitialised)}" if self.reinitialised else ""
        grew = "".join(f"; {n}: {a} of {b} rows loaded, the rest fresh" for n, (a, b) in self.grown.items())
        return f"warm start from {source}: {len(self.loaded)} tensors loaded{grew}{kept}"


def matches(name: str, pattern: str) -> bool:
    """Whether `pattern` names the tensor `name`: a glob of the name, or of a module that holds it."""
    return fnmatchcase(name, pattern) or fnmatchcase(name, pattern + ".*")


def named(names: Sequence[str], patterns: Sequence[str], torch_names: Mapping[str, str] | None = None) -> set[str]:
    """The names the patterns select. A pattern that selects no jtts name is tried on DLE's PyTorch names
    (`torch_names`: torch name -> jtts name); one that selects nothing either way is a UsageError (a typo would
    otherwise re-initialise nothing and go unnoticed)."""
    chosen: set[str] = set()
    for p in patterns:
        hit = {n for n in names if matches(n, p)}
        if not hit and torch_names:
            hit = {j for t, j in torch_names.items() if matches(t, p) and j in names}
        if not hit:
            shown = ", ".join(sorted({n.split(".")[0] for n in names}))
            raise UsageError(f"--ignore-layers {p}: names no tensor of the model (top-level modules: {shown}; "
                             f"e.g. embedding.embedding, or DLE's embedding.weight)")
        chosen |= hit
    return chosen


def _shape(x) -> tuple[int, ...]:
    return tuple(int(d) for d in np.shape(x))


def mismatches(model_shapes: Mapping[str, tuple], params: Mapping[str, np.ndarray], ignored: set[str],
               source) -> list[str]:
    """Every tensor that neither fits nor is ignored, as (name, trained shape, new shape), None for a side that
    lacks it."""
    out = []
    for name, shape in model_shapes.items():
        if name in ignored:
            continue
        if name not in params:
            out.append((name, None, shape))
        elif _shape(params[name]) != shape:
            out.append((name, _shape(params[name]), shape))
    out += [(name, _shape(v), None) for name, v in params.items() if name not in model_shapes and name not in ignored]
    return out


def describe(bad: Sequence[tuple]) -> str:
    """Short phrases "NAME (trained shape) vs (new shape)", "-" for a side that lacks the tensor; tensors of one
    module with the same shapes share a phrase: "postnet.convs.1.bn.{bias,mean,scale,var} (32,) vs (80,)"."""
    groups: dict[tuple, list[str]] = {}
    for name, old, new in bad:
        parent, _, leaf = name.rpartition(".")
        groups.setdefault((parent, old, new), []).append(leaf)
    show = lambda s: "-" if s is None else str(s)  # noqa: E731
    phrases = []
    for (parent, old, new), leaves in groups.items():
        leaf = leaves[0] if len(leaves) == 1 else "{" + ",".join(sorted(leaves)) + "}"
        phrases.append(f"{parent + '.' if parent else ''}{leaf} {show(old)} vs {show(new)}")
    return "; ".join(phrases)


def _grows(old: tuple[int, ...], new: tuple[int, ...]) -> bool:
    return len(old) == len(new) >= 1 and old[1:] == new[1:] and old[0] <= new[0]


def warm_start(model, params: Mapping[str, np.ndarray], ignore: Sequence[str] = (), *, source="the trained model",
               torch_names: Mapping[str, str] | None = None, grow: Sequence[str] = ()) -> WarmStart:
    """Copies `params` ({name: array}, e.g. `jtts.checkpoint.load_model`'s) into `model` (an nnx model freshly
    built from the run's config; abstract is fine when `ignore` and `grow` are empty) where name and shape match,
    keeping the model's own values for the tensors `ignore` names. A tensor `grow` names (and `ignore` does not)
    may have more rows than the trained one: those rows are loaded, the others keep the model's values.
    JttsError listing every other mismatch."""
    import jax.numpy as jnp

    from jtts.checkpoint import flat_state

    variables = flat_state(model)
    shapes = {k: tuple(int(d) for d in v.shape) for k, v in variables.items()}
    ignored = named(sorted(set(shapes) | set(params)), ignore, torch_names) if ignore else set()
    growing = {n for n in grow if n in shapes and n in params and n not in ignored
               and _grows(_shape(params[n]), shapes[n])}
    bad = mismatches(shapes, params, ignored | growing, source)
    if bad:
        raise JttsError(f"cannot warm-start from {source}: {len(bad)} tensor(s) do not fit, name them with "
                        f"--ignore-layers to initialise them afresh (trained vs new shape): {describe(bad)}")
    loaded, grown = [], {}
    for name, var in variables.items():
        if name in growing:
            rows = _shape(params[name])[0]
            var.set_value(var.get_value().at[:rows].set(jnp.asarray(params[name], dtype=var.dtype)))
            grown[name] = (rows, shapes[name][0])
            loaded.append(name)
        elif name not in ignored:
            var.set_value(jnp.asarray(params[name], dtype=var.dtype))
            loaded.append(name)
    return WarmStart(loaded, sorted(n for n in ignored if n in shapes), grown)
