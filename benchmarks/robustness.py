"""Measurements for docs/robustness.md (issue 11): failure rates on hostile text, time to first audio when
streaming, WaveGlow speed and seam error when vocoding in chunks, peak memory end to end.

    python benchmarks/robustness.py failures --tacotron2 runs/taco/model [--texts benchmarks/hostile.tsv]
    python benchmarks/robustness.py stream               # full-size models, random weights
    python benchmarks/robustness.py vocoder [--frames 87 300 600 1200] [--chunks 64 128 256]
    python benchmarks/robustness.py memory               # fresh process per variant, VmHWM

`failures` needs a trained Tacotron 2 (random weights fail every sentence): each line of the text set
(`category<TAB>text`) is split into sentences as `jtts synthesize` splits it, and every sentence is decoded
under four settings: plain, with repair (3 tries, then split), with --attention-window 3, and both. The other
commands build NGC-sized models with the tests' live random weights (tests/reference), whose Tacotron 2 never
stops by itself (gate bias -10), so every sentence runs exactly --steps frames: speed and memory do not depend
on what the weights say. Times are medians over interleaved repeats after a warm-up call, with a settle pause
before each (as benchmarks/bench.py, whose reasons apply here).
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
SR, HOP, SETTLE_S = 22050, 256, 0.3
PARAGRAPH = ("The forms of printed letters should be beautiful. Their arrangement on the page should be "
             "reasonable. A clear page is a pleasure to read. The earliest printers took the manuscripts of their "
             "time as their models. Their types were cut to imitate the scribes' hands. Over the centuries the "
             "shapes of the letters were simplified. Each generation of printers refined them again. Good type "
             "never calls attention to itself. It serves the text and the reader. That is the whole of its art.")


# -- failures on hostile text ------------------------------------------------------------------------------------

SETTINGS = {"plain": dict(tries=1, max_depth=0, window=None), "repair": dict(tries=3, max_depth=1, window=None),
            "window 3": dict(tries=1, max_depth=0, window=3), "window 3 + repair": dict(tries=3, max_depth=1, window=3)}


def cmd_failures(args) -> str:
    import functools

    import jax

    from jtts import Tacotron2
    from jtts.pipeline import sentence_key
    from jtts.repair import decode_rows, repair
    from jtts.sentences import prepare

    taco = Tacotron2.from_checkpoint(args.tacotron2)
    cats: dict[str, list] = {}
    for n, line in enumerate(Path(args.texts).read_text().splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            cat, text = line.split("\t", 1)
            p = prepare(text)
            cats.setdefault(cat, []).extend((s, ids, sentence_key(jax.random.key(0), n, j))
                                            for j, (s, ids) in enumerate(zip(p.sentences, p.ids)))
    rows, problems = [], {}
    for name, st in SETTINGS.items():
        decode = functools.partial(decode_rows, taco, max_decoder_steps=args.max_decoder_steps,
                                   attention_window=st["window"])
        t0, failed, tries = time.perf_counter(), {}, 0
        for cat, sentences in cats.items():
            out = repair(decode, sentences, tries=st["tries"], max_depth=st["max_depth"], batch_size=8)
            failed[cat] = sum(not o.ok for o in out)
            tries += sum(o.tries for o in out)
            for o in out:
                for p in o.health.problems if not o.ok else ():
                    problems.setdefault(name, {}).setdefault(p, 0)
                    problems[name][p] += 1
        rows.append((name, failed, tries, time.perf_counter() - t0))
        print(f"{name}: {failed}", file=sys.stderr)
    total = {cat: len(s) for cat, s in cats.items()}
    lines = ["| setting | " + " | ".join(f"{c} ({total[c]})" for c in total) + " | all | decodes | seconds |",
             "|---" * (len(total) + 4) + "|"]
    for name, failed, tries, secs in rows:
        cells = [f"{failed[c] / total[c]:.0%}" for c in total]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {sum(failed.values()) / sum(total.values()):.1%} | "
                     f"{tries} | {secs:.0f} |")
    lines += ["", "Problems of the sentences still failing: " + "; ".join(
        f"{name}: " + ", ".join(f"{k} {v}" for k, v in sorted(p.items())) for name, p in problems.items())]
    return "\n".join(lines)


# -- full-size models with live random weights --------------------------------------------------------------------

def build_models(tmp: Path):
    """NGC-shaped Tacotron 2 (gate bias -10) and WaveGlow-256 with the tests' live weights, as .pt and as jtts
    model directories."""
    import torch

    from jtts.convert import convert
    from reference.tacotron2_torch import tacotron2_config
    from reference.waveglow_torch import waveglow_config
    from reference.weights import live_tacotron2, live_waveglow, save_hub_checkpoint

    cfg = tacotron2_config()
    taco = live_tacotron2(cfg, seed=0)
    with torch.no_grad():
        taco.decoder.gate_layer.linear_layer.bias.fill_(-10.0)
    save_hub_checkpoint(tmp / "t.pt", taco, cfg)
    wcfg = waveglow_config(256)
    save_hub_checkpoint(tmp / "w.pt", live_waveglow(wcfg, seed=0), wcfg)
    return convert(tmp / "t.pt", tmp / "t"), convert(tmp / "w.pt", tmp / "w")


def _timed(fn, clock=time.perf_counter) -> float:
    time.sleep(SETTLE_S)
    t = clock()
    fn()
    return clock() - t


def cmd_stream(args) -> str:
    from jtts import Denoiser, Tacotron2, WaveGlowInference
    from jtts.pipeline import iter_sentences, synthesize

    with tempfile.TemporaryDirectory() as d:
        taco_dir, wg_dir = build_models(Path(d))
        taco = Tacotron2.from_checkpoint(taco_dir)
        wg = WaveGlowInference.from_checkpoint(wg_dir)
    den = Denoiser(wg)
    kw = dict(max_decoder_steps=args.steps, retry=False, batch_size=args.batch_size)
    synthesize([PARAGRAPH], taco, wg, den, **kw)  # compile every shape once
    firsts, streams, wholes, sequential = [], [], [], []
    for _ in range(args.repeats):
        time.sleep(SETTLE_S)
        t0 = time.perf_counter()
        it = iter_sentences([PARAGRAPH], taco, wg, den, **kw)
        next(it)
        firsts.append(time.perf_counter() - t0)
        n = 1 + sum(1 for _ in it)
        streams.append(time.perf_counter() - t0)
        wholes.append(_timed(lambda: synthesize([PARAGRAPH], taco, wg, den, **kw)))
        sequential.append(_timed(lambda: synthesize([PARAGRAPH], taco, wg, den, overlap=False, **kw)))
    med = statistics.median
    audio = n * args.steps * HOP / SR
    return (f"{n} sentences x {args.steps} frames ({audio:.1f} s of audio), batch size {args.batch_size}, float32, "
            f"medians of {args.repeats}:\n\n| | seconds |\n|---|---|\n"
            f"| first sentence's audio (`iter_sentences`) | {med(firsts):.2f} |\n"
            f"| all sentences, streaming | {med(streams):.2f} |\n"
            f"| whole paragraph (`synthesize`, Tacotron 2 one batch ahead of WaveGlow) | {med(wholes):.2f} |\n"
            f"| whole paragraph, `overlap=False` | {med(sequential):.2f} |")


def cmd_vocoder(args) -> str:
    import jax
    import torch

    from jtts import WaveGlowInference
    from jtts.chunked import chunked_infer
    from reference.waveglow_torch import WaveGlow as RefWaveGlow

    torch.set_num_threads(1 if args.cpu_time else 2)
    clock = time.process_time if args.cpu_time else time.perf_counter
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        _, wg_dir = build_models(tmp)
        wg = WaveGlowInference.from_checkpoint(wg_dir)
        ckpt = torch.load(tmp / "w.pt", weights_only=True)
    ref = RefWaveGlow(**ckpt["config"])
    ref.load_state_dict(ckpt["state_dict"])
    ref.eval()
    unit = "CPU second, one thread" if args.cpu_time else "second"
    lines = [f"Samples per {unit} (higher is better), WaveGlow-256 float32 at batch 1, sigma 0.9:", "",
             "| mel frames | whole mel | " + " | ".join(f"chunks of {c}" for c in args.chunks) + " | PyTorch reference |",
             "|---" * (len(args.chunks) + 3) + "|"]
    for frames in args.frames:
        mel = (np.random.default_rng(0).standard_normal((1, 80, frames)) * 0.5 - 4.0).astype(np.float32)
        z = np.asarray(jax.random.normal(jax.random.key(1), (1, 8, frames * 32)))
        fns = {"whole": lambda: wg.infer(mel, sigma=0.9, z=z).block_until_ready()}
        for c in args.chunks:
            fns[c] = lambda c=c: chunked_infer(wg, mel, sigma=0.9, z=z, chunk=c).block_until_ready()
        mel_t, z_t = torch.from_numpy(mel), torch.from_numpy(z)

        def run_ref():
            with torch.no_grad():
                ref.infer(mel_t, sigma=0.9, z=z_t, sigma_on_early=True)
        fns["ref"] = run_ref
        for fn in fns.values():
            fn()  # compile, warm caches
        times = {k: [] for k in fns}
        for _ in range(args.repeats):
            for k, fn in fns.items():
                times[k].append(_timed(fn, clock))
        rate = {k: frames * HOP / statistics.median(v) for k, v in times.items()}
        lines.append(f"| {frames} | {rate['whole']:,.0f} | " + " | ".join(f"{rate[c]:,.0f}" for c in args.chunks)
                     + f" | {rate['ref']:,.0f} |")
        print(lines[-1], file=sys.stderr)
    frames = max(args.frames)
    mel = (np.random.default_rng(0).standard_normal((1, 80, frames)) * 0.5 - 4.0).astype(np.float32)
    z = np.asarray(jax.random.normal(jax.random.key(1), (1, 8, frames * 32)))
    whole = np.asarray(wg.infer(mel, sigma=0.9, z=z))
    lines += ["", f"Seam error against the whole mel ({frames} frames, chunks of {args.chunks[0]}): relative L2 "
              "error and largest sample error, by frames of context per side:", "",
              "| context | relative L2 | max abs |", "|---|---|---|"]
    for ctx in args.contexts:
        out = np.asarray(chunked_infer(wg, mel, sigma=0.9, z=z, chunk=args.chunks[0], context=ctx))
        err = out - whole
        lines.append(f"| {ctx} | {np.linalg.norm(err) / np.linalg.norm(whole):.1e} | {np.abs(err).max():.1e} |")
    return "\n".join(lines)


# -- peak memory ---------------------------------------------------------------------------------------------------

def _high_water_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("no VmHWM in /proc/self/status")


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no {field} in /proc/self/status")


def _vocoder_child(which: str, tmp: str, frames: int) -> None:
    """WaveGlow-256 alone on a mel of `frames` frames, in a fresh process: prints how far resident memory rises
    above what the loaded model holds, over the first call (compilation included, as a user pays it) and over
    a second call. The second call alone says little: allocators keep what the first freed, so a process that
    once held a large working set shows no growth when it needs it again."""
    import jax

    mel = (np.random.default_rng(0).standard_normal((1, 80, frames)) * 0.5 - 4.0).astype(np.float32)
    if which == "reference":
        import torch

        from reference.waveglow_torch import WaveGlow as RefWG

        torch.set_num_threads(2)
        ckpt = torch.load(Path(tmp) / "w.pt", weights_only=True)
        wg = RefWG(**ckpt["config"])
        wg.load_state_dict(ckpt["state_dict"])
        wg.eval()
        run = lambda: wg.infer(torch.from_numpy(mel), sigma=0.9)  # noqa: E731
        run = torch.no_grad()(run)
    else:
        from jtts import WaveGlowInference
        from jtts.chunked import chunked_infer

        wg = WaveGlowInference.from_checkpoint(Path(tmp) / "w")
        vocode = wg.infer if which == "whole" else functools.partial(chunked_infer, wg)
        run = lambda: np.asarray(vocode(mel, sigma=0.9, key=jax.random.key(1)))  # noqa: E731
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_mb("VmRSS")
    run()
    first = _status_mb("VmHWM") - base
    run()
    print(json.dumps({"growth_mb": first, "peak_mb": _status_mb("VmHWM"), "model_mb": base}))


def _memory_child(which: str, tmp: str, steps: int) -> None:
    """One end-to-end run (128 symbols -> steps frames -> WaveGlow-256 -> denoiser); prints VmHWM after each stage."""
    tmp = Path(tmp)
    tokens = np.random.default_rng(7).integers(1, 148, (1, 128))
    marks = {"imported": 0.0}
    if which.startswith("jtts"):
        import jax

        from jtts import Denoiser, Tacotron2, WaveGlowInference
        from jtts.chunked import chunked_infer

        marks["imported"] = _high_water_mb()
        taco = Tacotron2.from_checkpoint(tmp / "t")
        marks["Tacotron 2 loaded"] = _high_water_mb()
        wg = WaveGlowInference.from_checkpoint(tmp / "w")
        den = Denoiser(wg)
        marks["WaveGlow loaded and folded"] = _high_water_mb()
        mel = taco.infer(tokens, np.array([128]), key=jax.random.key(0), max_decoder_steps=steps)[0]
        marks["Tacotron 2 ran"] = _high_water_mb()
        vocode = wg.infer if which == "jtts-whole" else functools.partial(chunked_infer, wg)
        np.asarray(den(vocode(mel, sigma=0.9, key=jax.random.key(1)), strength=0.01))
    else:
        import torch

        from reference.tacotron2_torch import Tacotron2 as RefTaco
        from reference.waveglow_torch import Denoiser as RefDenoiser
        from reference.waveglow_torch import WaveGlow as RefWG

        torch.set_num_threads(2)
        marks["imported"] = _high_water_mb()

        def build(cls, path):
            ckpt = torch.load(path, weights_only=True)
            m = cls(**ckpt["config"])
            m.load_state_dict(ckpt["state_dict"])
            return m.eval()

        taco = build(RefTaco, tmp / "t.pt")
        marks["Tacotron 2 loaded"] = _high_water_mb()
        wg = build(RefWG, tmp / "w.pt")
        den = RefDenoiser(wg)
        marks["WaveGlow loaded and folded"] = _high_water_mb()
        with torch.no_grad():
            mel = taco.infer(torch.as_tensor(tokens), torch.tensor([128]), max_decoder_steps=steps,
                             early_stopping=False, prenet_dropout=0.5)["mel_postnet"]
            marks["Tacotron 2 ran"] = _high_water_mb()
            den(wg.infer(mel, sigma=0.9), strength=0.01)
    marks["end to end"] = _high_water_mb()
    print(json.dumps(marks))


def _child(*argv) -> dict:
    res = subprocess.run([sys.executable, __file__, *map(str, argv)], capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{argv}: {res.stderr[-600:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def cmd_memory(args) -> str:
    lines = []
    with tempfile.TemporaryDirectory() as d:
        build_models(Path(d))
        if args.only in (None, "end-to-end"):
            results = {}
            for which in ("jtts", "jtts-whole", "reference"):
                results[which] = _child("_memory", which, d, args.steps)
                print(which, results[which], file=sys.stderr)
            lines += [f"Peak resident memory (VmHWM, MB) after each stage, fresh process each, float32, 128 symbols "
                      f"-> {args.steps} frames -> WaveGlow-256 -> denoiser:", "",
                      "| stage | jtts (chunked WaveGlow) | jtts (whole mel) | PyTorch reference |", "|---|---|---|---|"]
            for s in results["jtts"]:
                lines.append(f"| {s} | " + " | ".join(f"{results[w].get(s, 0):,.0f}" for w in results) + " |")
            lines.append("")
        if args.only in (None, "vocoder"):
            runs = {(w, f): _child("_vocoder", w, d, f) for f in args.frames for w in ("whole", "chunked", "reference")}
            print(runs, file=sys.stderr)
            lines += ["Rise of resident memory above the loaded WaveGlow-256 while it vocodes one mel (MB; fresh "
                      "process each; compilation included, as a user pays it) and the process's peak:", "",
                      "| mel frames | jtts whole mel | jtts chunks of 128 | PyTorch reference | peaks |",
                      "|---|---|---|---|---|"]
            for f in args.frames:
                ws = ("whole", "chunked", "reference")
                lines.append(f"| {f} | " + " | ".join(f"{runs[w, f]['growth_mb']:,.0f}" for w in ws) + " | "
                             + " / ".join(f"{runs[w, f]['peak_mb']:,.0f}" for w in ws) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] in ("_memory", "_vocoder"):
        child = _memory_child if sys.argv[1] == "_memory" else _vocoder_child
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("failures")
    f.add_argument("--tacotron2", required=True)
    f.add_argument("--texts", default=str(HERE / "hostile.tsv"))
    f.add_argument("--max-decoder-steps", type=int)
    s = sub.add_parser("stream")
    s.add_argument("--steps", type=int, default=150)
    s.add_argument("--batch-size", type=int, default=4)
    s.add_argument("--repeats", type=int, default=3)
    v = sub.add_parser("vocoder")
    v.add_argument("--frames", type=int, nargs="+", default=[87, 300, 600, 1200])
    v.add_argument("--chunks", type=int, nargs="+", default=[128, 64, 256])
    v.add_argument("--contexts", type=int, nargs="+", default=[0, 1, 2, 4, 8])
    v.add_argument("--repeats", type=int, default=3)
    v.add_argument("--cpu-time", action="store_true",
                   help="time by process CPU time with torch on one thread (run under taskset -c N and XLA_FLAGS="
                        "'--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1'): steadier on a busy "
                        "machine")
    m = sub.add_parser("memory")
    m.add_argument("--steps", type=int, default=600)
    m.add_argument("--frames", type=int, nargs="+", default=[150, 600, 2400])
    m.add_argument("--only", choices=("vocoder", "end-to-end"), help="one of the two measurements")
    for q in (f, s, v, m):
        q.add_argument("--out", help="also append the markdown to this file")
    args = p.parse_args(argv)
    report = {"failures": cmd_failures, "stream": cmd_stream, "vocoder": cmd_vocoder, "memory": cmd_memory}[args.cmd](args)
    print(report)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(report + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
