"""`jtts serve` over real HTTP (uvicorn on 127.0.0.1) with tiny models: the same audio as `jtts synthesize`,
batches shared across requests without changing anyone's audio, streaming that sends the first sentence before
the rest is decoded, cancellation when the client leaves, 4xx JSON for every bad input, 503 under overload,
health and Prometheus metrics.

Ordering questions (did the first sentence go out before the rest was decoded? did a cancelled request's work
stop?) are answered with the engine's `before_batch` hook, which holds the worker at a batch until the test has
seen what it waits for: no timing assumptions."""
from __future__ import annotations

import argparse
import http.client
import io
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import jtts.cli as cli
from jtts.errors import JttsError, UsageError
from jtts.serve import add_serve_parser
from jtts.serve.server import Background, bind, build, run
from robust_helpers import tiny_dir

STEPS = 16  # the tiny Tacotron 2 never stops by itself (gate bias -10): every sentence is STEPS frames
HOP = 256
GAP = round(0.2 * 22050)
SIGMA = 0.3  # the tiny WaveGlow's audio has about this standard deviation: within [-1, 1], hardly clipped
# 65-96 symbols each: one token bucket, the one warm-up compiles, so the tests compile little
A = "The quick brown fox jumps over the lazy dog near the quiet river bank."
B = "Every sentence here is long enough to share one compiled token bucket."
C = "Speech synthesis turns the written word into sound anyone can hear."
TINY = {"tacotron2": dict(symbols_embedding_dim=32, encoder_embedding_dim=32, encoder_n_convolutions=2,
                          attention_rnn_dim=64, decoder_rnn_dim=64, prenet_dim=32, attention_dim=16,
                          attention_location_n_filters=8, postnet_embedding_dim=32, postnet_n_convolutions=3),
        "waveglow": dict(n_flows=4, n_early_every=2, n_layers=2, n_channels=16)}


def tiny_model(root: Path, kind: str, seed: int, config: dict | None = None, end_scale: float = 0.5) -> Path:
    """A model directory (TINY unless `config` overrides; {} is NVIDIA's full size): `robust_helpers.tiny_params`."""
    return tiny_dir(root, kind, TINY[kind] if config is None else config, seed, end_scale)


def serve_args(taco, wg, *extra):
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", "--tacotron2", str(taco), "--waveglow", str(wg), "--max-decoder-steps",
                              str(STEPS), "--max-batch", "4", "--max-queue", "16", "--max-sentences", "8",
                              "--max-input-chars", "2000", "-q", *extra])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    taco, wg = tiny_model(root, "tacotron2", 1), tiny_model(root, "waveglow", 2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JTTS_HOME", str(root / "home"))  # the XLA cache goes there, not into the user's
        app, info = build(serve_args(taco, wg))
        assert info["warmup_s"] > 0
        with Background(app) as url:
            yield dict(url=url, engine=app.state.api.engine, taco=taco, wg=wg, root=root)


class Client:
    def __init__(self, url: str, timeout: float = 60):
        host, port = url.split("//")[1].split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=timeout)

    def request(self, method: str, path: str, body=None, headers=None):
        data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
        self.conn.request(method, path, body=data, headers=headers or {"Content-Type": "application/json"})
        return self.conn.getresponse()


def post(url: str, body, path: str = "/v1/audio/speech"):
    r = Client(url).request("POST", path, body)
    return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()


def samples(wav: bytes) -> np.ndarray:
    return sf.read(io.BytesIO(wav), dtype="int16")[0]


class Gate:
    """Holds the engine's worker before each batch while `hold(jobs)` is true (30 s at most), recording batches."""

    def __init__(self, engine, hold=lambda jobs: False):
        self.engine, self.hold, self.batches, self.timed_out = engine, hold, [], False
        self.entered, self.holding = threading.Event(), False
        engine.before_batch = self

    def __call__(self, jobs):
        self.batches.append([(id(j.ticket), j.index) for j in jobs])
        self.holding = True
        self.entered.set()
        deadline = time.monotonic() + 30
        while self.hold(jobs) and not self.timed_out:
            self.timed_out = time.monotonic() > deadline
            time.sleep(0.01)
        self.holding = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.engine.before_batch = None
        wait_for(lambda: not self.holding, "the worker to leave the gate")


