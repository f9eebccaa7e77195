"""Reading Tacotron2.infer's decoder program for benchmarks/gpu_bench.py: what it does between steps, without a
profiler (the lent GPU's runtime may not have one, and these answers hold on the CPU too)."""
from __future__ import annotations

import os
import re
import sys
import tempfile


def decoder_program(taco, tok, ln, steps, early):
    """(the jitted decoder program Tacotron2.infer runs, the (args, kwargs) it passes), captured from a real call
    so that this follows infer whatever that program's signature."""
    import jax

    import jtts.tacotron2 as t2

    real, calls = t2._infer_decoder, []

    def spy(*a, **k):
        calls.append((a, k))
        return real(*a, **k)
    t2._infer_decoder = spy
    try:
        taco.infer(tok, ln, key=jax.random.key(0), max_decoder_steps=steps, early_stopping=early)
    finally:
        t2._infer_decoder = real
    return real, calls[0]


def count_primitives(jaxpr, counts=None) -> dict:
    from jax.extend import core

    counts = {} if counts is None else counts
    for eqn in jaxpr.eqns:
        counts[eqn.primitive.name] = counts.get(eqn.primitive.name, 0) + 1
        for p in eqn.params.values():
            for sub in p if isinstance(p, (list, tuple)) else (p,):
                if isinstance(sub, core.ClosedJaxpr):
                    count_primitives(sub.jaxpr, counts)
                elif isinstance(sub, core.Jaxpr):
                    count_primitives(sub, counts)
    return counts


def trip_count_known(hlo: str, steps: int) -> bool:
    """Is the decoder loop's trip count known, i.e. does a loop carry known_trip_count == steps? The other loops
    (the encoder LSTMs over 128 symbols, the random-bit rounds) have known counts that differ from `steps`."""
    whiles = [ln for ln in hlo.splitlines() if " while(" in ln]
    return any(f'"n":"{steps}"' in ln for ln in whiles)


def casts_in_open_loop(hlo: str) -> int:
    """Converts to bf16/f16 of arrays of 2+ dimensions whose first is > 1, in computations reachable from the body
    of a while loop without a known trip count (the decoder with early stopping). Activations lead with the batch
    (1 here), so what this counts are weights that loop-invariant code motion failed to hoist."""
    comps, cur = {}, None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) \(", line)
        if head and line.rstrip().endswith("{"):
            cur = comps.setdefault(head.group(1), [])
        elif cur is not None:
            cur.append(line)
    callees = {c: re.findall(r"(?:calls|body|condition|to_apply|branch_computations)=\{?%?([\w.\-]+)", "\n".join(b))
               for c, b in comps.items()}
    todo = [re.search(r"body=%?([\w.\-]+)", ln).group(1) for b in comps.values() for ln in b
            if " while(" in ln and "known_trip_count" not in ln]
    seen = set()
    while todo:
        c = todo.pop()
        if c not in seen and c in comps:
            seen.add(c)
            todo += callees[c]
    pattern = re.compile(r"(?:bf16|f16)\[(?!1[,\]])\d+(?:,\d+)+\][^ ]* convert\(")
    return sum(bool(pattern.search(ln)) for c in seen for ln in comps[c])


def d2h_transfers(fn) -> tuple:
    """(device-to-host transfers during fn(), the first one's description). "disallow" names the first; "log"
    counts them all (the guard logs through the C++ logger to file descriptor 2, captured here)."""
    import jax

    try:
        with jax.transfer_guard_device_to_host("disallow"):
            fn()
        return 0, ""
    except Exception as e:  # noqa: BLE001  the guard raises its own error type
        first = str(e).splitlines()[0][:200]
    with tempfile.TemporaryFile() as f:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
        try:
            with jax.transfer_guard_device_to_host("log"):
                fn()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        n = sum("device-to-host" in ln.lower() for ln in f.read().decode(errors="replace").splitlines())
    return (n if n else None), first
