"""The /v1 streaming protocol: one pydantic model per message, the limits and the close codes.

Every message is one JSON text frame. Arrays travel as base64 of little-endian float32 in C order
(`encoding: "base64-float32-le"`), with their shapes fixed by the protocol:
  joints    (4, 22, 3)  global joint positions in metres, Y up (always sent)
  features  (4, 272)    de-normalised 272-dim features (with ?features=1)
  rotations (4, 22, 4)  unit quaternions (w, x, y, z): [0] the pelvis global rotation, [1:] parent-local
                        SMPL rotations; the pelvis position is joints[:, 0] (with ?rotations=1)
Client -> server (ClientMessage, a union on "type"): prompt, goal, clear_goal, ping, close.
Server -> client: hello (once), ack (a prompt was queued), goal_ack (a goal was set or cleared), frames
(one per latent), events (events without frames), pong, error. docs/serve.md documents the fields;
`tests/test_serve_protocol.py` holds the server to them. Prompt and seed checks are runtime.policy's;
this module maps their errors to the protocol's error codes.
"""
from __future__ import annotations

import base64
import json
import math
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from motionstreamer.runtime import policy

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
class Close:
    """A close the server sends (code + reason; the reason must fit in a close frame: 123 bytes)."""
    code: int
    reason: str

    def __post_init__(self):
        r = self.reason.encode()
        if len(r) > 123:
            self.reason = r[:120].decode(errors="ignore") + "..."


# ----------------------------------------------------------------------------- checks with the limits
def _limits(info: ValidationInfo) -> ServeLimits:
    return (info.context or {}).get("limits") or ServeLimits()


def _text(value: Any, info: ValidationInfo) -> str:
    """runtime.policy's prompt check with the service's length limit."""
    try:
        return policy.check_prompt(value, max_chars=_limits(info).max_prompt_chars)
    except TypeError as e:    # pydantic turns ValueError (not TypeError) into a validation error
        raise ValueError(str(e)) from None


def _seconds(value: Any, limit: float, name: str = "seconds") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 < value <= limit:
        raise ValueError(f"'{name}' must be a number in (0, {limit:g}], got {value!r}")
    return float(value)


def _error_text(e: ValidationError) -> tuple[str, str]:
    """(field, message) of the first error of a validation (the message a check raised, as it said it)."""
    err = e.errors(include_url=False)[0]
    field = str(err["loc"][-1]) if err["loc"] else ""
    return field, str(err.get("ctx", {}).get("error", err["msg"]))


# ----------------------------------------------------------------------------- client -> server
# the checked fields: the prompt (runtime.policy, the service's length), and the two durations
PromptText = Annotated[str, BeforeValidator(_text)]
PromptSeconds = Annotated[float, BeforeValidator(lambda v, info: _seconds(v, _limits(info).max_prompt_seconds))]
GenerateSeconds = Annotated[float, BeforeValidator(lambda v, info: _seconds(v, _limits(info).max_generate_seconds))]


class PromptMessage(BaseModel):
    """{"type": "prompt", "text": str, "seconds": number (optional), "after_current": bool (optional)}"""
    model_config = ConfigDict(extra="forbid")
    type: Literal["prompt"]
    text: PromptText
    seconds: PromptSeconds | None = None
    after_current: bool = False

    @field_validator("after_current", mode="before")
    @classmethod
    def _check_after_current(cls, v):
        if not isinstance(v, bool):
            raise ValueError(f"'after_current' must be true or false, got {v!r}")
        return v


class GoalMessage(BaseModel):
    """{"type": "goal", "x": number, "z": number, "heading": number (optional), "seconds": number (optional)}:
    steer the stream to the floor point (x, z) (metres, the stream's world: it starts at the origin facing
    +Z), facing `heading` there (radians, 0 = +Z, pi/2 = +X) within `seconds`, from the next latent on
    (StreamingEngine.set_goal; /v1/info "goals": any model while goal steering is on)."""
    model_config = ConfigDict(extra="forbid")
    type: Literal["goal"]
    x: float
    z: float
    heading: float | None = None
    seconds: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _check(cls, data):
        if isinstance(data, dict):   # runtime.policy's checks: numbers (not strings or booleans), finite, in range
            policy.make_goal(data.get("x"), data.get("z"), data.get("heading"), data.get("seconds"))
        return data


