"""The /v1 streaming protocol: what a client may send, what the server answers, and the close codes.

Every message is one JSON text frame. Arrays travel as base64 of little-endian float32 in C order
(`encoding: "base64-float32-le"`), with their shapes fixed by the protocol:
  joints    (4, 22, 3)  global joint positions in metres, Y up (always sent)
  features  (4, 272)    de-normalised 272-dim features (with ?features=1)
  rotations (4, 22, 4)  unit quaternions (w, x, y, z): [0] the pelvis global rotation, [1:] parent-local
                        SMPL rotations; the pelvis position is joints[:, 0] (with ?rotations=1)
Client -> server:
  {"type": "prompt", "text": str, "seconds": number (optional), "after_current": bool (optional)}
  {"type": "ping"}      {"type": "close"}
Server -> client: hello (once), ack (a prompt was queued), frames (one per latent), events (events
without frames), pong, error. docs/serve.md documents the fields; `tests/test_serve_protocol.py` holds
the server to them.
"""
from __future__ import annotations

import base64
import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

PROTOCOL_VERSION = 1
ENCODING = "base64-float32-le"
MAX_PROMPT_SECONDS = 600.0

# Close codes (RFC 6455 section 7.4.1, and uvicorn's on shutdown). Every close carries a reason text.
CLOSE_NORMAL = 1000          # the client sent {"type": "close"}, or the idle timeout passed
CLOSE_POLICY = 1008          # missing/wrong token, Origin not allowed, bad query, client too slow
CLOSE_TOO_BIG = 1009         # a message over max_message_bytes
CLOSE_INTERNAL = 1011        # the engine failed on this stream (the server keeps running)
CLOSE_RESTART = 1012         # the server (or a Ray replica) is shutting down: reconnect
CLOSE_FULL = 1013            # all --max-streams streams are taken: try again later
CLOSE_CODES = {
    CLOSE_NORMAL: "normal: client asked to close, or idle timeout",
    CLOSE_POLICY: "policy: missing or wrong token, Origin not allowed, bad query parameter, client too slow",
    CLOSE_TOO_BIG: "message too big",
    CLOSE_INTERNAL: "internal error on this stream",
    CLOSE_RESTART: "server shutting down or restarting: reconnect",
    CLOSE_FULL: "server full: try again later",
    1006: "(seen by the client, never sent) connection lost without a close frame: the server or its "
          "Ray replica died; reconnect",
}


