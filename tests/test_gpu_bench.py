"""The GPU benchmark's dry run: `benchmarks/gpu.sh --dry-run` takes the path of the one device call (staged jtts,
weights -> DLE checkpoint -> convert -> every timing -> parity -> an XLA-flags child -> report) on this CPU with
tiny models, so that a typo or a missing import cannot cost a lent GPU's minutes. No figure is judged here: on a
CPU with tiny models they mean nothing; what is checked is that every one of them was measured and reported."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DTYPES = ("float32", "bfloat16")
SECTIONS = ("## Targets", "## Machine", "## Host round trips in Tacotron2.infer", "## End to end",
            "## Tacotron 2 decoder", "## WaveGlow-256", "## Parity on this device", "## XLA flag variants")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu")
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--dry-run", "--out", str(out / "gpu.md"),
                        "--json", str(out / "gpu.json")], env=dict(os.environ, PYTHON=sys.executable),
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return (out / "gpu.md").read_text(), json.loads((out / "gpu.json").read_text())


def _section(md: str, heading: str) -> str:
    return md.split(heading, 1)[1].split("\n## ", 1)[0]


def _finite(figures: dict, key: str) -> float:
    v = figures[key]
    assert isinstance(v, (int, float)) and math.isfinite(v), (key, v)
    return v


def test_every_section_ran(dry_run):
    md, data = dry_run
    assert data["problems"] == []
    for heading in SECTIONS:
        assert heading in md, heading
        body = _section(md, heading)
        assert "Skipped" not in body and "Failed" not in body, (heading, body[:500])
    # gpu.sh stages a copy of jtts (jtts.convert mapped from convert/) rather than relying on an install
    assert "jtts imported from" in md and "/jtts-gpu." in _section(md, "## Machine")


def test_every_timing_was_measured_and_reported(dry_run):
    md, data = dry_run
    fig = data["figures"]
    for dtype in DTYPES:
        for who in ("jtts", "reference"):
            assert _finite(fig, f"e2e.{dtype}.{who}_ms") > 0
            assert _finite(fig, f"decoder.{dtype}.{who}_call_ms") > 0
            _finite(fig, f"decoder.{dtype}.{who}_step_ms")  # a slope: noise can make it negative on a busy CPU
            for b in (1, 4):
                assert _finite(fig, f"waveglow.{dtype}.b{b}.{who}_msps") > 0
        _finite(fig, f"e2e.{dtype}.jtts_compile_s")
        _finite(fig, f"decoder.{dtype}.jtts_compile_s")
        assert _finite(fig, f"e2e.{dtype}.speedup") > 0
        for heading in ("## End to end", "## Tacotron 2 decoder", "## WaveGlow-256"):
            assert f"| {dtype} |" in _section(md, heading), (heading, dtype)
    _finite(fig, "decoder.bfloat16.jtts_no_early_stop_step_ms")
    variant = [k for k in fig if k.startswith("variants.") and k.endswith(".e2e_ms")]
    assert len(variant) == 1 and _finite(fig, variant[0]) > 0
    targets = _section(md, "## Targets")
    assert targets.count("not evaluated (dry run") == 4 and "not measured" not in targets


def test_parity_and_host_round_trips(dry_run):
    md, data = dry_run
    fig = data["figures"]
    assert fig["parity.rows"] == 14 and fig["parity.failed"] == 0
    assert "**NO**" not in _section(md, "## Parity on this device")
    # one lax.while_loop for the whole decoder and nothing that calls back to the host
    assert fig["host_sync.while_loops"] == 1 and fig["host_sync.callbacks"] == 0
    # XLA knows the decoder's trip count only without early stopping
    assert fig["host_sync.trip_count_known_no_early_stop"] is True
    assert fig["host_sync.trip_count_known_early_stop"] is False
    # the bfloat16 casts of the decoder's float32 weights are hoisted out of the loop, not redone every step
    assert fig["host_sync.weight_casts_in_loop"] == 0


def test_what_the_benchmark_imports_is_on_the_gpu_image_or_carried(dry_run):
    _, data = dry_run

    def words(name, keep=lambda line: True):
        lines = (ROOT / "benchmarks" / name).read_text().splitlines()
        return {w.lower() for ln in lines if keep(ln) for w in ln.split("#")[0].split()}

    image = words("gpu_image.txt")
    carried = words("gpu_wheels.txt", keep=lambda ln: not ln.startswith("dle:"))
    missing = set(data["imported"]) - image - carried
    assert not missing, f"imported but neither on the GPU image nor in benchmarks/gpu_wheels.txt: {sorted(missing)}"