class ClearGoalMessage(BaseModel):
    """{"type": "clear_goal"}: drop the stream's goal from the next latent on."""
    model_config = ConfigDict(extra="forbid")
    type: Literal["clear_goal"]


class PingMessage(BaseModel):
    """{"type": "ping"}: answered with pong (a keep-alive; other fields are ignored)."""
    type: Literal["ping"]


class CloseMessage(BaseModel):
    """{"type": "close"}: the server closes the stream (1000)."""
    type: Literal["close"]


ClientMessage = Annotated[Union[PromptMessage, GoalMessage, ClearGoalMessage, PingMessage, CloseMessage],
                          Field(discriminator="type")]
_CLIENT_MESSAGE = TypeAdapter(ClientMessage)
PROMPT_FIELDS = ("text", "seconds")     # their errors are "bad_prompt"; every other one "bad_message"


def parse_client_message(data: str, limits: ServeLimits):
    """One client message (a ClientMessage model); ProtocolError ("bad_message", "bad_prompt" or "bad_goal")
    naming what is wrong."""
    try:
        msg = json.loads(data)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ProtocolError("bad_message", f"not valid JSON ({e.__class__.__name__}: {str(e)[:80]})") from None
    if not isinstance(msg, dict):
        raise ProtocolError("bad_message", f"a message must be a JSON object, got {type(msg).__name__}")
    try:
        return _CLIENT_MESSAGE.validate_python(msg, context={"limits": limits})
    except ValidationError as e:
        kinds = {err["type"] for err in e.errors(include_url=False)}
        if kinds & {"union_tag_invalid", "union_tag_not_found"}:
            raise ProtocolError("bad_message", f"unknown message type {msg.get('type')!r}; expected 'prompt', "
                                               "'goal', 'clear_goal', 'ping' or 'close'") from None
        if "extra_forbidden" in kinds:
            unknown = sorted(str(err["loc"][-1]) for err in e.errors() if err["type"] == "extra_forbidden")
            raise ProtocolError("bad_message", f"unknown field(s) {unknown} in a {msg['type']} message") from None
        field, text = _error_text(e)
        if msg.get("type") == "goal":
            raise ProtocolError("bad_goal", text) from None
        if field == "text" and "missing" in kinds:
            text = "prompt must be a string, got nothing"
        if field == "text":
            raise ProtocolError("bad_prompt", f"'text': {text}") from None
        raise ProtocolError("bad_prompt" if field in PROMPT_FIELDS else "bad_message", text) from None


# ----------------------------------------------------------------------------- stream options (the URL query)
@dataclass
class StreamOptions:
    seed: int | None = None
    features: bool = False
    rotations: bool = False


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
    """?seed=INT&features=0|1&rotations=0|1 (token= is the access check's)."""
    unknown = set(query.keys()) - KNOWN_QUERY
    if unknown:
        raise ProtocolError("bad_query", f"unknown query parameter(s) {sorted(unknown)[:4]}; known: "
                                         f"{sorted(KNOWN_QUERY)}")
    seed = query.get("seed")
    if seed is not None:
        try:
            seed = policy.check_seed(int(seed), policy.SERVICE_SEED_RANGE)
        except ValueError as e:
            raise ProtocolError("bad_query", str(e) if seed.lstrip("-").isdigit()
                                else f"seed must be an integer, got {seed[:20]!r}") from None
    return StreamOptions(seed, _flag(query, "features"), _flag(query, "rotations"))


