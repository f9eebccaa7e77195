"""One-call GPU benchmark: jtts against the PyTorch reference (and DLE) on the same card and the same weights.

    benchmarks/gpu.sh                                            # on the lent GPU machine: see docs/gpu.md
    python benchmarks/gpu_bench.py --dry-run --out /tmp/gpu.md   # here or in CI: CPU, tiny models, ~1 minute

Sections, in the order they run; each one rewrites the report, so a run stopped by its time limit still leaves
everything measured so far, and a section that does not fit the time left in --budget-s is skipped and says so:
  machine       versions, device, card state
  host_sync     does Tacotron2.infer go back to the host per decoder step? (jaxpr, optimized HLO, transfer guard)
  e2e           128-character sentence -> audio, denoiser included, batch 1: latency, real-time factor, compile
  decoder       Tacotron 2 ms per decoder step (slope between two step counts), early stopping on and off
  waveglow      WaveGlow-256 samples/s at batch 1 and 4
  parity        benchmarks/parity.py's stage-by-stage errors with jtts on this device, against bounds
  variants      the decoder and end to end again in child processes under other XLA_FLAGS (command buffers)
then the targets of issue 13. Exit status: 0, or 1 when a parity bound failed or a section raised (the report
says which), 2 for a usage error (e.g. no GPU without --dry-run).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

import _gpu_inspect as probe  # noqa: E402
import _gpu_timing as timing  # noqa: E402
import bench  # noqa: E402

SECTIONS = ("machine", "host_sync", "e2e", "decoder", "waveglow", "parity", "variants")
NEED_S = {"host_sync": 30, "e2e": 60, "decoder": 90, "waveglow": 60, "parity": 120, "variants": 100}
TARGETS = (  # figure, comparison, goal, what
    ("e2e.bfloat16.jtts_ms", "<=", 100.0, "end to end, bfloat16, batch 1, 128 characters (ms)"),
    ("e2e.bfloat16.speedup", ">=", 5.0, "end-to-end speed-up over PyTorch in fp16 (x)"),
    ("decoder.bfloat16.jtts_step_ms", "<=", 0.15, "Tacotron 2 decoder step, bfloat16, batch 1 (ms)"),
    ("waveglow.bfloat16.b1.jtts_msps", ">=", 20.0, "WaveGlow-256, bfloat16, batch 1 (M samples/s)"),
)
VARIANTS = {  # name -> XLA_FLAGS added for a child process
    "command buffers off": "--xla_gpu_enable_command_buffer=",
    "command buffers incl. WHILE, CONDITIONAL": "--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,"
                                                "CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL --xla_gpu_graph_min_graph_size=1",
}
# jtts float32 against the reference: at most 4.7e-6 on the CPU (docs/parity-report.md); a GPU's other reduction
# orders may cost a few ulps more, TF32 matmuls ~1e-3. Low precision against float32: the test suite's bounds.
PARITY_F32 = 1e-4


class Sizes:
    def __init__(self, dry: bool):
        from reference.tacotron2_torch import tacotron2_config, tacotron2_small_config
        from reference.waveglow_torch import waveglow_config, waveglow_small_config

        self.taco = tacotron2_small_config() if dry else tacotron2_config()
        # dry run: WaveGlow's structure (12 flows, early outputs) with the fewest WN ops, which set its CPU time
        self.wg = waveglow_small_config(WN_config=dict(n_layers=2, n_channels=16, kernel_size=3)) if dry \
            else waveglow_config(256)
        # decoder step counts: the per-step figure is the slope between them; the larger is the end-to-end
        # length (600 frames ~ 7 s of audio, what a 128-character sentence takes)
        self.steps = (16, 88) if dry else (200, 600)
        # WaveGlow's length = the end-to-end length, so both use one compiled program; in the dry run that is
        # also the denoiser's 88-frame bias run, which saves the dry run two of its slowest compilations
        self.wg_frames = self.steps[1]
        self.repeats = 1 if dry else 5


class Run:
    def __init__(self, args):
        self.args, self.t0 = args, time.perf_counter()
        self.sizes = Sizes(args.dry_run)
        self.fig: dict = {}
        self.parts: dict[str, list[str]] = {}
        self.problems: list[str] = []
        self.models = self.work = self.parity_child = None

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.t0)

    def write(self):
        text = render(self)
        for path in self.args.out:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
        if self.args.json:
            Path(self.args.json).write_text(json.dumps(
                {"figures": self.fig, "problems": self.problems, "imported": imported_distributions()}, indent=1))


# -- sections ---------------------------------------------------------------------------------------------------

def machine(run: Run) -> list[str]:
    import jax
    import torch

    dev = jax.devices()[0]
    run.fig["machine.platform"] = dev.platform
    tdev = run.models.device
    versions = {m: _version(m) for m in ("jax", "jaxlib", "flax", "orbax-checkpoint", "numpy", "torch")}
    lines = [f"* JAX devices: {len(jax.devices())} x {dev.device_kind} ({dev.platform}); torch on {tdev}"
             + (f" ({torch.cuda.get_device_name()})" if tdev.type == "cuda" else ""),
             "* " + ", ".join(f"{k} {v}" for k, v in versions.items())
             + f"; Python {platform.python_version()}; {os.cpu_count()} CPU cores",
             f"* jtts imported from {Path(sys.modules['jtts'].__file__).parent}",
             f"* XLA_FLAGS: `{os.environ.get('XLA_FLAGS', '')}`; XLA_PYTHON_CLIENT_MEM_FRACTION: "
             f"{os.environ.get('XLA_PYTHON_CLIENT_MEM_FRACTION', 'default')}"]
    smi = _nvidia_smi()
    if smi:
        lines.append(f"* nvidia-smi (name, driver, SM clock, max SM clock, temperature, power): {smi}")
    t = run.models.timings
    lines.append(f"* weights drawn in {t['weights_s']:.1f} s, written as DLE checkpoints and converted in "
                 f"{t['convert_s']:.1f} s, loaded in {t['load_s']:.1f} s; denoisers set up (compiles WaveGlow "
                 f"once per dtype) in {t['denoiser_setup_s']:.1f} s")
    return lines


def host_sync(run: Run) -> list[str]:
    """What Tacotron2.infer does between decoder steps, read off the program rather than timed."""
    import jax

    dtype = run.args.dtypes[-1]  # the low-precision one by default, for the weight casts below
    taco = run.models.taco[dtype]
    steps = run.sizes.steps[0]
    tok, ln = np.ones((1, 128), np.int32), np.array([128], np.int32)
    prims, callbacks, loops, casts = {}, 0, {}, 0
    for early in (True, False):
        program, (a, k) = probe.decoder_program(taco, tok, ln, steps, early)
        if early:
            prims = probe.count_primitives(program.trace(*a, **k).jaxpr.jaxpr)
            callbacks = sum(v for name, v in prims.items() if "callback" in name or name in ("infeed", "outfeed"))
        hlo = program.lower(*a, **k).compile().as_text()
        loops[early] = probe.trip_count_known(hlo, steps)
        callbacks += sum(hlo.count(s) for s in ("callback", "outfeed(", "infeed(", " send(", " recv("))
        if early:
            casts = probe.casts_in_open_loop(hlo)
    n_d2h, first = probe.d2h_transfers(lambda: taco.infer(tok, ln, key=jax.random.key(0), max_decoder_steps=steps))
    run.fig.update({"host_sync.while_loops": prims.get("while", 0), "host_sync.callbacks": callbacks,
                    "host_sync.trip_count_known_early_stop": loops[True], "host_sync.trip_count_known_no_early_stop":
                    loops[False], "host_sync.d2h_per_infer": n_d2h, "host_sync.weight_casts_in_loop": casts})
    platform_ = jax.devices()[0].platform
    return [f"* jaxpr of the jitted decoder (`jtts.tacotron2._infer_decoder`): {prims.get('while', 0)} `while` "
            f"(the decoder loop), {prims.get('scan', 0)} `scan` (the encoder's LSTMs); host callbacks, infeed, "
            f"outfeed, send or recv in the jaxpr and the optimized HLO: {callbacks}",
            f"* optimized HLO on {platform_}: decoder loop trip count known with early stopping off: "
            f"{loops[False]}; with early stopping on: {loops[True]}. An unknown trip count means XLA evaluates "
            "`any(not finished)` on the device each step and the runtime reads that predicate back before the "
            "next iteration (on a GPU a small device-to-host copy and a stream sync per step), unless the loop "
            "runs inside a CUDA graph with conditional nodes (see the variants section).",
            f"* {dtype}: matrices converted to a low-precision dtype inside the decoder loop (if not 0, every step "
            f"re-reads float32 weights and casts them): {casts}",
            f"* device-to-host transfers per `Tacotron2.infer` call (transfer guard): {_fmt_count(n_d2h)}"
            + (f"; the first: `{first}`" if first else "")
            + (" (on the CPU, arrays already live in host memory and the guard sees none)"
               if platform_ == "cpu" else "")]


def e2e(run: Run) -> list[str]:
    rows = ["| dtype | jtts ms | " + " | ".join(f"{k} ms" for k in _others(run)) + " | speed-up | audio s | "
            "jtts real-time factor | jtts compile s |", "|---" * (6 + len(_others(run))) + "|"]
    for dtype in run.args.dtypes:
        r = timing.end_to_end(run.models, dtype, run.sizes.repeats)
        base = r.get("DLE_ms", r.get("reference_ms"))
        r["speedup"] = base / r["jtts_ms"] if base else float("nan")
        _store(run, f"e2e.{dtype}", r)
        rows.append(f"| {dtype} | {r['jtts_ms']:.1f} | " + " | ".join(f"{r[k + '_ms']:.1f}" for k in _others(run))
                    + f" | {r['speedup']:.2f}x | {r['audio_s']:.2f} | {r['audio_s'] * 1e3 / r['jtts_ms']:.1f} | "
                    f"{r['jtts_compile_s']:.1f} |")
    return [f"Text -> ids -> Tacotron 2 ({run.sizes.steps[1]} frames) -> WaveGlow-256 (sigma 0.9) -> denoiser "
            "(0.01), batch 1, whole call incl. the text front end and the final sync; median of "
            f"{run.sizes.repeats}. Speed-up is over {_baseline(run)}. Compile = first (cold) call minus the median.",
            ""] + rows


def decoder(run: Run) -> list[str]:
    s1, s2 = run.sizes.steps
    head = ["| dtype | framework | ms per step | ms per call at " + f"{s2} steps | compile s |", "|---|---|---|---|---|"]
    for dtype in run.args.dtypes:
        r = timing.decoder(run.models, dtype, run.sizes.repeats, early_off=dtype != "float32")
        _store(run, f"decoder.{dtype}", r)
        for who in ["jtts", "jtts_no_early_stop"] + list(_others(run)):
            if f"{who}_step_ms" in r:
                comp = f"{r[who + '_compile_s']:.1f}" if who + "_compile_s" in r else ""
                head.append(f"| {dtype} | {who.replace('_', ' ')} | {r[who + '_step_ms']:.3f} | "
                            f"{r[who + '_call_ms']:.1f} | {comp} |")
    return [f"Batch 1, 128 random symbols, prenet dropout on. ms per step = (t({s2}) - t({s1})) / {s2 - s1}: "
            "encoder, postnet and dispatch drop out. `jtts no early stop` runs a known trip count.", ""] + head


def waveglow(run: Run) -> list[str]:
    rows = ["| dtype | batch | jtts | " + " | ".join(_others(run)) + " | jtts compile s |",
            "|---" * (4 + len(_others(run))) + "|"]
    for dtype in run.args.dtypes:
        for b in (1, 4):
            r = timing.waveglow(run.models, dtype, b, run.sizes.repeats)
            _store(run, f"waveglow.{dtype}.b{b}", r)
            rows.append(f"| {dtype} | {b} | {r['jtts_msps']:.2f} | "
                        + " | ".join(f"{r[k + '_msps']:.2f}" for k in _others(run)) + f" | {r['jtts_compile_s']:.1f} |")
    return [f"Million audio samples per second, {run.sizes.wg_frames} mel frames per utterance "
            f"({run.sizes.wg_frames * timing.HOP} samples), sigma 0.9.", ""] + rows


def parity(run: Run) -> list[str]:
    """benchmarks/parity.py's rows: jtts on this device against the reference on the CPU in float32."""
    if run.parity_child is not None:  # dry run: computed beside the other sections, see main
        out, _ = run.parity_child.communicate()
        if run.parity_child.returncode != 0:
            raise RuntimeError(f"parity child exited {run.parity_child.returncode}: {out.strip()[-300:]}")
        rows = [tuple(r) for r in json.loads(out.strip().splitlines()[-1])]
    else:
        rows = parity_rows(run.args.dry_run)
    from test_precision import TACO_U, WG_U, U  # bounds in units of the dtype's roundoff u (2^-8, 2^-11)

    lines = ["| stage | jtts f32 vs reference | bf16 vs f32 | fp16 vs f32 | within bounds |", "|---|---|---|---|---|"]
    failed = 0
    for name, f32, bf16, fp16 in rows:
        n_u = TACO_U if name.startswith("Tacotron 2") else WG_U
        ok = f32 <= PARITY_F32 and bf16 <= n_u * U["bfloat16"] and fp16 <= n_u * U["float16"]  # NaN fails
        failed += not ok
        lines.append(f"| {name} | {f32:.1e} | {bf16:.1e} | {fp16:.1e} | {'yes' if ok else '**NO**'} |")
    run.fig.update({"parity.rows": len(rows), "parity.failed": failed,
                    "parity.worst_f32": max(r[1] for r in rows), "parity.worst_bf16": max(r[2] for r in rows)})
    if failed:
        run.problems.append(f"parity: {failed} of {len(rows)} stages outside their bounds")
    return [f"Relative L2 error ||a - b|| / ||b||. Bounds: float32 <= {PARITY_F32:g}; bf16 and fp16 against "
            f"float32 <= {TACO_U} u (Tacotron 2) and {WG_U} u (WaveGlow), u = 2^-8 / 2^-11, tests/test_precision.py's "
            "bounds. Weights: parity.py's own (other seeds, gate calibrated to stop).", ""] + lines


