"""The `jtts serve` web page in a real browser: Debian's chromium, headless, driven through chromedriver by
selenium. The page loads, text is typed and submitted, the audio element receives a WAV that the browser itself
decodes to the right number of samples (and plays), the mel + alignment pictures are drawn, and an error from
the API is shown on the page.

tests/run.sh installs chromium and chromium-driver; in CI (CI=true) a missing browser fails this test rather
than skipping it."""
from __future__ import annotations

import base64
import io
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from jtts.serve.server import Background, build
from test_serve import GAP, HOP, STEPS, A, B, post, serve_args, tiny_model

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--autoplay-policy=no-user-gesture-required", "--window-size=1200,900")

# Runs in the page: the audio element's source fetched back, checked and decoded by the browser's own decoder
# at the file's rate (an OfflineAudioContext at 22050 Hz does not resample), then played (muted) for a moment.
INSPECT_AUDIO = """
const done = arguments[arguments.length - 1];
(async () => {
  const a = document.getElementById("audio");
  if (a.readyState < 1) await new Promise((r) => a.addEventListener("loadedmetadata", r, {once: true}));
  const buf = await (await fetch(a.src)).arrayBuffer();
  const head = Array.from(new Uint8Array(buf, 0, 12), (b) => String.fromCharCode(b)).join("");
  const decoded = await new OfflineAudioContext(1, 1, 22050).decodeAudioData(buf.slice(0));
  a.muted = true;
  await a.play();
  await new Promise((r) => setTimeout(r, 300));
  const played = a.currentTime > 0;
  a.pause();
  const colours = (id) => {
    const c = document.getElementById(id), d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    const seen = new Set();
    for (let i = 0; i < d.length; i += 4) seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
    return seen.size;
  };
  done({head, duration: a.duration, length: decoded.length, rate: decoded.sampleRate, played,
        samples: Array.from(decoded.getChannelData(0).subarray(0, 3000)),
        melColours: colours("mel"), alignmentColours: colours("alignment")});
})().catch((e) => done({error: String(e)}));
"""


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        why = "needs chromium and chromium-driver (tests/run.sh installs them with apt-get)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    root = tmp_path_factory.mktemp("browser")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JTTS_HOME", str(root / "home"))  # the XLA cache goes there, not into the user's
        app, _ = build(serve_args(tiny_model(root, "tacotron2", 1), tiny_model(root, "waveglow", 2), "--warmup",
                                  "none"))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={root / 'profile'}"):
        options.add_argument(flag)
    with Background(app) as url:
        driver = webdriver.Chrome(service=Service(DRIVER), options=options)
        driver.set_script_timeout(60)
        try:
            yield driver, url
        finally:
            driver.quit()


def _submit(driver, text: str, **fields):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    for name, value in {"text": text, **fields}.items():
        box = driver.find_element(By.ID, name)
        box.clear()
        box.send_keys(str(value))
    driver.find_element(By.ID, "speak").click()
    WebDriverWait(driver, 60).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state")
                                    in ("ready", "error"))
    return driver.find_element(By.TAG_NAME, "body").get_attribute("data-state"), \
        driver.find_element(By.ID, "status").text


def test_page_speaks_typed_text_into_a_playable_wav_of_the_right_length(page):
    driver, url = page
    driver.get(url + "/")
    assert "jtts" in driver.title
    state, status = _submit(driver, f"{A} {B}", seed=4, sigma=0.3)
    assert state == "ready", status
    n = 2 * STEPS * HOP + GAP
    assert f"{n / 22050:.2f} s of audio, 2 sentence(s), {2 * STEPS} frames" in status
    got = driver.execute_async_script(INSPECT_AUDIO)
    assert "error" not in got, got
    assert got["head"][:4] == "RIFF" and got["head"][8:] == "WAVE"
    assert (got["length"], got["rate"]) == (n, 22050)
    assert got["duration"] == pytest.approx(n / 22050, abs=1e-3) and got["played"]
    assert got["melColours"] > 20 and got["alignmentColours"] > 2  # pictures drawn, not blank

    # what the browser decoded is what the API answers for the same request (16-bit samples / 32768)
    status_code, _, wav = post(url, {"input": f"{A} {B}", "seed": 4, "sigma": 0.3})
    api = sf.read(io.BytesIO(wav), dtype="int16")[0][:3000] / 32768
    assert status_code == 200 and np.abs(np.array(got["samples"]) - api).max() <= 1 / 32768
    link = driver.find_element("id", "download")
    assert link.get_attribute("href").startswith("blob:") and link.is_displayed()


def test_page_shows_the_api_error(page):
    driver, url = page
    driver.get(url + "/")
    state, status = _submit(driver, "?!?")
    assert state == "error" and "nothing to speak" in status
    state, status = _submit(driver, A, seed=-3)
    assert state == "error" and "'seed'" in status


def test_page_json_answer_holds_the_wav(page):
    _, url = page
    status, _, data = post(url, {"input": A, "seed": 2, "sigma": 0.3}, "/v1/jtts/speech")
    import json

    answer = json.loads(data)
    audio = sf.read(io.BytesIO(base64.b64decode(answer["audio"])), dtype="int16")[0]
    assert status == 200 and len(audio) == STEPS * HOP and answer["sentences"] == [A]
