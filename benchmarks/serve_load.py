"""Load test of `jtts serve` on 127.0.0.1 against sequential `jtts synthesize`, with every answer checked.

    python benchmarks/serve_load.py                                  # full-size random models, 1/4/16 clients
    python benchmarks/serve_load.py --size tiny --requests 32        # quick smoke run
    python benchmarks/serve_load.py --tacotron2 DIR --waveglow DIR   # your own converted models

What runs: one `jtts serve` process (models loaded and warmed up once); for each number of concurrent clients N,
N threads send the same M requests (request i: text i mod 8, seed i, one sentence) and wait for each whole WAV.
Every request must be answered 200 with the right number of samples and the same audio as in the 1-client pass
(at most 2 int16 steps apart: batched float rounding), so no request is lost or answered with another's audio.
Reported per pass: wall time, requests/s, seconds of audio per second, p50/p95 latency, the mean batch size
(from /metrics). Baselines: the first K requests as sequential `jtts synthesize` processes (what a script does
without a server: each process loads the models, compiled programs come from the XLA cache), and all M requests
in one `jtts synthesize -i FILE` process (offline batching, the CLI's best case).

Random weights (`--size full`: NVIDIA's full-size Tacotron 2 and WaveGlow-256) never stop decoding by
themselves (gate bias -10), so every sentence is exactly --steps frames: the work per request is fixed and
passes compare like with like. Such a decode fails its health check, so repair is off (--no-retry) on both
sides unless --retry. Only 127.0.0.1 is used; the run is bounded by --requests.
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

HOP, SR = 256, 22050
# one sentence each, 87-96 symbols: one Tacotron 2 token bucket, the one the server's warm-up compiles
TEXTS = [
    "The forms of printed letters should be beautiful, and their arrangement on the page reasonable.",
    "Printing, in the only sense with which we are at present concerned, differs from most arts.",
    "For although the Chinese took impressions from wood blocks engraved in relief for centuries.",
    "The earliest book printed with movable types, the Gutenberg Bible, was printed in Latin.",
    "Now, as all books not primarily intended as picture books consist principally of types.",
    "It is of the first importance that the letter used should be fine in form, and easy to read.",
    "The essential point, although it is a point that has often been forgotten, is legibility.",
    "Most modern printers use type that is thin and gray, which makes it hard to read for long.",
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=("full", "tiny"), default="full", help="random-weight models to build")
    p.add_argument("--tacotron2", help="use this converted Tacotron 2 instead of random weights")
    p.add_argument("--waveglow", help="use this converted WaveGlow instead of random weights")
    p.add_argument("--steps", type=int, default=40, help="decoder steps (frames) per sentence (default 40)")
    p.add_argument("--requests", type=int, default=16, help="requests per pass (default 16)")
    p.add_argument("--clients", default="1,4,16", help="concurrent clients per pass (default 1,4,16)")
    p.add_argument("--baseline", type=int, default=3, help="sequential jtts synthesize processes (default 3)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--retry", action="store_true",
                   help="keep repair on (random weights fail every health check: each sentence would be decoded 9 "
                        "times, in the server and the CLI alike)")
    p.add_argument("--work", help="directory for models, XLA cache and logs (default: a temporary one)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="jtts-serve-load-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "JTTS_HOME": str(work / "home")}  # the XLA cache both the server and the CLI use
    taco, wg = models(args, work)
    clients = [int(c) for c in args.clients.split(",")]
    requests = [(TEXTS[i % len(TEXTS)], i) for i in range(args.requests)]
    results = {"machine": machine(), "models": {"tacotron2": str(taco), "waveglow": str(wg), "size": args.size},
               "steps": args.steps, "dtype": args.dtype, "requests": args.requests}

    server = Server(taco, wg, args, env, work / "serve.log")
    try:
        results["startup_s"] = server.startup_s
        reference = None
        results["passes"] = []
        for n in clients:
            row, answers = run_pass(server.url, requests, n, args.steps)
            if reference is None:
                reference = answers
                assert_distinct(reference)
            check_same(answers, reference)
            results["passes"].append(row)
            print(json.dumps(row), flush=True)
    finally:
        server.stop()
    results["cli_sequential"] = cli_sequential(taco, wg, requests[:args.baseline], args, env, work)
    print(json.dumps(results["cli_sequential"]), flush=True)
    results["cli_batch"] = cli_batch(taco, wg, requests, args, env, work)
    print(json.dumps(results["cli_batch"]), flush=True)
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def models(args, work: Path) -> tuple[Path, Path]:
    if args.tacotron2 and args.waveglow:
        return Path(args.tacotron2), Path(args.waveglow)
    from test_serve import tiny_model

    config, end_scale = ({}, 0.05) if args.size == "full" else (None, 0.5)
    root = work / f"models-{args.size}"
    made = [root / k if (root / k / "model.json").is_file() else tiny_model(root, k, seed, config, end_scale)
            for k, seed in (("tacotron2", 1), ("waveglow", 2))]
    return made[0], made[1]


def no_retry(args) -> list[str]:
    return [] if args.retry else ["--no-retry"]


def machine() -> dict:
    return {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()[0]}


class Server:
    def __init__(self, taco: Path, wg: Path, args, env: dict, log: Path):
        cmd = [sys.executable, "-m", "jtts.serve", "--tacotron2", str(taco), "--waveglow", str(wg), "--port", "0",
               "--max-decoder-steps", str(args.steps), "--max-batch", str(args.max_batch), "--dtype", args.dtype,
               "--log-level", "warning", "--max-queue", str(max(128, 2 * args.requests)), *no_retry(args)]
        t0 = time.perf_counter()
        self.log = open(log, "w")
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=self.log, text=True, env=env)
        self.url = None
        for line in self.proc.stderr:
            self.log.write(line)
            m = re.search(r"ready on (http://\S+?)/? ", line)
            if m:
                self.url = m.group(1)
                break
        if self.url is None:
            raise SystemExit(f"the server did not start; see {log}")
        self.startup_s = round(time.perf_counter() - t0, 1)
        threading.Thread(target=lambda: [self.log.write(x) for x in self.proc.stderr], daemon=True).start()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def speak(url: str, text: str, seed: int) -> tuple[float, int, bytes]:
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=3600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/audio/speech", body=json.dumps({"input": text, "seed": seed}),
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return time.perf_counter() - t0, r.status, data


def scrape(url: str) -> dict[str, float]:
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    pattern = r'^(jtts_batch_size_(?:sum|count)|jtts_stage_seconds_sum\{stage="\w+"\}) (\S+)$'
    return {m.group(1): float(m.group(2)) for m in re.finditer(pattern, text, re.M)}


def run_pass(url: str, requests, clients: int, steps: int) -> tuple[dict, list[np.ndarray]]:
    import soundfile as sf

    answers: list = [None] * len(requests)
    latencies: list = [None] * len(requests)
    next_i = iter(range(len(requests)))
    lock = threading.Lock()

    def client():
        while True:
            with lock:
                i = next(next_i, None)
            if i is None:
                return
            text, seed = requests[i]
            latencies[i], status, data = speak(url, text, seed)
            if status != 200:
                raise SystemExit(f"request {i} answered {status}: {data[:300]!r}")
            audio = sf.read(io.BytesIO(data), dtype="int16")[0]
            if len(audio) != steps * HOP:
                raise SystemExit(f"request {i}: {len(audio)} samples, expected {steps * HOP}")
            answers[i] = audio

    before = scrape(url)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = scrape(url)
    if any(a is None for a in answers):
        raise SystemExit(f"{sum(a is None for a in answers)} request(s) got no answer")
    batches = after["jtts_batch_size_count"] - before["jtts_batch_size_count"]
    audio_s = len(requests) * steps * HOP / SR
    return {"clients": clients, "requests": len(requests), "wall_s": round(wall, 2),
            "requests_per_s": round(len(requests) / wall, 3), "audio_s_per_s": round(audio_s / wall, 3),
            "p50_s": round(float(np.percentile(latencies, 50)), 2),
            "p95_s": round(float(np.percentile(latencies, 95)), 2),
            "mean_batch": round((after["jtts_batch_size_sum"] - before["jtts_batch_size_sum"]) / max(batches, 1), 2),
            "stage_s": {k.split('"')[1]: round(after[k] - before.get(k, 0.0), 2) for k in after if "stage" in k}}, \
        answers


def assert_distinct(reference: list[np.ndarray]) -> None:
    for i in range(1, len(reference)):
        if np.abs(reference[i].astype(int) - reference[0]).max() <= 2:
            raise SystemExit(f"requests 0 and {i} gave the same audio: a mix-up could not be seen")


def check_same(answers: list[np.ndarray], reference: list[np.ndarray]) -> None:
    for i, (a, r) in enumerate(zip(answers, reference)):
        diff = int(np.abs(a.astype(int) - r).max())
        if diff > 2:
            raise SystemExit(f"request {i}: audio differs from the 1-client pass by {diff} (lost or mixed up)")


def cli_sequential(taco, wg, requests, args, env, work: Path) -> dict:
    times = []
    for text, seed in requests:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "jtts", "synthesize", text, "-o", str(work / "cli.wav"), "--seed",
                        str(seed), "--tacotron2", str(taco), "--waveglow", str(wg), "--max-decoder-steps",
                        str(args.steps), "--dtype", args.dtype, "-q", *no_retry(args)], check=True, env=env)
        times.append(time.perf_counter() - t0)
    return {"processes": len(times), "per_request_s": [round(t, 2) for t in times],
            "median_s": round(statistics.median(times), 2), "requests_per_s": round(1 / statistics.median(times), 3)}


def cli_batch(taco, wg, requests, args, env, work: Path) -> dict:
    lines = work / "lines.txt"
    lines.write_text("\n".join(text for text, _ in requests) + "\n")
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "jtts", "synthesize", "-i", str(lines), "-o", str(work / "cli-out/"),
                          "--overwrite", "--tacotron2", str(taco), "--waveglow", str(wg), "--max-decoder-steps",
                          str(args.steps), "--dtype", args.dtype, *no_retry(args)], check=True, env=env,
                         capture_output=True, text=True)
    wall = time.perf_counter() - t0
    m = re.search(r"of audio in ([\d.]+) s", run.stderr)
    compute = float(m.group(1)) if m else None
    return {"requests": len(requests), "wall_s": round(wall, 2), "compute_s": compute,
            "requests_per_s_wall": round(len(requests) / wall, 3),
            "requests_per_s_compute": round(len(requests) / compute, 3) if compute else None}


def table(r: dict) -> str:
    audio = r["steps"] * HOP / SR
    out = [f"{r['requests']} requests of one sentence ({r['steps']} frames, {audio:.2f} s of audio each), "
           f"{r['dtype']}; server startup (load + warm-up) {r['startup_s']} s; load average at start "
           f"{r['machine']['load_average_at_start']:.1f} on {r['machine']['cpus']} CPUs", "",
           "| how | requests/s | audio s per s | p50 latency s | p95 latency s | mean batch | Tacotron 2 / WaveGlow / "
           "denoiser s |", "|---|---|---|---|---|---|---|"]
    for p in r["passes"]:
        st = p["stage_s"]
        out.append(f"| jtts serve, {p['clients']} client(s) | {p['requests_per_s']:.3f} | {p['audio_s_per_s']:.3f} | "
                   f"{p['p50_s']:.2f} | {p['p95_s']:.2f} | {p['mean_batch']:.2f} | {st.get('tacotron2', 0):.1f} / "
                   f"{st.get('waveglow', 0):.1f} / {st.get('denoiser', 0):.1f} |")
    s = r["cli_sequential"]
    out.append(f"| `jtts synthesize` per request, sequential ({s['processes']} runs) | {s['requests_per_s']:.3f} | "
               f"{s['requests_per_s'] * audio:.3f} | {s['median_s']:.2f} | {max(s['per_request_s']):.2f} | 1 | - |")
    b = r["cli_batch"]
    out.append(f"| `jtts synthesize -i` all {b['requests']} in one process (wall) | {b['requests_per_s_wall']:.3f} | "
               f"{b['requests_per_s_wall'] * audio:.3f} | - | {b['wall_s']:.2f} (all) | 8 | - |")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