def variants(run: Run) -> list[str]:
    dtype = "bfloat16" if "bfloat16" in run.args.dtypes else run.args.dtypes[-1]
    rows = [f"| XLA_FLAGS added | decoder ms per step | same, early stopping off | end to end ms ({dtype}) |",
            "|---|---|---|---|"]
    todo = dict(VARIANTS)
    if run.args.dry_run:  # one child parses every variant's flags (the last value of a repeated flag wins)
        todo = {"all variants' flags at once (dry run)": " ".join(VARIANTS.values())}
    for name, flags in todo.items():
        if run.left() < NEED_S["variants"] / 2:
            rows.append(f"| {name}: `{flags}` | skipped: out of time budget | | |")
            continue
        r = _child(run, flags, dtype)
        if "error" in r:
            rows.append(f"| {name}: `{flags}` | failed: {r['error']} | | |")
            run.problems.append(f"variant {name!r} failed")
            continue
        _store(run, f"variants.{name}", r)
        rows.append(f"| {name}: `{flags}` | {r['jtts_step_ms']:.3f} | {r['jtts_no_early_stop_step_ms']:.3f} | "
                    f"{r['e2e_ms']:.1f} |")
    return [f"jtts alone in a child process per row ({dtype}, same converted weights); compare with the decoder "
            "and end-to-end sections above, which ran under the XLA_FLAGS of the machine section.", ""] + rows