def wait_for(condition, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# -- the audio ---------------------------------------------------------------------------------------------

def test_same_audio_as_jtts_synthesize_in_every_format(server, tmp_path, capsys):
    text = f"{A} {B}"
    status, headers, wav = post(server["url"], {"model": "tts-1", "input": text, "voice": "alloy", "seed": 5,
                                                "sigma": SIGMA})
    assert status == 200 and headers["content-type"] == "audio/wav", wav[:300]
    n = 2 * STEPS * HOP + GAP
    # the tiny decoder never stops: both sentences fail their health check and keep their first decode (as in
    # jtts synthesize, after the same retries and splits)
    assert (headers["x-sentences"], headers["x-seed"], headers["x-voice"]) == ("2", "5", "ljspeech")
    assert headers["x-cut-sentences"] == headers["x-failed-sentences"] == "1,2"
    assert headers["x-audio-seconds"] == f"{n / 22050:.3f}"
    info = sf.info(io.BytesIO(wav))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (22050, 1, "PCM_16", n)
    ours = samples(wav)
    assert 3000 < np.abs(ours).max() and np.mean(np.abs(ours) >= 32767) < 0.01  # loud, hardly clipped
    assert not ours[STEPS * HOP:STEPS * HOP + GAP].any()

    out = tmp_path / "cli.wav"
    assert cli.main(["synthesize", text, "-o", str(out), "--seed", "5", "--sigma", str(SIGMA),
                     "--tacotron2", str(server["taco"]), "--waveglow", str(server["wg"]),
                     "--max-decoder-steps", str(STEPS), "-q"]) == 0
    capsys.readouterr()
    theirs = sf.read(out, dtype="int16")[0]
    # batched on the server, one by one in the CLI: equal up to float rounding (a sample's last bit may flip)
    assert len(theirs) == n and np.abs(ours.astype(int) - theirs).max() <= 1

    status, headers, pcm = post(server["url"], {"input": text, "seed": 5, "sigma": SIGMA, "response_format": "pcm"})
    assert status == 200 and headers["content-type"] == "audio/pcm" and headers["x-sample-format"] == "s16le"
    assert pcm == wav[44:]
    status, headers, flac = post(server["url"], {"input": text, "seed": 5, "sigma": SIGMA, "response_format": "flac"})
    # libsndfile rounds float -> int16 for FLAC a little differently from WAV (as `jtts synthesize -o x.flac`)
    assert status == 200 and flac[:4] == b"fLaC" and np.abs(samples(flac).astype(int) - ours).max() <= 1

    status, _, other = post(server["url"], {"input": text, "seed": 6, "sigma": SIGMA})
    assert status == 200 and np.mean(samples(other) != ours) > 0.5  # another seed, other noise


def test_concurrent_requests_share_batches_without_changing_their_audio(server):
    bodies = [{"input": A, "seed": 1, "sigma": SIGMA}, {"input": B, "seed": 2, "sigma": 0.2},
              {"input": f"{C} {A}", "seed": 3, "sigma": SIGMA}, {"input": A, "seed": 4, "sigma": SIGMA, "denoise": 0}]
    alone = [samples(post(server["url"], b)[2]) for b in bodies]
    engine = server["engine"]
    results = [None] * len(bodies)
    with Gate(engine, hold=lambda jobs: len(gate.batches) == 1) as gate:
        # the first request holds the worker, the others queue up behind it and then share batches
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, post(server["url"], bodies[i])))
                   for i in range(len(bodies))]
        threads[0].start()
        gate.entered.wait(30)
        for t in threads[1:]:
            t.start()
        wait_for(lambda: engine.queue_length() == 4, "4 sentences queued")
        gate.hold = lambda jobs: False
        for t in threads:
            t.join(60)
    assert not gate.timed_out
    assert max(len({ticket for ticket, _ in batch}) for batch in gate.batches) >= 3, gate.batches
    for i, (status, _, wav) in enumerate(results):
        assert status == 200
        mixed = samples(wav)
        assert len(mixed) == len(alone[i]) and np.abs(mixed.astype(int) - alone[i]).max() <= 1, i


