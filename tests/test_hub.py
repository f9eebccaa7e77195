"""The model cache against a local HTTP server: first download + conversion, cache hits without any request,
resumed downloads, wrong sizes, 404, no network, a damaged download, a half-written model directory, and the
fallback to NGC's per-version zip when the single-file URL is refused or serves a web page."""
import hashlib
import io
import json
import shutil
import socket
import time
import zipfile

import numpy as np
import pytest
import soundfile as sf

from jtts.checkpoint import read_meta
from jtts.cli import main
from jtts.hub import REMOTES, Hub, HubError, Remote
from small_tts import FileServer, small_checkpoints

# the test server mirrors the hub's own table, so the paths are taken from it rather than copied
TACO_PATH, WG_PATH = REMOTES["tacotron2"].path, REMOTES["waveglow"].path
TACO_ZIP, WG_ZIP = REMOTES["tacotron2"].zip_path, REMOTES["waveglow"].zip_path
TACO_NAME = TACO_PATH.rsplit("/", 1)[1]


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    taco, wg = small_checkpoints(tmp_path_factory.mktemp("ckpt"))
    return {TACO_PATH: taco.read_bytes(), WG_PATH: wg.read_bytes()}


@pytest.fixture
def server(blobs):
    srv = FileServer(blobs)
    yield srv
    srv.close()


def _hub(tmp_path, server, **kw):
    return Hub(tmp_path / "cache", server.url, quiet=True, backoff=0.0, **kw)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("jtts synthesize: error: "), err
    return lines[0]


def test_default_urls_are_ngc_files_and_version_zips():
    # the URLs DLE's download scripts use (the single file, and the version's zip of the newer scripts)
    hub = Hub("/nonexistent", None)
    ngc = "https://api.ngc.nvidia.com/v2/models/nvidia/"
    assert hub.url("waveglow") == ngc + "waveglow_ckpt_amp_256/versions/20.01.0/files/nvidia_waveglow256pyt_fp16.pt"
    assert hub.zip_url("waveglow") == ngc + "waveglow_ckpt_amp_256/versions/20.01.0/zip"
    assert hub.url("tacotron2") == ngc + "tacotron2_pyt_ckpt_amp/versions/19.12.0/files/nvidia_tacotron2pyt_fp16.pt"
    assert hub.zip_url("tacotron2") == ngc + "tacotron2_pyt_ckpt_amp/versions/19.12.0/zip"