def targets(run: Run) -> list[str]:
    lines = ["| target | goal | measured | met |", "|---|---|---|---|"]
    for key, op, goal, what in TARGETS:
        v = run.fig.get(key)
        if v is None or run.args.dry_run:
            met = "not evaluated (dry run: CPU, tiny models)" if run.args.dry_run else "not measured"
        else:
            met = "yes" if (v <= goal if op == "<=" else v >= goal) else "no"
        lines.append(f"| {what} | {op} {goal:g} | {'' if v is None else f'{v:.3g}'} | {met} |")
    return lines


# -- helpers ----------------------------------------------------------------------------------------------------

def _others(run) -> list[str]:
    m = run.models
    return ([] if m.ref_taco is None else ["reference"]) + (["DLE"] if m.dle else [])


def _baseline(run) -> str:
    if run.models.dle:
        how = ".half()" if run.args.dle_amp == "half" else "fp16 autocast"
        return f"NVIDIA's DLE modules (weight norm removed; low-precision rows in {how}, as its inference.py --fp16)"
    return ("the project's PyTorch reference (tests/reference; no DLE checkout given: --dle), low-precision rows "
            "under fp16 autocast. The reference recomputes WaveGlow's weight norm per call and autocast re-casts "
            "weights per call, so it is slower than DLE's own --fp16 path: ratios against it flatter jtts")


