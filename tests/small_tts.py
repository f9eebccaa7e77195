"""Small Tacotron 2 / WaveGlow checkpoints in DLE's training-checkpoint layout, and a local HTTP server that
serves them the way NGC would (with Range support) or the ways a network fails, for the CLI and hub tests."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch

from jtts.hub import REMOTES
from reference.tacotron2_torch import tacotron2_small_config
from reference.waveglow_torch import waveglow_small_config
from reference.weights import live_tacotron2, live_waveglow, save_dle_checkpoint

TACO_PATH, WG_PATH = REMOTES["tacotron2"].path, REMOTES["waveglow"].path


def small_checkpoints(folder: Path, gate_bias: float = -10.0, waveglow: bool = True) -> tuple[Path, Path | None]:
    """-> (tacotron2.pt, waveglow.pt or None). gate_bias -10: the decoder never stops by itself, so every
    sentence runs exactly --max-decoder-steps frames (known lengths); +10 stops it at the first step."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = tacotron2_small_config()
    taco = live_tacotron2(cfg, seed=21)
    with torch.no_grad():
        taco.decoder.gate_layer.linear_layer.bias.fill_(gate_bias)
    save_dle_checkpoint(folder / "tacotron2.pt", taco, cfg, module_prefix=True, with_optimizer=True)
    if not waveglow:
        return folder / "tacotron2.pt", None
    wcfg = waveglow_small_config()
    # without Adam moments: 36 MB instead of 107 (the upsampling kernel alone is 6.5M parameters)
    save_dle_checkpoint(folder / "waveglow.pt", live_waveglow(wcfg, seed=22), wcfg, with_optimizer=False)
    return folder / "tacotron2.pt", folder / "waveglow.pt"


class FileServer:
    """Serves {relative path: bytes} on 127.0.0.1 over HTTP/1.0 with byte ranges.

    faults[path] (consumed one per request while it lasts, the last one sticking when `sticky`):
      {"drop_after": n}   send the headers of the full answer, then only n bytes, then close
      {"status": 404}     answer with that error
      {"body": b"..."}    serve these bytes instead (a different or truncated file on the server)
      {"lie": k}          announce k bytes more than the body holds, send the body, close
    log: (path, Range header or None) per request.
    """

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.faults: dict[str, list[dict]] = {}
        self.log: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.lstrip("/")
                rng = self.headers.get("Range")
                server.log.append((path, rng))
                queue = server.faults.get(path) or [{}]
                fault = queue.pop(0) if len(queue) > 1 else queue[0]
                if "status" in fault or path not in server.files:
                    self.send_error(fault.get("status", 404))
                    return
                body = fault.get("body", server.files[path])
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if start >= len(body) and rng:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.end_headers()
                    return
                chunk = body[start:]
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body) + fault.get('lie', 0)}")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(chunk) + fault.get("lie", 0)))
                self.end_headers()
                self.wfile.write(chunk[:fault["drop_after"]] if "drop_after" in fault else chunk)
                self.wfile.flush()
                self.close_connection = True

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # clients that hang up mid-answer are what several tests do on purpose

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
