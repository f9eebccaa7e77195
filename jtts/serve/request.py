"""The body of POST /v1/audio/speech: OpenAI's speech request (model, input, voice, response_format, speed)
plus jtts' own options (sigma, denoise, seed, stream), checked field by field.

Every problem is an `ApiError`: an HTTP status in the 4xx range and a JSON body in OpenAI's error shape,
{"error": {"message", "type", "param", "code"}}, whose message names the field and what was wrong with it.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields

from jtts.serve.formats import FORMATS, STREAMABLE

MODEL = "jtts-tacotron2-waveglow"
MODEL_ALIASES = ("jtts", "tts-1", "tts-1-hd")  # OpenAI's names: clients written for OpenAI work unchanged
VOICE = "ljspeech"  # the NGC models' only speaker
# OpenAI's voice names are accepted for such clients and speak with the one voice there is (X-Voice says so)
OPENAI_VOICES = ("alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx", "sage",
                 "shimmer", "verse")
MAX_SEED = 2**32 - 1


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, code: str, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        kind = ("invalid_request_error" if self.status < 500 else "overloaded" if self.status == 503
                else "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    max_body: int = 64 * 1024        # bytes of JSON
    max_input_chars: int = 4096      # OpenAI's limit
    max_sentences: int = 64          # pieces after splitting; must not exceed the engine's max_pending
    max_chars: int = 200             # longer sentences are split (jtts synthesize --max-chars)


@dataclass(frozen=True)
class SpeechRequest:
    input: str
    model: str = MODEL
    voice: str = VOICE
    response_format: str = "wav"
    speed: float = 1.0
    sigma: float = 0.9
    denoise: float = 0.01
    seed: int = 0
    stream: bool = False
    stream_format: str = "audio"
    instructions: str = ""


_FIELDS = tuple(f.name for f in fields(SpeechRequest))


def _bad(message: str, code: str, param: str | None = None, status: int = 400) -> ApiError:
    return ApiError(status, message, code=code, param=param)


def _json_type(value) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def _string(name: str, value) -> str:
    if not isinstance(value, str):
        raise _bad(f"'{name}' must be a string, got {_json_type(value)}", "invalid_type", name)
    return value


def _number(name: str, value, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"'{name}' must be a number, got {_json_type(value)}", "invalid_type", name)
    if not (math.isfinite(value) and lo <= value <= hi):
        raise _bad(f"'{name}' must be a number from {lo:g} to {hi:g}, got {value!r}", "out_of_range", name)
    return float(value)


def _integer(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"'{name}' must be an integer, got {_json_type(value)} {value!r}"[:200], "invalid_type", name)
    if not lo <= value <= hi:
        raise _bad(f"'{name}' must be an integer from {lo} to {hi}, got {value}", "out_of_range", name)
    return value


def _choice(name: str, value, allowed: tuple[str, ...], code: str, what: str) -> str:
    value = _string(name, value)
    if value not in allowed:
        raise _bad(f"'{name}' {value[:40]!r} is not {what}: use {', '.join(allowed)}", code, name)
    return value


def parse_body(body: bytes) -> dict:
    try:
        obj = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise _bad(f"malformed JSON body: not UTF-8 (byte {e.start})", "invalid_json") from None
    except json.JSONDecodeError as e:
        raise _bad(f"malformed JSON body: {e.msg} (line {e.lineno}, column {e.colno})", "invalid_json") from None
    if not isinstance(obj, dict):
        raise _bad(f"the JSON body must be an object like {{\"input\": \"Hello.\"}}, got {_json_type(obj)}",
                   "invalid_json")
    return obj


def parse_speech(body: bytes, limits: Limits = Limits()) -> SpeechRequest:
    obj = {k: v for k, v in parse_body(body).items() if v is not None}  # null: the default, as OpenAI's SDK omits
    unknown = sorted(set(obj) - set(_FIELDS))
    if unknown:
        raise _bad(f"unknown field '{unknown[0][:40]}' (the fields are: {', '.join(_FIELDS)})", "unknown_field",
                   unknown[0][:40])
    if "input" not in obj:
        raise _bad("missing field 'input': the text to speak", "missing_field", "input")
    text = _string("input", obj["input"])
    if len(text) > limits.max_input_chars:
        raise _bad(f"'input' has {len(text):,} characters; the limit is {limits.max_input_chars:,}",
                   "input_too_long", "input", status=413)
    if not text.strip():
        raise _bad("'input' is empty: there is nothing to speak" if not text else
                   "'input' is only whitespace: there is nothing to speak", "empty_input", "input")
    fmt = _choice("response_format", obj.get("response_format", "wav"), tuple(FORMATS), "unsupported_format",
                  "a supported format")
    stream = obj.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad(f"'stream' must be true or false, got {_json_type(stream)}", "invalid_type", "stream")
    if stream and fmt not in STREAMABLE:
        raise _bad(f"'stream' is available for {' and '.join(STREAMABLE)}, not {fmt}", "unsupported_stream",
                   "stream")
    speed = _number("speed", obj.get("speed", 1.0), 0.25, 4.0)
    if speed != 1.0:
        raise _bad(f"'speed' {speed:g} is not supported: Tacotron 2 speaks at the rate it learned; send 1.0 or "
                   f"leave it out", "unsupported_speed", "speed")
    if _string("instructions", obj.get("instructions", "")).strip():
        raise _bad("'instructions' are not supported: this model has no controllable style", "unsupported_field",
                   "instructions")
    return SpeechRequest(
        input=text,
        model=_choice("model", obj.get("model", MODEL), (MODEL, *MODEL_ALIASES), "model_not_found", "a model here"),
        voice=_choice("voice", obj.get("voice", VOICE), (VOICE, *OPENAI_VOICES), "unsupported_voice",
                      "a voice here"),
        response_format=fmt, speed=speed, stream=stream,
        stream_format=_choice("stream_format", obj.get("stream_format", "audio"), ("audio",), "unsupported_stream",
                              "a supported stream format"),
        sigma=_number("sigma", obj.get("sigma", 0.9), 0.0, 10.0),
        denoise=_number("denoise", obj.get("denoise", 0.01), 0.0, 1.0),
        seed=_integer("seed", obj.get("seed", 0), 0, MAX_SEED),
    )


def prepare_text(text: str, limits: Limits = Limits(), text_frontend=None):
    """-> jtts.sentences.Prepared (ids of the model's `text_frontend`, DLE's if None), or a 4xx ApiError for text
    with nothing to speak or too many sentences."""
    from jtts.errors import NothingToSpeak
    from jtts.sentences import prepare
    from jtts.text import DLE_TEXT

    try:
        prepared = prepare(text, limits.max_chars, text_frontend or DLE_TEXT)
    except NothingToSpeak as e:
        raise _bad(f"'input': {e}", "nothing_to_speak", "input") from None
    if len(prepared.ids) > limits.max_sentences:
        raise _bad(f"'input' splits into {len(prepared.ids)} sentences; the limit is {limits.max_sentences} per "
                   f"request (send the rest in another request)", "too_many_sentences", "input", status=413)
    return prepared