def test_stream_sends_the_first_sentence_before_the_rest_is_decoded(server):
    body = {"input": f"{A} {B} {C}", "seed": 7, "sigma": SIGMA, "stream": True}
    first_seen = threading.Event()
    engine = server["engine"]

    def later_sentences(jobs):  # hold any batch holding sentence 2 or 3 until the client has sentence 1
        return any(j.index > 0 and j.ticket.stream for j in jobs) and not first_seen.is_set()

    with Gate(engine, hold=later_sentences) as gate:
        r = Client(server["url"]).request("POST", "/v1/audio/speech", body)
        assert r.status == 200 and r.getheader("Transfer-Encoding") == "chunked"
        head = r.read(44 + STEPS * HOP * 2)
        first_seen.set()
        rest = r.read()
    assert not gate.timed_out
    assert head[:4] == b"RIFF" and head[40:44] == b"\xff\xff\xff\xff"  # length unknown while streaming
    whole = post(server["url"], {**body, "stream": False})[2]
    streamed = np.frombuffer(head[44:] + rest, "<i2")
    assert len(streamed) == 3 * STEPS * HOP + 2 * GAP
    assert np.abs(streamed.astype(int) - samples(whole)).max() <= 1

    status, headers, raw = post(server["url"], {**body, "response_format": "pcm"})
    assert status == 200 and np.abs(np.frombuffer(raw, "<i2").astype(int) - samples(whole)).max() <= 1


def _send_raw(url: str, body: dict) -> socket.socket:
    host, port = url.split("//")[1].split(":")
    data = json.dumps(body).encode()
    s = socket.create_connection((host, int(port)))
    s.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    return s


def test_a_client_that_leaves_cancels_its_remaining_work(server):
    engine = server["engine"]
    before = dict(engine.counts)
    text = " ".join([A, B, C, A, B, C])  # 6 sentences: batches of 4 and 2
    with Gate(engine, hold=lambda jobs, n=before["cancelled"]: engine.counts["cancelled"] == n) as gate:
        sock = _send_raw(server["url"], {"input": text})
        assert gate.entered.wait(30)
        sock.close()  # gone while its first batch is held
        wait_for(lambda: not gate.holding, "the cancellation to release the gate")
    assert not gate.timed_out and len(gate.batches) == 1
    wait_for(lambda: engine.pending() == 0, "the engine to drop the request")
    assert engine.counts["cancelled"] - before["cancelled"] == 6
    assert engine.counts["sentences"] == before["sentences"]  # nothing of it was computed

    # streaming: the first sentence goes out, the client hangs up, the other two are never decoded
    before = dict(engine.counts)
    with Gate(engine, hold=lambda jobs, n=before["cancelled"]: any(j.index > 0 for j in jobs)
              and engine.counts["cancelled"] == n) as gate:
        sock = _send_raw(server["url"], {"input": f"{A} {B} {C}", "stream": True})
        got = b""
        while len(got) < 44 + STEPS * HOP * 2:
            got += sock.recv(65536)
        sock.close()
        wait_for(lambda: engine.counts["cancelled"] > before["cancelled"], "the stream to be cancelled")
    assert not gate.timed_out
    wait_for(lambda: engine.pending() == 0, "the engine to drop the stream")
    assert engine.counts["cancelled"] - before["cancelled"] == 2
    assert engine.counts["sentences"] - before["sentences"] == 1


# -- bad input, overload ----------------------------------------------------------------------------------------