@dataclass
class ServeLimits:
    """Everything a client can make the server hold or do, bounded."""
    max_streams: int = 32                 # concurrent WebSocket streams
    max_prompt_chars: int = 300
    max_prompt_seconds: float = 120.0     # "seconds" of one prompt
    max_queued_prompts: int = 8           # prompts waiting per stream
    max_message_bytes: int = 4096         # one client message
    messages_per_second: float = 10.0     # sustained client message rate (token bucket)
    message_burst: int = 20               # bucket size
    idle_timeout_s: float = 300.0         # no client message for this long closes the stream
    max_backlog: int = 64                 # server messages waiting for a slow client (64 = 8.5 s of frames)
    max_generate_seconds: float = 30.0    # POST /v1/generate length
    max_generate_jobs: int = 2            # concurrent one-shot generations

    def validate(self) -> None:
        for name in ("max_streams", "max_prompt_chars", "max_queued_prompts", "max_message_bytes",
                     "message_burst", "max_backlog", "max_generate_jobs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        for name in ("max_prompt_seconds", "messages_per_second", "idle_timeout_s", "max_generate_seconds"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        if self.max_prompt_seconds > MAX_PROMPT_SECONDS or self.max_generate_seconds > MAX_PROMPT_SECONDS:
            raise ValueError(f"prompt and generate lengths are capped at {MAX_PROMPT_SECONDS:g} seconds")

    def as_dict(self) -> dict:
        return asdict(self)


class ProtocolError(ValueError):
    """A client message or parameter the server refuses; `code` is the error code sent back."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class Prompt:
    text: str
    seconds: float | None = None
    after_current: bool = False


@dataclass
class StreamOptions:
    seed: int | None = None
    features: bool = False
    rotations: bool = False


@dataclass
class Close:
    """A close the server sends (code + reason; the reason must fit in a close frame: 123 bytes)."""
    code: int
    reason: str

    def __post_init__(self):
        r = self.reason.encode()
        if len(r) > 123:
            self.reason = r[:120].decode(errors="ignore") + "..."


def check_prompt_text(text, limits: ServeLimits) -> str:
    """The engine's prompt check (runtime.policy: a string, UTF-8, not blank) and the service's length."""
    from motionstreamer.runtime.policy import check_prompt

    try:
        text = check_prompt(text)
    except (TypeError, ValueError) as e:
        raise ProtocolError("bad_prompt", f"'text': {e}") from None
    if len(text) > limits.max_prompt_chars:
        raise ProtocolError("bad_prompt", f"'text' is too long ({len(text)} characters, at most "
                                          f"{limits.max_prompt_chars})")
    return text


def check_seconds(seconds, limit: float, name: str = "seconds") -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
            or not 0 < seconds <= limit:
        raise ProtocolError("bad_prompt", f"'{name}' must be a number in (0, {limit:g}], got {seconds!r}")
    return float(seconds)


def parse_client_message(data: str, limits: ServeLimits) -> Prompt | str:
    """Returns a Prompt, or the message type "ping" / "close". ProtocolError for anything else."""
    try:
        msg = json.loads(data)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ProtocolError("bad_message", f"not valid JSON ({e.__class__.__name__}: {str(e)[:80]})") from None
    if not isinstance(msg, dict):
        raise ProtocolError("bad_message", f"a message must be a JSON object, got {type(msg).__name__}")
    kind = msg.get("type")
    if kind in ("ping", "close"):
        return kind
    if kind != "prompt":
        raise ProtocolError("bad_message", f"unknown message type {kind!r}; expected 'prompt', 'ping' or 'close'")
    unknown = set(msg) - {"type", "text", "seconds", "after_current"}
    if unknown:
        raise ProtocolError("bad_message", f"unknown field(s) {sorted(unknown)} in a prompt message")
    text = check_prompt_text(msg.get("text"), limits)
    seconds = msg.get("seconds")
    if seconds is not None:
        seconds = check_seconds(seconds, limits.max_prompt_seconds)
    after = msg.get("after_current", False)
    if not isinstance(after, bool):
        raise ProtocolError("bad_message", f"'after_current' must be true or false, got {after!r}")
    return Prompt(text, seconds, after)


def _flag(query, name: str) -> bool:
    v = query.get(name)
    if v is None:
        return False
    if v.lower() in ("1", "true", "yes"):
        return True
    if v.lower() in ("0", "false", "no", ""):
        return False
    raise ProtocolError("bad_query", f"query parameter {name!r} must be 0 or 1, got {v[:20]!r}")


KNOWN_QUERY = {"seed", "features", "rotations", "token"}


def parse_stream_options(query) -> StreamOptions:
    """?seed=INT&features=0|1&rotations=0|1 (token= is checked by the app)."""
    unknown = set(query.keys()) - KNOWN_QUERY
    if unknown:
        raise ProtocolError("bad_query", f"unknown query parameter(s) {sorted(unknown)[:4]}; known: "
                                         f"{sorted(KNOWN_QUERY)}")
    seed = query.get("seed")
    if seed is not None:
        try:
            seed = int(seed)
        except ValueError:
            raise ProtocolError("bad_query", f"seed must be an integer, got {seed[:20]!r}") from None
        if not 0 <= seed < 2**63:
            raise ProtocolError("bad_query", "seed must be in [0, 2**63)")
    return StreamOptions(seed, _flag(query, "features"), _flag(query, "rotations"))


# ----------------------------------------------------------------------------- server -> client
def encode_array(a) -> str:
    """float32 little-endian bytes, C order, base64 (decode: np.frombuffer(b64decode(s), '<f4'))."""
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode("ascii")


def decode_array(s: str, shape: tuple) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype="<f4").reshape(shape)


def dumps(msg: dict) -> str:
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False)


def error(code: str, message: str) -> str:
    return dumps({"type": "error", "code": code, "message": message})


@dataclass
class Event:
    kind: str            # prompt_change | action_end | finished
    latent: int
    prompt: str

    def as_dict(self) -> dict:
        return {"kind": self.kind, "latent": self.latent, "prompt": self.prompt}


@dataclass
class FramesMessage:
    latent: int
    frame: int
    prompt: str
    joints: np.ndarray                        # (4, 22, 3)
    underruns: int
    t: float                                  # server wall clock when the latent was produced
    events: list = field(default_factory=list)
    queue: list | None = None                 # pending prompts, when it changed
    features: np.ndarray | None = None
    rotations: np.ndarray | None = None

    def to_json(self) -> str:
        msg = {"type": "frames", "latent": self.latent, "frame": self.frame, "prompt": self.prompt,
               "joints": encode_array(self.joints), "events": [e.as_dict() for e in self.events],
               "underruns": self.underruns, "t": round(self.t, 4)}
        if self.queue is not None:
            msg["queue"] = self.queue
        if self.features is not None:
            msg["features"] = encode_array(self.features)
        if self.rotations is not None:
            msg["rotations"] = encode_array(self.rotations)
        return dumps(msg)