def _store(run, prefix, r):
    run.fig.update({f"{prefix}.{k}": v for k, v in r.items()})


def _version(dist):
    import importlib.metadata as md

    with contextlib.suppress(md.PackageNotFoundError):
        return md.version(dist)
    return "absent"


def _nvidia_smi() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        q = "name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw"
        r = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True,
                           text=True, timeout=20)
        return r.stdout.strip().replace("\n", "; ")
    return ""


def _fmt_count(n):
    return "at least 1 (not counted: the guard's log was not captured)" if n is None else str(n)


def parity_rows(small: bool) -> list[tuple]:
    """[(stage, jtts f32 vs reference, bf16 vs f32, fp16 vs f32)] from parity.py, NGC sizes or (small) the tests'."""
    import torch

    threads = torch.get_num_threads()
    import conftest  # noqa: F401  parity.py imports it, and its import pins torch to 2 threads: undone below
    import parity as parity_report

    try:
        with _parity_configs(small), tempfile.TemporaryDirectory() as d:
            return parity_report.tacotron2_rows(Path(d), None) + parity_report.waveglow_rows(Path(d), None)
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _parity_configs(small: bool):
    """parity.py builds NGC-sized models; the dry run swaps in the tests' small configurations. (Stopgap until
    parity.py's row functions take a config.)"""
    import reference.tacotron2_torch as rt
    import reference.waveglow_torch as rw

    if not small:
        yield
        return
    saved = rt.tacotron2_config, rw.waveglow_config
    taco, wg = rt.tacotron2_small_config(), rw.waveglow_small_config()
    rt.tacotron2_config = lambda **kw: {**taco, **kw}
    rw.waveglow_config = lambda n_channels=256, **kw: {**wg, **kw}
    try:
        yield
    finally:
        rt.tacotron2_config, rw.waveglow_config = saved