BAD = [
    (b'{"input": "Hello.",', 400, "invalid_json", "malformed JSON"),
    (b"\xff\xfe", 400, "invalid_json", "not UTF-8"),
    ([1, 2], 400, "invalid_json", "must be an object"),
    ({}, 400, "missing_field", "'input'"),
    ({"input": ""}, 400, "empty_input", "empty"),
    ({"input": " \n\t "}, 400, "empty_input", "only whitespace"),
    ({"input": "?!... --"}, 400, "nothing_to_speak", "nothing to speak"),
    ({"input": "\u4f60\u597d\u3002"}, 400, "nothing_to_speak", "CJK"),
    ({"input": 42}, 400, "invalid_type", "'input' must be a string"),
    ({"input": "x" * 2001}, 413, "input_too_long", "2,001 characters; the limit is 2,000"),
    ({"input": "Yes. " * 9}, 413, "too_many_sentences", "9 sentences; the limit is 8"),
    ({"input": "Hi.", "response_format": "mp3"}, 400, "unsupported_format", "'mp3'"),
    ({"input": "Hi.", "response_format": "flac", "stream": True}, 400, "unsupported_stream", "not flac"),
    ({"input": "Hi.", "speed": 1.5}, 400, "unsupported_speed", "'speed' 1.5"),
    ({"input": "Hi.", "speed": 9}, 400, "out_of_range", "'speed'"),
    ({"input": "Hi.", "sigma": "high"}, 400, "invalid_type", "'sigma' must be a number"),
    ({"input": "Hi.", "denoise": 2}, 400, "out_of_range", "'denoise' must be a number from 0 to 1"),
    ({"input": "Hi.", "seed": -1}, 400, "out_of_range", "'seed'"),
    ({"input": "Hi.", "seed": 1.5}, 400, "invalid_type", "'seed' must be an integer"),
    ({"input": "Hi.", "stream": "yes"}, 400, "invalid_type", "'stream'"),
    ({"input": "Hi.", "model": "gpt-4"}, 400, "model_not_found", "'gpt-4'"),
    ({"input": "Hi.", "voice": "morgan"}, 400, "unsupported_voice", "'morgan'"),
    ({"input": "Hi.", "sigmas": 1}, 400, "unknown_field", "unknown field 'sigmas'"),
    ({"input": "Hi.", "instructions": "whisper"}, 400, "unsupported_field", "'instructions'"),
    (b"{" + b" " * 70_000 + b"}", 413, "body_too_large", "limit"),
]


@pytest.mark.parametrize("body, status, code, words", BAD, ids=[b[2] + str(i) for i, b in enumerate(BAD)])
def test_bad_input_gets_a_4xx_json_error_naming_the_problem(server, body, status, code, words):
    for path in ("/v1/audio/speech", "/v1/jtts/speech"):
        got, headers, data = post(server["url"], body, path)
        error = json.loads(data)["error"]
        assert (got, error["code"]) == (status, code), error
        assert words in error["message"] and headers["content-type"] == "application/json"


def test_wrong_method_and_path_are_json_errors_and_the_server_survives(server):
    for method, path, status in (("GET", "/v1/audio/speech", 405), ("POST", "/nowhere", 404)):
        r = Client(server["url"]).request(method, path, {"input": "Hi."} if method == "POST" else None)
        assert r.status == status and json.loads(r.read())["error"]["code"] in ("method_not_allowed", "not_found")
    assert post(server["url"], {"input": A})[0] == 200


def test_overload_is_503_with_retry_after_and_the_admitted_finish(server):
    engine = server["engine"]
    eight = " ".join([A, B] * 4)
    results = []
    with Gate(engine, hold=lambda jobs: len(gate.batches) == 1) as gate:
        threads = [threading.Thread(target=lambda: results.append(post(server["url"], {"input": eight})))
                   for _ in range(2)]
        for t in threads:
            t.start()
        wait_for(lambda: engine.pending() == 16, "16 sentences admitted")
        status, headers, data = post(server["url"], {"input": A})
        assert status == 503 and json.loads(data)["error"]["code"] == "overloaded"
        assert 1 <= int(headers["retry-after"]) <= 120
        health = json.loads(Client(server["url"]).request("GET", "/healthz").read())
        assert health["pending"] == 16 and health["max_pending"] == 16
        gate.hold = lambda jobs: False
        for t in threads:
            t.join(60)
    assert [r[0] for r in results] == [200, 200]
    assert all(len(samples(r[2])) == 8 * STEPS * HOP + 7 * GAP for r in results)


# -- page, health, metrics, command line ------------------------------------------------------------------------