def test_cache_location_from_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("JTTS_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert Hub().root == tmp_path / "xdg" / "jtts"
    monkeypatch.setenv("JTTS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("JTTS_BASE_URL", "http://mirror.example/models")
    hub = Hub()
    assert hub.root == tmp_path / "home"
    assert hub.url("tacotron2") == "http://mirror.example/models/" + TACO_PATH


def test_first_run_downloads_converts_and_second_run_uses_cache(server, blobs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JTTS_HOME", str(tmp_path / "home"))
    args = ["synthesize", "The first run fetches the models.", "--base-url", server.url, "--max-decoder-steps", "16",
            "--seed", "3"]
    assert main(args + ["-o", str(tmp_path / "a.wav")]) == 0
    assert sorted(p for p, _ in server.log) == sorted([TACO_PATH, WG_PATH])
    home = tmp_path / "home"
    for kind, path in (("tacotron2", TACO_PATH), ("waveglow", WG_PATH)):
        name = path.rsplit("/", 1)[1]
        record = json.loads((home / "downloads" / (name + ".json")).read_text())
        assert record == {"url": server.url + path, "size": len(blobs[path]), "sha256": _sha(blobs[path])}
        assert (home / "downloads" / name).read_bytes() == blobs[path]
        meta = read_meta(home / "models" / kind, kind)
        assert meta["source"]["sha256"] == _sha(blobs[path]) and meta["source"]["url"] == server.url + path
    assert not list(home.glob("**/*.part")) and not list(home.glob("models/.*"))

    server.log.clear()
    assert main(args + ["-o", str(tmp_path / "b.wav"), "--quiet"]) == 0
    assert server.log == [], "a warm cache must not touch the network"
    a, sr = sf.read(tmp_path / "a.wav", dtype="int16")
    b, _ = sf.read(tmp_path / "b.wav", dtype="int16")
    assert sr == 22050 and len(a) == 16 * 256 and np.array_equal(a, b) and np.abs(a).max() > 0


def test_dropped_connection_is_resumed_in_the_same_run(server, blobs, tmp_path):
    cut = 5_000_000
    server.faults[WG_PATH] = [{"drop_after": cut}, {}]
    path = _hub(tmp_path, server).download("waveglow")
    assert path.read_bytes() == blobs[WG_PATH]
    assert server.log == [(WG_PATH, None), (WG_PATH, f"bytes={cut}-")]
    record = json.loads(path.with_name(path.name + ".json").read_text())
    assert record["sha256"] == _sha(blobs[WG_PATH])


def test_interrupted_download_resumes_on_the_next_run(server, blobs, tmp_path):
    cut = 1_234_567
    server.faults[WG_PATH] = [{"drop_after": cut}, {}]
    hub = _hub(tmp_path, server, retries=0)
    with pytest.raises(HubError, match=r"interrupted 1 times.*1,234,567 bytes kept.*run again to resume"):
        hub.download("waveglow")
    dest = hub.download_path("waveglow")
    assert not dest.exists() and dest.with_name(dest.name + ".part").stat().st_size == cut
    assert hub.download("waveglow").read_bytes() == blobs[WG_PATH]
    assert server.log[-1] == (WG_PATH, f"bytes={cut}-")
    assert not dest.with_name(dest.name + ".part").exists()


def test_wrong_size_is_refused_and_nothing_left(server, blobs, tmp_path):
    data = blobs[TACO_PATH]
    remotes = {"tacotron2": Remote("tacotron2", TACO_PATH, size=len(data)), "waveglow": REMOTES["waveglow"]}
    server.faults[TACO_PATH] = [{"body": data[:-1000]}]
    hub = _hub(tmp_path, server, remotes=remotes)
    with pytest.raises(HubError, match=f"offers {len(data) - 1000:,} bytes, expected {len(data):,}"):
        hub.download("tacotron2")
    assert not list((tmp_path / "cache" / "downloads").iterdir())


def test_server_announcing_more_than_it_sends(server, blobs, tmp_path):
    # Content-Length 500 bytes too high on every answer: each resume gets nothing more, then we give up
    server.faults[TACO_PATH] = [{"lie": 500}]
    hub = _hub(tmp_path, server, retries=2)
    with pytest.raises(HubError, match=r"interrupted 3 times .*closed at byte"):
        hub.download("tacotron2")
    assert not hub.download_path("tacotron2").exists(), "no file may look complete"
    assert len(server.log) == 3


def test_file_and_zip_both_refused_is_one_line_naming_both_urls_and_the_flag(server, tmp_path, monkeypatch,
                                                                          capsys):
    monkeypatch.setenv("JTTS_HOME", str(tmp_path / "home"))
    server.faults[TACO_PATH] = [{"status": 404}]  # and the server has no zip
    code = main(["synthesize", "Hello.", "-o", str(tmp_path / "x.wav"), "--base-url", server.url])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 1
    assert f"{server.url}{TACO_PATH}: HTTP 404" in line and f"{server.url}{TACO_ZIP}: HTTP 404" in line
    assert f"--tacotron2 {TACO_NAME}" in line
    assert server.log == [(TACO_PATH, None), (TACO_ZIP, None)]
    assert not (tmp_path / "x.wav").exists()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connections are refused at once
    return port


def test_offline_fails_fast_naming_files_and_flags(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JTTS_HOME", str(tmp_path / "home"))
    base = f"http://127.0.0.1:{_closed_port()}/mirror/"
    t0 = time.perf_counter()
    code = main(["synthesize", "Hello.", "-o", str(tmp_path / "x.wav"), "--base-url", base])
    elapsed = time.perf_counter() - t0
    line = _one_error_line(capsys.readouterr().err)
    assert code == 1 and elapsed < 10
    assert "connection refused" in line.lower()
    assert base + TACO_PATH in line and base + WG_PATH in line
    assert "--tacotron2 nvidia_tacotron2pyt_fp16.pt --waveglow nvidia_waveglow256pyt_fp16.pt" in line
    assert not (tmp_path / "x.wav").exists()


def test_offline_flag_names_only_the_missing_model(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JTTS_HOME", str(tmp_path / "home"))
    taco_dir = tmp_path / "home" / "models" / "tacotron2"
    Hub(tmp_path / "home", server.url, quiet=True).ensure("tacotron2")
    server.log.clear()
    code = main(["synthesize", "Hello.", "-o", str(tmp_path / "x.wav"), "--offline", "--base-url", server.url])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 1 and "--offline given" in line and server.log == []
    assert WG_PATH in line and TACO_PATH not in line and "--waveglow" in line and "--tacotron2" not in line
    assert taco_dir.is_dir()


def test_damaged_download_detected_later_and_fetched_again(server, blobs, tmp_path):
    hub = _hub(tmp_path, server)
    hub.ensure("tacotron2")
    pt = hub.download_path("tacotron2")
    data = bytearray(pt.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content: only the sha256 can tell
    pt.write_bytes(bytes(data))
    shutil.rmtree(hub.model_path("tacotron2"))  # so the download is needed again
    server.log.clear()
    hub.ensure("tacotron2")
    assert server.log == [(TACO_PATH, None)]
    assert pt.read_bytes() == blobs[TACO_PATH]
    # the server now holds another file: the recorded sha256 refuses it
    pt.unlink()
    shutil.rmtree(hub.model_path("tacotron2"))
    server.faults[TACO_PATH] = [{"body": bytes(data)}]
    with pytest.raises(HubError, match=f"sha256 {_sha(bytes(data))} differs from the expected {_sha(blobs[TACO_PATH])}"):
        hub.ensure("tacotron2")
    assert not pt.exists() and not pt.with_name(pt.name + ".part").exists()


def test_half_written_model_directory_is_rebuilt_not_used(server, tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    monkeypatch.setenv("JTTS_HOME", str(home))
    hub = Hub(home, server.url, quiet=True)
    hub.ensure_all()
    models = home / "models"
    # A run killed mid-write: a conversion's temporary directory, and a model directory without its model.json
    # (e.g. copied by hand, or written by a tool that is not atomic).
    shutil.copytree(models / "waveglow", models / ".waveglow.partial-abc123")
    (models / "tacotron2" / "model.json").unlink()
    # A parameter file gone from an otherwise complete directory: only loading notices.
    victim = next(p for p in sorted((models / "waveglow" / "params").rglob("*")) if p.is_file() and p.stat().st_size > 1000)
    victim.unlink()
    server.log.clear()
    code = main(["synthesize", "Rebuilt from the kept downloads.", "-o", str(tmp_path / "x.wav"), "--base-url",
                 server.url, "--max-decoder-steps", "16"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert server.log == [], "the kept downloads are enough to rebuild"
    assert "cached tacotron2 model" in err and "unusable" in err and "rebuilding" in err
    assert "cached waveglow model is damaged" in err
    assert (models / "tacotron2" / "model.json").is_file() and victim.exists()
    assert not [p for p in models.iterdir() if p.name.startswith(".")]
    assert len(sf.read(tmp_path / "x.wav")[0]) == 16 * 256


# -- NGC's per-version zip ------------------------------------------------------------------------------------

def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:  # stored: the zip's bytes hold the checkpoint's
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def taco_zip(server, blobs):
    """NGC's zip of the Tacotron 2 version, with other files beside the checkpoint."""
    data = _zip({"README.md": b"# Tacotron 2\n", TACO_NAME: blobs[TACO_PATH], "meta/info.json": b"{}"})
    server.files[TACO_ZIP] = data
    return data


HTML = b"<!DOCTYPE html>\n<html><body>Sign in to NGC</body></html>\n"
REFUSALS = {"404": {"status": 404}, "403": {"status": 403}, "401": {"status": 401},
            "html-200": {"body": HTML}, "json-200": {"body": b'{"requestStatus": {"statusCode": "UNAUTHORIZED"}}'}}


@pytest.mark.parametrize("refusal", REFUSALS)
def test_refused_file_url_falls_back_to_the_version_zip(server, blobs, taco_zip, tmp_path, capsys, refusal):
    server.faults[TACO_PATH] = [REFUSALS[refusal]]
    hub = Hub(tmp_path / "cache", server.url, backoff=0.0)
    path = hub.download("tacotron2")
    assert path.read_bytes() == blobs[TACO_PATH]
    assert server.log == [(TACO_PATH, None), (TACO_ZIP, None)]
    record = json.loads(path.with_name(path.name + ".json").read_text())
    assert record == {"url": server.url + TACO_ZIP, "member": TACO_NAME, "size": len(blobs[TACO_PATH]),
                      "sha256": _sha(blobs[TACO_PATH])}
    said = [line for line in capsys.readouterr().err.splitlines() if "zip" in line and "using" in line]
    assert len(said) == 1 and f"using {TACO_NAME} from the version's zip {server.url}{TACO_ZIP}" in said[0]
    assert sorted(p.name for p in path.parent.iterdir()) == [TACO_NAME, TACO_NAME + ".json"], "zip not deleted"
    server.log.clear()
    assert hub.download("tacotron2") == path and server.log == [], "the extracted file is the cache's from now on"


def test_model_converted_from_the_zip_records_it(server, blobs, taco_zip, tmp_path):
    server.faults[TACO_PATH] = [{"status": 404}]
    hub = _hub(tmp_path, server)
    meta = read_meta(hub.ensure("tacotron2"), "tacotron2")
    assert meta["source"]["url"] == server.url + TACO_ZIP and meta["source"]["sha256"] == _sha(blobs[TACO_PATH])


def test_server_error_is_not_a_reason_to_try_the_zip(server, taco_zip, tmp_path):
    server.faults[TACO_PATH] = [{"status": 500}]
    with pytest.raises(HubError, match=r"HTTP 500"):
        _hub(tmp_path, server).download("tacotron2")
    assert server.log == [(TACO_PATH, None)]


def test_both_refused_names_both_urls_and_the_waveglow_flag(server, tmp_path):
    server.faults[WG_PATH] = [{"status": 403}]
    server.files[WG_ZIP] = HTML  # a sign-in page served with 200
    with pytest.raises(HubError) as e:
        _hub(tmp_path, server).download("waveglow")
    msg = str(e.value)
    assert "\n" not in msg and f"{server.url}{WG_PATH}: HTTP 403" in msg
    assert f"{server.url}{WG_ZIP}: answered b'<!DOCTYPE html>" in msg
    assert "--waveglow nvidia_waveglow256pyt_fp16.pt" in msg and "--tacotron2" not in msg
    assert not list((tmp_path / "cache" / "downloads").iterdir())


BAD_ZIPS = {
    "no .pt": (lambda blob: _zip({"README.md": b"read me", "model.onnx": b"\x08\x01"}),
               r"the zip holds no \.pt checkpoint \(it holds: README\.md, model\.onnx\)"),
    "not a checkpoint": (lambda blob: _zip({TACO_NAME: HTML}), f"{TACO_NAME} is not a torch checkpoint"),
    "two .pt": (lambda blob: _zip({"a.pt": blob, "b.pt": blob}), f"several .pt files and none named {TACO_NAME}"),
    "truncated": (lambda blob: _zip({TACO_NAME: blob})[:len(blob) // 2], r"unreadable zip \(BadZipFile"),
}


@pytest.mark.parametrize("case", BAD_ZIPS)
def test_unusable_zip_is_a_clear_error_and_nothing_is_kept(server, blobs, tmp_path, case):
    make, message = BAD_ZIPS[case]
    server.faults[TACO_PATH] = [{"status": 404}]
    server.files[TACO_ZIP] = make(blobs[TACO_PATH])
    with pytest.raises(HubError, match=message) as e:
        _hub(tmp_path, server).download("tacotron2")
    assert str(e.value).startswith(server.url + TACO_ZIP + ": ") and "\n" not in str(e.value)
    assert not list((tmp_path / "cache" / "downloads").iterdir())


def test_interrupted_zip_download_resumes_on_the_next_run(server, blobs, taco_zip, tmp_path):
    cut = len(taco_zip) // 3
    server.faults[TACO_PATH] = [{"status": 404}]
    server.faults[TACO_ZIP] = [{"drop_after": cut}, {}]
    hub = _hub(tmp_path, server, retries=0)
    with pytest.raises(HubError, match=rf"{TACO_ZIP}: download interrupted 1 times.*{cut:,} bytes kept"):
        hub.download("tacotron2")
    downloads = tmp_path / "cache" / "downloads"
    assert [(p.name, p.stat().st_size) for p in downloads.iterdir()] == [("nvidia_tacotron2pyt_fp16.zip.part", cut)]
    assert hub.download("tacotron2").read_bytes() == blobs[TACO_PATH]
    assert server.log[-2:] == [(TACO_PATH, None), (TACO_ZIP, f"bytes={cut}-")]
    assert sorted(p.name for p in downloads.iterdir()) == [TACO_NAME, TACO_NAME + ".json"]