def _child(run, flags, dtype) -> dict:
    """Decoder and end to end, jtts only, in a fresh process whose XLA reads `flags` at start."""
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + flags).strip(),
               XLA_PYTHON_CLIENT_MEM_FRACTION="0.2")  # the parent holds its own share of the GPU
    cmd = [sys.executable, __file__, "--_child", str(run.work), "--dtypes", dtype] + (["--dry-run"] * run.args.dry_run)
    left = run.left()
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True,
                           timeout=None if left == float("inf") else max(30.0, left))
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    if r.returncode != 0:
        return {"error": " ".join(r.stderr.strip().splitlines()[-1:])[:300] or f"exit {r.returncode}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def child_main(work: Path, args) -> int:
    import torch

    sizes = Sizes(args.dry_run)
    m = timing.Models(work, sizes, args.dtypes, torch.device("cpu"))
    dtype = args.dtypes[0]
    r = timing.decoder(m, dtype, sizes.repeats)
    r["e2e_ms"] = timing.end_to_end(m, dtype, sizes.repeats)["jtts_ms"]
    print(json.dumps(r))
    return 0


@functools.cache
def _owners() -> dict:
    import importlib.metadata as md

    return md.packages_distributions()


def imported_distributions() -> list[str]:
    """Installed distributions whose modules this process imported: what the GPU machine's image must hold."""
    owners = _owners()
    names = set()
    for mod in list(sys.modules):
        top = mod.partition(".")[0]
        if top not in sys.stdlib_module_names:
            names.update(d.lower().replace("_", "-").replace(".", "-") for d in owners.get(top, ()))
    return sorted(names - {"jtts"})


def render(run: Run) -> str:
    dry = run.args.dry_run
    title = "# GPU benchmark: jtts against PyTorch on one card, same weights" + (
        " (DRY RUN: CPU, tiny models; the numbers mean nothing)" if dry else "")
    out = [title, "", f"Command: `{run.args.command}`; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
           f"{time.perf_counter() - run.t0:.0f} s wall so far. Weights: random, every path live, NGC shapes"
           + (" (small configurations in the dry run)" if dry else " (Tacotron 2 28M, WaveGlow-256 88M parameters)")
           + ", written as DLE training checkpoints and converted with `jtts.convert`; the Tacotron 2 gate is "
           "silenced so every framework decodes exactly the steps asked for.", ""]
    names = {"machine": "Machine", "host_sync": "Host round trips in Tacotron2.infer", "e2e": "End to end",
             "decoder": "Tacotron 2 decoder", "waveglow": "WaveGlow-256", "parity": "Parity on this device",
             "variants": "XLA flag variants"}
    out += ["## Targets (issue 13)", ""] + targets(run) + [""]
    for key in SECTIONS:
        if key in run.parts:
            out += [f"## {names[key]}", ""] + run.parts[key] + [""]
    if run.problems:
        out += ["## Problems", ""] + [f"* {p}" for p in run.problems] + [""]
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny configurations, 1 repeat: checks the script")
    p.add_argument("--out", action="append", default=[], help="write the markdown report here (repeatable)")
    p.add_argument("--json", help="also write every figure as JSON here")
    p.add_argument("--dle", type=Path, help="DLE's PyTorch/SpeechSynthesis/Tacotron2 directory (optional)")
    p.add_argument("--dle-amp", choices=["half", "autocast"], default="half",
                   help="DLE's low-precision mode: .half() as its inference.py --fp16 (default) or fp16 autocast")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16", "float16"])
    p.add_argument("--sections", nargs="+", default=list(SECTIONS[1:]), choices=SECTIONS[1:])
    p.add_argument("--budget-s", type=float, default=420.0, help="skip sections that would not fit (real runs)")
    p.add_argument("--work", type=Path, help="keep the checkpoints and converted models here")
    p.add_argument("--_child", dest="child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--_parity-child", dest="parity_child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.command = " ".join(["gpu_bench.py"] + list(sys.argv[1:] if argv is None else argv))
    if args.dry_run:
        # the dry run's numbers mean nothing and most of its CPU time is XLA compiling a few hundred programs
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                                   " --xla_llvm_disable_expensive_passes=true").strip()
    if args.child:
        return child_main(args.child, args)
    if args.parity_child:
        import torch

        torch.set_num_threads(1)
        print(json.dumps(parity_rows(args.dry_run)))
        return 0
    import jax
    import torch

    if not args.dry_run and jax.devices()[0].platform != "gpu":
        print(f"gpu_bench: JAX sees no GPU ({jax.devices()}); use --dry-run on a machine without one", file=sys.stderr)
        return 2
    if args.dry_run:
        args.budget_s = float("inf")  # the dry run must exercise every section
        # Under CPU contention (CI, or agents sharing 2 cores) every parallel torch op waits at a barrier for a
        # descheduled thread: one thread ran the reference's small WaveGlow 8x faster on a loaded 2-core box.
        torch.set_num_threads(1)
    bench.SETTLE_S = 0.0  # the CPU benchmark's pause between frameworks; a GPU needs none and the dry run no time
    run = Run(args)
    if args.dry_run and "parity" in args.sections:
        # parity.py compiles ~190 small XLA programs, ~40% of the dry run's CPU time: on a 2-core machine they
        # run in a second process beside the other sections (a GPU run keeps everything in one process, in order)
        run.parity_child = subprocess.Popen([sys.executable, __file__, "--_parity-child", "--dry-run"],
                                            stdout=subprocess.PIPE, text=True)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    with contextlib.ExitStack() as stack:
        if run.parity_child is not None:  # never outlive the run, e.g. when building the weights raised
            stack.callback(lambda: run.parity_child.poll() is None and run.parity_child.kill())
        run.work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        run.work.mkdir(parents=True, exist_ok=True)
        refs = timing.build_weights(run.work, run.sizes)
        run.models = timing.Models(run.work, run.sizes, args.dtypes, device, refs=refs[:2], dle_path=args.dle,
                                   dle_amp=args.dle_amp)
        run.models.timings.update(refs[2])
        for key in ("machine",) + tuple(args.sections):
            _run_section(run, key)
    return 1 if run.problems else 0


def _run_section(run: Run, key: str):
    if run.left() < NEED_S.get(key, 0):
        run.parts[key] = [f"Skipped: {run.left():.0f} s left of --budget-s, this section needs ~{NEED_S[key]} s."]
    else:
        t = time.perf_counter()
        try:
            run.parts[key] = globals()[key](run) + ["", f"({time.perf_counter() - t:.0f} s)"]
        except Exception:  # noqa: BLE001  one failing section must not cost the others in a one-shot device call
            tb = traceback.format_exc()
            print(tb, file=sys.stderr)
            run.parts[key] = ["Failed:", "", "```", tb.strip()[-2000:], "```"]
            run.problems.append(f"section {key} raised: {tb.strip().splitlines()[-1][:200]}")
    cpu = sum(os.times()[:2])
    print(f"[gpu_bench] {key} done at {time.perf_counter() - run.t0:.0f} s wall, {cpu:.0f} s CPU", file=sys.stderr,
          flush=True)
    run.write()


if __name__ == "__main__":
    sys.exit(main())