def test_page_health_models_and_metrics(server):
    from prometheus_client.parser import text_string_to_metric_families

    def scrape():
        text = Client(server["url"]).request("GET", "/metrics").read().decode()
        return {s.name + json.dumps(s.labels, sort_keys=True): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    before = scrape()
    assert post(server["url"], {"input": A, "seed": 3})[0] == 200
    assert post(server["url"], {"input": ""})[0] == 400
    status, _, data = post(server["url"], {"input": f"{A} {B}", "seed": 3}, "/v1/jtts/speech")
    assert status == 200
    page = json.loads(data)
    assert page["seconds"] == round((2 * STEPS * HOP + GAP) / 22050, 4) and page["frames"] == 2 * STEPS
    assert (page["mel"]["height"], page["mel"]["width"]) == (80, 2 * STEPS)
    assert page["alignment"]["width"] == 2 * STEPS and samples(__import__("base64").b64decode(page["audio"])).size
    after = scrape()

    def delta(name, **labels):
        key = name + json.dumps(labels, sort_keys=True)
        return after.get(key, 0) - before.get(key, 0)

    assert delta("jtts_requests_total", endpoint="speech", status="200") == 1
    assert delta("jtts_requests_total", endpoint="speech", status="400") == 1
    assert delta("jtts_requests_total", endpoint="inspect", status="200") == 1
    assert delta("jtts_errors_total", code="empty_input") == 1
    assert delta("jtts_audio_seconds_total") == pytest.approx((3 * STEPS * HOP + GAP) / 22050)
    assert delta("jtts_sentences_total") == 3
    assert delta("jtts_request_duration_seconds_count", endpoint="speech") == 2
    assert delta("jtts_time_to_first_audio_seconds_count") == 2
    assert delta("jtts_stage_seconds_count", stage="waveglow") >= 2
    assert after["jtts_queue_sentences{}"] == 0 and "jtts_pending_sentences{}" in after

    r = Client(server["url"]).request("GET", "/healthz")
    health = json.loads(r.read())
    assert r.status == 200 and health["status"] == "ok" and health["sample_rate"] == 22050
    html = Client(server["url"]).request("GET", "/").read().decode()
    for part in ('id="text"', 'id="speak"', "<audio", 'id="mel"', 'id="alignment"', 'id="seed"'):
        assert part in html
    models = json.loads(Client(server["url"]).request("GET", "/v1/models").read())
    assert {"tts-1", "jtts-tacotron2-waveglow"} <= {m["id"] for m in models["data"]}


def test_serve_help_imports_neither_jax_nor_the_web_stack():
    code = ("import argparse, sys; from jtts.serve import add_serve_parser; p = argparse.ArgumentParser(); "
            "add_serve_parser(p.add_subparsers()); p.format_help(); "
            "print(sorted(m for m in ('jax', 'starlette', 'uvicorn', 'prometheus_client') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_option_and_port_errors_come_before_any_model_loads(server):
    with pytest.raises(UsageError, match="--max-sentences 8 is more than --max-queue 4"):
        run(serve_args(server["taco"], server["wg"], "--max-queue", "4"))
    busy = bind("127.0.0.1", 0)
    busy.listen()
    port = busy.getsockname()[1]
    try:
        with pytest.raises(JttsError, match=f"cannot listen on 127.0.0.1:{port}"):
            run(serve_args("/nonexistent/model", server["wg"], "--port", str(port)))
    finally:
        busy.close()


def test_vocoding_a_batch_of_rows_gives_each_row_what_it_gets_alone(server):
    import jax

    from jtts import models
    from jtts.chunked import chunked_infer
    from jtts.pipeline import vocode_sentences

    vocoder = models.load(server["wg"]).inference()
    rng = np.random.default_rng(0)
    mels = [rng.normal(0, 0.5, (80, n)).astype(np.float32) for n in (12, 16, 1)]
    keys = [jax.random.key(i) for i in range(len(mels))]
    sigmas = [SIGMA, 0.0, 0.9]
    # 16 and 12 frames in one call of 2 rows, 1 frame alone (few new shapes: compiling is most of this test's time)
    got = vocode_sentences(vocoder, mels, keys, sigmas, max_rows=4)
    for mel, key, sigma, audio in zip(mels, keys, sigmas, got):
        alone = np.asarray(chunked_infer(vocoder, mel[None], sigma=sigma, key=jax.random.fold_in(key, 1)))[0]
        assert audio.shape == alone.shape == (mel.shape[1] * HOP,)
        err = np.abs(audio - alone).max() / np.abs(alone).max()
        assert err < 1e-5, (mel.shape, err)  # float rounding (measured: 0 here, <= 4.4e-7 at other lengths)