# ----------------------------------------------------------------------------- POST /v1/generate
class GenerateRequest(BaseModel):
    """{"text", "seconds" (default 4), "format": "npy" | "bvh" | "json" (default), "seed"}; nothing else."""
    model_config = ConfigDict(extra="forbid")
    text: PromptText
    seconds: GenerateSeconds = 4.0
    format: Literal["npy", "bvh", "json"] = "json"
    seed: int | None = None

    @field_validator("format", mode="before")
    @classmethod
    def _check_format(cls, v):
        if v not in ("npy", "bvh", "json"):
            raise ValueError(f"format must be 'npy', 'bvh' or 'json', got {v!r}")
        return v

    @field_validator("seed", mode="before")
    @classmethod
    def _check_seed(cls, v):
        return None if v is None else policy.check_seed(v, policy.SERVICE_SEED_RANGE)


def parse_generate_request(body: bytes, limits: ServeLimits) -> GenerateRequest:
    """ProtocolError ("bad_request") naming what is wrong."""
    try:
        req = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ProtocolError("bad_request", f"body is not valid JSON: {str(e)[:120]}") from None
    if not isinstance(req, dict):
        raise ProtocolError("bad_request", "the body must be a JSON object")
    try:
        return GenerateRequest.model_validate(req, context={"limits": limits})
    except ValidationError as e:
        unknown = sorted(str(err["loc"][-1]) for err in e.errors() if err["type"] == "extra_forbidden")
        if unknown:
            raise ProtocolError("bad_request", f"unknown field(s) {unknown}") from None
        field, text = _error_text(e)
        raise ProtocolError("bad_request", f"'{field}': {text}" if field == "text" else text) from None


# ----------------------------------------------------------------------------- server -> client
def encode_array(a) -> str:
    """float32 little-endian bytes, C order, base64 (decode: np.frombuffer(b64decode(s), '<f4'))."""
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode("ascii")


def decode_array(s: str, shape: tuple) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype="<f4").reshape(shape)


class ServerMessage(BaseModel):
    """A message the server sends; to_json() is its JSON text frame (fields left None are not sent)."""
    model_config = ConfigDict(extra="forbid")

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)


class Hello(ServerMessage):
    type: Literal["hello"] = "hello"
    v: int = PROTOCOL_VERSION
    stream: int
    seed: int | None                          # sent as null when the stream draws a fresh seed
    fps: int | float
    frames_per_latent: int
    lookahead: int
    encoding: str = ENCODING
    features: bool
    rotations: bool
    server: str
    limits: dict

    def to_json(self) -> str:
        return self.model_dump_json()


class Ack(ServerMessage):
    type: Literal["ack"] = "ack"
    text: str                                 # the prompt as queued (runtime.policy's form)
    queue: list[str]                          # every prompt waiting, in order


class GoalState(BaseModel):
    x: float
    z: float
    heading: float | None = None
    seconds: float | None = None              # from when the goal was set


class GoalAck(ServerMessage):
    type: Literal["goal_ack"] = "goal_ack"
    goal: GoalState | None = None             # the goal as set; absent after clear_goal


class Event(BaseModel):
    kind: Literal["prompt_change", "action_end", "goal_reached", "finished"]
    latent: int
    prompt: str


class Frames(ServerMessage):
    type: Literal["frames"] = "frames"
    latent: int
    frame: int
    prompt: str
    joints: str                               # (4, 22, 3), ENCODING
    events: list[Event]
    underruns: int
    t: float                                  # server wall clock when the latent was produced
    queue: list[str] | None = None            # the prompts waiting, when they changed
    features: str | None = None               # (4, 272), with ?features=1
    rotations: str | None = None              # (4, 22, 4), with ?rotations=1


class Events(ServerMessage):
    type: Literal["events"] = "events"
    events: list[Event]
    underruns: int
    t: float


class Pong(ServerMessage):
    type: Literal["pong"] = "pong"
    t: float


class Error(ServerMessage):
    type: Literal["error"] = "error"
    code: str
    message: str


def error(code: str, message: str) -> str:
    return Error(code=code, message=message).to_json()
