"""The service's bounds on both sides, as numbers written here (docs/serve.md's), never the module's own
constants: the close codes of RFC 6455 as literals, every limit at its value and one unit past it, every
finite check with one bad value among good ones, the scheduler's look-ahead bounded from below as well
as from above, and the access policy case by case. Most of it runs without a model (the checks, the
HTTP routes through Starlette's TestClient without the lifespan); the scheduler part drives the
embedded model with a fake clock, and one small real server checks what goes over the wire."""
from __future__ import annotations

import asyncio
import json
import struct
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _serve_testing import FakeClock, ServerThread, close_of, recv_json, run, single_threaded_models
from scipy.spatial.transform import Rotation
from starlette.testclient import TestClient

from motionstreamer.representation.features import recover_rotations
from motionstreamer.runtime.engine import GenerationConfig, StreamingEngine
from motionstreamer.serve import protocol
from motionstreamer.serve.app import create_app
from motionstreamer.serve.protocol import (
    Close,
    ProtocolError,
    ServeLimits,
    StreamOptions,
    decode_array,
    encode_array,
    parse_client_message,
    parse_generate_request,
    parse_stream_options,
)
from motionstreamer.serve.scheduler import RotationTracker, ServerFull, StreamScheduler
from motionstreamer.serve.service import Connection, ServeConfig, Service, TokenBucket, is_loopback

websockets = pytest.importorskip("websockets")

# RFC 6455 section 7.4.1 (and 1012/1013 of the IANA registry), as docs/serve.md lists them
NORMAL, POLICY, TOO_BIG, INTERNAL, RESTART, FULL = 1000, 1008, 1009, 1011, 1012, 1013


# ----------------------------------------------------------------------------- limits and their checks
def test_documented_defaults():
    """docs/serve.md: 32 streams; prompts up to 300 characters and 120 s, 8 queued, messages up to 4 KB,
    10 messages/s (burst 20), idle timeout 300 s, 64 unsent messages, 2 generate jobs."""
    d = ServeLimits()
    assert (d.max_streams, d.max_prompt_chars, d.max_prompt_seconds, d.max_queued_prompts, d.max_message_bytes,
            d.messages_per_second, d.message_burst, d.idle_timeout_s, d.max_backlog, d.max_generate_jobs) == \
        (32, 300, 120.0, 8, 4096, 10.0, 20, 300.0, 64, 2)
    assert ServeConfig().lookahead == 2
    assert set(protocol.CLOSE_CODES) == {1000, 1006, 1008, 1009, 1011, 1012, 1013}


INT_LIMITS = ("max_streams", "max_prompt_chars", "max_queued_prompts", "max_message_bytes", "message_burst",
              "max_backlog", "max_generate_jobs")
FLOAT_LIMITS = ("max_prompt_seconds", "messages_per_second", "idle_timeout_s", "max_generate_seconds")


@pytest.mark.parametrize("name", INT_LIMITS)
def test_integer_limits_from_one(name):
    ServeLimits(**{name: 1}).validate()
    for bad in (0, -1, True, 1.0, "2"):
        with pytest.raises(ValueError, match=f"{name} must be an integer >= 1"):
            ServeLimits(**{name: bad}).validate()


@pytest.mark.parametrize("name", FLOAT_LIMITS)
def test_float_limits_finite_and_positive(name):
    ServeLimits(**{name: 1e-3}).validate()
    ServeLimits(**{name: 2}).validate()
    for bad in (0, 0.0, -1e-3, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match=f"{name} must be a finite number > 0"):
            ServeLimits(**{name: bad}).validate()


@pytest.mark.parametrize("name", ["max_prompt_seconds", "max_generate_seconds"])
def test_lengths_are_capped_at_600_seconds(name):
    ServeLimits(**{name: 600.0}).validate()
    with pytest.raises(ValueError, match="capped at 600 seconds"):
        ServeLimits(**{name: 600.5}).validate()


@pytest.mark.parametrize("field,good,bad,msg", [
    ("sampling_steps", (1, 1000, None), (0, 1001, True, 2.0), r"sampling_steps must be an integer in \[1, 1000\]"),
    ("lookahead", (1, 32), (0, 33, True, 2.0), r"lookahead must be an integer in \[1, 32\]"),
    ("token", ("12345678", None), ("1234567",), "token must be at least 8 characters"),
])
def test_serve_config_bounds(field, good, bad, msg):
    for v in good:
        ServeConfig(**{field: v}).validate()
    for v in bad:
        with pytest.raises(ValueError, match=msg):
            ServeConfig(**{field: v}).validate()
    with pytest.raises(ValueError, match="max_streams"):        # the limits are checked with the config
        ServeConfig(limits=ServeLimits(max_streams=0)).validate()


def test_teacher_runs_ten_steps_unless_told():
    """docs/serve.md: the service's teacher samples 10 steps by default (the original's 50 when asked)."""
    assert ServeConfig().generation_config().sampling_steps == 10
    assert ServeConfig(sampling_steps=50).generation_config().sampling_steps == 50
    assert ServeConfig(head="student").generation_config().sampling_steps is None    # the student's own default


@pytest.mark.parametrize("n,kept", [(123, True), (124, False), (300, False)])
def test_close_reason_fits_a_close_frame(n, kept):
    reason = "r" * n
    c = Close(1000, reason)
    assert len(c.reason.encode()) <= 123
    assert (c.reason == reason) is kept
    if not kept:
        assert c.reason == "r" * 120 + "..."
    multi = Close(1000, "\u00e9" * 100)                          # 200 bytes: cut on a character boundary
    assert multi.reason == "\u00e9" * 60 + "..." and len(multi.reason.encode()) == 123


# ----------------------------------------------------------------------------- client messages
LIMITS = ServeLimits(max_prompt_chars=20, max_prompt_seconds=10.0, max_generate_seconds=5.0)


def parsed_message(obj):
    return parse_client_message(json.dumps(obj), LIMITS)


def refused(obj, code):
    with pytest.raises(ProtocolError) as e:
        parse_client_message(obj if isinstance(obj, str) else json.dumps(obj), LIMITS)
    assert e.value.code == code, str(e.value)
    return str(e.value)


@pytest.mark.parametrize("seconds,ok", [(10.0, True), (10, True), (1e-6, True), (10.001, False), (0, False),
                                        (-1e-6, False), (True, False), ("5", False)])
def test_prompt_seconds_in_zero_to_limit(seconds, ok):
    if ok:
        assert parsed_message({"type": "prompt", "text": "walk", "seconds": seconds}).seconds == float(seconds)
    else:
        assert "'seconds' must be a number in (0, 10]" in refused({"type": "prompt", "text": "walk",
                                                                  "seconds": seconds}, "bad_prompt")


def test_prompt_text_limit_and_checks():
    assert parsed_message({"type": "prompt", "text": "w" * 20}).text == "w" * 20
    assert "too long (21 characters, at most 20)" in refused({"type": "prompt", "text": "w" * 21}, "bad_prompt")
    assert "got nothing" in refused({"type": "prompt"}, "bad_prompt")
    assert "control character" in refused({"type": "prompt", "text": "wa\u001blk"}, "bad_prompt")
    assert "must be a string" in refused({"type": "prompt", "text": 5}, "bad_prompt")


def test_message_shapes():
    m = parsed_message({"type": "prompt", "text": "  a   walk ", "after_current": True})
    assert (m.text, m.seconds, m.after_current) == ("a walk", None, True)
    assert parsed_message({"type": "prompt", "text": "walk"}).after_current is False
    assert type(parsed_message({"type": "ping", "extra": 1})).__name__ == "PingMessage"
    assert "'after_current' must be true or false" in refused({"type": "prompt", "text": "w", "after_current": 1},
                                                             "bad_message")
    assert "unknown field(s) ['x']" in refused({"type": "prompt", "text": "w", "x": 1}, "bad_message")
    assert "unknown message type 'dance'" in refused({"type": "dance"}, "bad_message")
    assert "must be a JSON object, got list" in refused("[1]", "bad_message")
    assert "not valid JSON" in refused("{", "bad_message")
    assert "not valid JSON" in refused("[" * 100_000, "bad_message")             # RecursionError, not a crash


@pytest.mark.parametrize("query,expected", [
    ({}, StreamOptions()), ({"seed": "0"}, StreamOptions(seed=0)),
    ({"seed": str(2 ** 63 - 1)}, StreamOptions(seed=2 ** 63 - 1)),
    ({"features": "1", "rotations": "TRUE"}, StreamOptions(features=True, rotations=True)),
    ({"features": "yes", "rotations": "0"}, StreamOptions(features=True)),
    ({"features": "", "rotations": "No"}, StreamOptions()), ({"token": "abc"}, StreamOptions()),
])
def test_stream_options_accepted(query, expected):
    assert parse_stream_options(query) == expected


@pytest.mark.parametrize("query,msg", [
    ({"seed": "-1"}, r"seed must be in [0, 2**63 - 1], got -1"),
    ({"seed": str(2 ** 63)}, r"seed must be in [0, 2**63 - 1], got 9223372036854775808"),
    ({"seed": "abc"}, "seed must be an integer, got 'abc'"), ({"seed": "1.5"}, "seed must be an integer"),
    ({"features": "2"}, "'features' must be 0 or 1"), ({"rotations": "on"}, "'rotations' must be 0 or 1"),
    ({"seed": "1", "colour": "red"}, "unknown query parameter(s) ['colour']"),
])
def test_stream_options_refused(query, msg):
    with pytest.raises(ProtocolError) as e:
        parse_stream_options(query)
    assert e.value.code == "bad_query" and msg in str(e.value)


@pytest.mark.parametrize("body,ok", [
    ({"text": "walk"}, True), ({"text": "walk", "seconds": 5}, True), ({"text": "walk", "seconds": 5.01}, False),
    ({"text": "walk", "seconds": 0}, False), ({"text": "walk", "format": "bvh", "seed": 2 ** 63 - 1}, True),
    ({"text": "walk", "seed": 2 ** 63}, False), ({"text": "walk", "seed": -1}, False),
    ({"text": "walk", "format": "mp4"}, False), ({"text": "walk", "extra": 1}, False), ({"text": ""}, False),
])
def test_generate_request_bounds(body, ok):
    if ok:
        req = parse_generate_request(json.dumps(body).encode(), LIMITS)
        assert req.seconds == body.get("seconds", 4.0) and req.format == body.get("format", "json")
    else:
        with pytest.raises(ProtocolError) as e:
            parse_generate_request(json.dumps(body).encode(), LIMITS)
        assert e.value.code == "bad_request"


def test_generate_request_bodies_that_are_not_requests():
    for body, msg in ((b"\xff\xfe", "not valid JSON"), (b"[1]", "must be a JSON object"), (b"{", "not valid JSON")):
        with pytest.raises(ProtocolError, match=msg):
            parse_generate_request(body, LIMITS)


def test_arrays_travel_as_little_endian_float32():
    a = np.array([[1.0, -2.5], [3.25, 1e-3]], dtype=np.float64)
    s = encode_array(a)
    import base64
    assert base64.b64decode(s) == struct.pack("<4f", 1.0, -2.5, 3.25, 1e-3)      # the reference: struct
    np.testing.assert_array_equal(decode_array(s, (2, 2)), a.astype(np.float32))


# ----------------------------------------------------------------------------- access policy
@pytest.mark.parametrize("host,ok", [("127.0.0.1", True), ("127.9.9.9", True), ("localhost", True), ("::1", True),
                                     ("[::1]", True), ("0.0.0.0", False), ("10.0.0.1", False),
                                     ("example.com", False), ("[::2]", False), ("", False)])
def test_loopback_hosts(host, ok):
    assert is_loopback(host) is ok


def service(**kw) -> Service:
    return Service(ServeConfig(**kw))


def test_token_check():
    s = service(token="secret-token")
    assert s.token_ok({"authorization": "Bearer secret-token"}, {})
    assert s.token_ok({"authorization": "bearer  secret-token "}, {})
    assert s.token_ok({}, {"token": "secret-token"})
    assert not s.token_ok({"authorization": "Bearer secret-tokeN"}, {"token": "secret-token"})   # the header wins
    assert not s.token_ok({"authorization": "Basic secret-token"}, {})
    assert not s.token_ok({}, {"token": "secret-toke"}) and not s.token_ok({}, {})
    assert service().token_ok({}, {})                                  # no token configured


def test_host_check_only_without_a_token():
    s = service()
    assert s.host_ok({"host": "127.0.0.1:8000"}) and s.host_ok({"host": "localhost"})
    assert not s.host_ok({"host": "evil.example:8000"}) and not s.host_ok({})
    assert service(token="secret-token").host_ok({"host": "evil.example"})


def test_origin_check():
    s = service(allowed_origins=("https://app.example",))
    assert s.origin_ok({"host": "h:1"})                                              # not a browser
    assert s.origin_ok({"origin": "https://app.example", "host": "h:1"})
    assert s.origin_ok({"origin": "http://h:1", "host": "h:1"})                     # the page's own
    assert not s.origin_ok({"origin": "http://h:2", "host": "h:1"})
    assert not s.origin_ok({"origin": "https://app.example.evil", "host": "h:1"})
    assert service(allowed_origins=("*",)).origin_ok({"origin": "https://any", "host": "h"})


def test_refusal_reasons_in_order():
    s = service(token="secret-token")
    ok = {"host": "h:1", "authorization": "Bearer secret-token"}
    assert s.refusal(ok, {}, websocket=True) is None
    assert "token" in s.refusal({"host": "h:1"}, {}, websocket=False)
    assert "Origin 'http://x' not allowed" == s.refusal({**ok, "origin": "http://x"}, {}, websocket=True)
    assert s.refusal({**ok, "origin": "http://x"}, {}, websocket=False) is None     # HTTP: no Origin check
    assert service().refusal({"host": "evil"}, {}, websocket=False).startswith("Host not allowed")


def test_token_bucket_burst_then_rate(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr("motionstreamer.serve.service.time.monotonic", lambda: now[0])
    b = TokenBucket(rate=4.0, burst=3)
    assert [b.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.24                                      # 0.96 of a token
    assert not b.take()
    now[0] += 0.02                                      # 1.04
    assert b.take() and not b.take()
    now[0] += 100.0                                     # refills to the burst, not beyond
    assert [b.take() for _ in range(4)] == [True, True, True, False]


def test_backlog_limit_on_both_sides_and_the_first_close_wins():
    s = service(limits=ServeLimits(max_backlog=3))

    async def go():
        c = Connection(ws=None, service=s)
        for i in range(3):
            c.post(f"m{i}")
        full = (c.close_with, c.queue.qsize())
        c.post("one too many")
        c.post(Close(NORMAL, "later"))
        return c, full

    c, full = run(go())
    assert full == (None, 3)
    assert c.done.is_set() and c.close_with.code == POLICY and "more than 3 messages" in c.close_with.reason
    c.post("after the end")                              # ignored once done
    assert c.queue.qsize() == 3


def test_shutdown_tells_every_stream_to_reconnect():
    s = service()

    async def go():
        conns = [Connection(ws=None, service=s) for _ in range(2)]
        s.connections.update(conns)
        await s.shutdown()
        return conns

    assert [(c.close_with.code, c.done.is_set()) for c in run(go())] == [(RESTART, True)] * 2


def test_example_prompts():
    from motionstreamer.checkpoints import BundleConfig
    from motionstreamer.serve.service import example_prompts

    own = [f"prompt {i}" for i in range(40)]
    assert example_prompts(BundleConfig(example_prompts=own), embedded=False) == own[:32]    # at most 32
    synthetic = example_prompts(BundleConfig(), embedded=True)
    assert "a person walks forward" in synthetic and len(set(synthetic)) == len(synthetic) >= 10
    assert example_prompts(BundleConfig(description="synthetic actions"), embedded=False) == synthetic
    common = example_prompts(BundleConfig(description="HumanML3D"), embedded=False)
    assert len(common) == 10 and common[0] == "a person walks forward" and common != synthetic


class SlowCloser:
    """A WebSocket whose client answers the close handshake after `delay` s (None: never)."""

    def __init__(self, delay):
        self.delay, self.closed = delay, None

    async def close(self, code, reason):
        await (asyncio.sleep(self.delay) if self.delay is not None else asyncio.Event().wait())
        self.closed = (code, reason)


def test_a_client_that_never_answers_the_close_is_let_go_after_2_s():
    """docs/serve.md: 2 s for the close handshake. A client that never answers is let go between 2 and
    2.9 s; one that answers after 0.5 s is waited for (its close completes)."""
    from motionstreamer.serve.service import close_quietly

    async def go(delay):
        ws = SlowCloser(delay)
        t0 = time.monotonic()
        async with asyncio.timeout(2.9):
            await close_quietly(ws, Close(POLICY, "bye"))
        return ws.closed, time.monotonic() - t0

    closed, waited = run(go(None))
    assert closed is None and waited >= 2.0
    assert run(go(0.5))[0] == (POLICY, "bye")


class GoneSocket:
    """A WebSocket whose client left before its hello: sending fails; receiving is recorded."""

    def __init__(self):
        self.received = 0

    async def send_text(self, text):
        raise ConnectionResetError("gone")

    async def receive(self):
        self.received += 1
        return {"type": "websocket.disconnect"}


class SlotsOnly:
    """The scheduler's slots alone (what Connection.run opens and closes)."""
    lookahead = 2

    def __init__(self):
        self.opened, self.closed = [], []

    def open(self, sink, options):
        self.opened.append(sink)
        return 7

    def close(self, key):
        self.closed.append(key)


async def run_connection(ws, service):
    """One Connection over a fake socket, run to its end with the default options."""
    c = Connection(ws, service)
    await c.run(StreamOptions())
    return c


def test_a_client_gone_before_its_hello_frees_its_slot_at_once():
    s = service()
    s.scheduler = SlotsOnly()
    ws = GoneSocket()

    c = run(run_connection(ws, s))
    assert s.scheduler.closed == [7] and ws.received == 0 and s.connections == set() and c.done.is_set()


class LeavingSocket:
    """A WebSocket whose client leaves after its hello, as Starlette reports it: one websocket.disconnect,
    then receive() raises (Starlette: "Cannot call receive once a disconnect message has been received")."""

    def __init__(self):
        self.sent, self.received = [], 0

    async def send_text(self, text):
        self.sent.append(text)

    async def receive(self):
        self.received += 1
        if self.received > 1:
            raise RuntimeError("Cannot call receive once a disconnect message has been received.")
        return {"type": "websocket.disconnect"}


def test_a_client_leaving_mid_stream_is_neither_read_again_nor_written_to():
    s = service()
    s.scheduler = SlotsOnly()
    ws = LeavingSocket()

    c = run(run_connection(ws, s))
    assert ws.received == 1 and [json.loads(t)["type"] for t in ws.sent] == ["hello"]
    assert c.client_gone and s.scheduler.closed == [7] and c.queue.empty()


# ----------------------------------------------------------------------------- HTTP routes without a model
@pytest.fixture(scope="module")
def client():
    """The app without its lifespan: no model loads, the engine is not running."""
    return TestClient(create_app(token=None, limits=ServeLimits(max_streams=1)), base_url="http://127.0.0.1")


def test_health_says_503_when_the_engine_is_not_running(client):
    r = client.get("/health")
    assert r.status_code == 503 and r.json()["status"] == "engine not running" and r.json()["streams"] == 0


def test_health_reports_the_running_engine(client, monkeypatch):
    """With an engine running: 200 "ok", the streams and jobs, the uptime to 0.1 s and the step statistics
    to 0.01 (a stand-in scheduler: only what /health reads; the app's clock held still)."""
    service = client.app.state.service
    fake = SimpleNamespace(alive=True, n_streams=1, n_jobs=2, stats={"steps": 7, "step_ms_ema": 12.3456})
    monkeypatch.setattr("motionstreamer.serve.app.time", SimpleNamespace(time=lambda: 1000.0))
    started, service.scheduler, service.started = service.started, fake, 1000.0 - 12.34
    try:
        r = client.get("/health")
    finally:
        service.scheduler, service.started = None, started
    body = r.json()
    assert r.status_code == 200 and body["status"] == "ok"
    assert (body["streams"], body["max_streams"], body["generate_jobs"]) == (1, 1, 2)
    assert body["uptime_s"] == 12.3 and body["engine"] == {"steps": 7, "step_ms_ema": 12.35}


def test_host_refused_with_403_and_the_generate_body_limit(client):
    assert client.get("/v1/info", headers={"host": "evil.example"}).status_code == 403
    # 16 KiB of body: a (bad) request is read and answered 400; one byte more is refused unread (413)
    body = b'{"text": ""}'
    at_limit = body + b" " * (16 * 1024 - len(body))
    r = client.post("/v1/generate", content=at_limit)
    assert r.status_code == 400 and "'text'" in r.json()["error"]
    r = client.post("/v1/generate", content=at_limit + b" ")
    assert r.status_code == 413 and "over 16384 bytes" in r.json()["error"]


def test_token_refused_with_401():
    c = TestClient(create_app(token="secret-token"), base_url="http://127.0.0.1")
    assert c.get("/v1/info").status_code == 401
    assert c.post("/v1/generate", content=b"{}", headers={"host": "evil.example"}).status_code == 401
    assert c.get("/health").status_code == 503                 # no token needed (and no engine here)


# ----------------------------------------------------------------------------- the scheduler, fake clock
@pytest.fixture(scope="module")
def models():
    with single_threaded_models() as m:
        yield m


def scheduler(models, max_streams=2, max_jobs=1, lookahead=2, capacity=None, **kw):
    bundle, text = models
    engine = StreamingEngine(bundle, text, capacity=capacity or max_streams + max_jobs,
                             config=GenerationConfig(sampling_steps=1, on_action_end="continue", max_latents=10**6))
    out, clock = [], FakeClock(50.0)
    return StreamScheduler(engine, out.extend, max_streams=max_streams, max_jobs=max_jobs, lookahead=lookahead,
                           clock=clock, **kw), engine, clock, out


def messages(out, sink, kind):
    return [json.loads(m) for s, m in out if s == sink and isinstance(m, str) and json.loads(m)["type"] == kind]


def test_scheduler_construction_bounds(models):
    scheduler(models, max_streams=2, max_jobs=1, capacity=3)               # capacity == streams + jobs: fine
    with pytest.raises(ValueError, match=r"engine capacity 2 < max_streams \+ max_jobs \(3\)"):
        scheduler(models, max_streams=2, max_jobs=1, capacity=2)
    scheduler(models, lookahead=1)
    with pytest.raises(ValueError, match="lookahead must be >= 1 latent, got 0"):
        scheduler(models, lookahead=0)


def test_stream_and_job_slots_on_both_sides(models):
    sched, *_ = scheduler(models, max_streams=2, max_jobs=1)
    keys = [sched.open(n, StreamOptions()) for n in "AB"]
    assert sched.n_streams == 2 and len(set(keys)) == 2
    with pytest.raises(ServerFull, match="2 of 2 streams"):
        sched.open("C", StreamOptions())
    sched.generate("walk", 1.0)
    assert sched.n_jobs == 1
    with pytest.raises(ServerFull, match="1 of 1 generate jobs"):
        sched.generate("walk", 1.0)
    sched.close(keys[0])
    assert sched.n_streams == 1


@pytest.mark.parametrize("lookahead", [1, 3])
def test_lookahead_bounded_from_below_and_above(models, lookahead):
    """After every turn of the loop a running stream holds between `lookahead` latents (less one clock
    tick) and `lookahead` + 1 (the one just made) ahead of its playback clock: never starved, never ahead."""
    sched, engine, clock, out = scheduler(models, max_streams=1, lookahead=lookahead)
    key = sched.open("A", StreamOptions(seed=0))
    sched.push(key, "a person walks forward")
    ahead = []
    while clock.t < 53.0:
        sched.poll()
        live = sched._live[key]
        if live.anchor is not None and clock.t > live.anchor + 0.5:     # past the opening catch-up
            ahead.append((live.frames - (clock.t - live.anchor) * 30) / 4)
        clock.t += 0.01
    assert lookahead - 0.08 <= min(ahead) and max(ahead) <= lookahead + 1 + 1e-6, (min(ahead), max(ahead))
    frames = messages(out, "A", "frames")
    assert [m["underruns"] for m in frames] == [0] * len(frames)
    # about real time: 3 s of clock is 22.5 latents, plus the look-ahead filled at the start
    assert abs(len(frames) - (22.5 + lookahead)) <= 1.5, len(frames)


def test_clock_anchors_on_the_shared_grid(models):
    sched, engine, clock, out = scheduler(models, max_streams=1)
    clock.t += 0.0517                                                # off the grid
    key = sched.open("A", StreamOptions(seed=0))
    sched.push(key, "a person walks forward")
    sched.poll()
    live = sched._live[key]
    periods = (live.anchor - sched.t0) / (4 / 30)
    assert abs(periods - round(periods)) < 1e-6 and live.anchor >= clock.t - 1e-9


def test_each_stall_is_one_underrun(models):
    sched, engine, clock, out = scheduler(models, max_streams=1)
    key = sched.open("A", StreamOptions(seed=0))
    sched.push(key, "a person jogs forward")
    for stall in (0.0, 1.0, 0.0, 0.7, 0.0):
        clock.t += stall
        for _ in range(50):
            sched.poll()
            clock.t += 0.01
    frames = messages(out, "A", "frames")
    counts = [m["underruns"] for m in frames]
    assert counts[-1] == 2 and sched.stats["underruns"] == 2
    assert counts == sorted(counts) and [m["latent"] for m in frames] == list(range(len(frames)))


def test_finished_stream_reports_its_events_without_frames_and_its_clock_stops(models):
    sched, engine, clock, out = scheduler(models, max_streams=1)
    key = sched.open("A", StreamOptions(seed=0))
    sched.push(key, "a person walks", seconds=0.4)               # 3 latents
    for _ in range(100):
        sched.poll()
        clock.t += 0.01
    frames, events = messages(out, "A", "frames"), messages(out, "A", "events")
    assert [m["latent"] for m in frames] == [0, 1, 2]
    assert [e["kind"] for m in events for e in m["events"]] == ["finished"] and events[0]["underruns"] == 0
    assert sched._live[key].anchor is None
    acks = messages(out, "A", "ack")
    assert acks[0]["queue"] == ["a person walks"] and frames[0]["queue"] == [] and "queue" not in frames[1]


def test_queue_limit_on_both_sides(models):
    """Two prompts may wait (max_queued=2), the third is refused; once one has started, one more fits."""
    sched, engine, clock, out = scheduler(models, max_streams=1, max_queued=2)
    key = sched.open("A", StreamOptions())
    for text in ("a person walks", "a person jumps", "a person waves"):
        sched.push(key, text, after_current=True)
    sched.poll()
    assert [m["queue"] for m in messages(out, "A", "ack")] == [["a person walks"], ["a person walks", "a person jumps"]]
    errors = messages(out, "A", "error")
    assert [e["code"] for e in errors] == ["queue_full"]
    assert "2 prompts already queued (at most 2)" in errors[0]["message"]
    sched.push(key, "a person sits", after_current=True)          # "walks" is playing now: one slot free
    sched.poll()
    assert messages(out, "A", "ack")[-1]["queue"] == ["a person jumps", "a person sits"]
    assert len(messages(out, "A", "error")) == 1


def test_scheduler_holds_8_prompts_unless_told(models):
    sched, engine, clock, out = scheduler(models, max_streams=1)
    key = sched.open("A", StreamOptions())
    for i in range(9):
        sched.push(key, f"a person walks {i}", after_current=True)
    sched.poll()
    assert len(messages(out, "A", "ack")) == 8 and [e["code"] for e in messages(out, "A", "error")] == ["queue_full"]


def test_stop_joins_the_thread_and_fails_unfinished_jobs(models):
    sched, *_ = scheduler(models, max_streams=1)
    sched.clock = time.monotonic                              # a real clock: the thread runs on its own
    fut = sched.generate("a person walks", 30.0, seed=0)      # 225 latents: far from done when stopped
    sched.start()
    assert sched.alive
    sched.stop()
    assert not sched.alive
    with pytest.raises(RuntimeError, match="server shutting down"):
        fut.result(timeout=0)


def test_a_failing_command_closes_its_stream_with_1011_and_is_logged(models, caplog):
    sched, engine, clock, out = scheduler(models, max_streams=2)
    a, b = sched.open("A", StreamOptions(seed=0)), sched.open("B", StreamOptions(seed=1))

    def broken(*args, **kw):
        raise RuntimeError("boom")
    engine.push_text = broken                                  # not a prompt error: a failure of the engine
    sched.push(a, "a person walks")
    with caplog.at_level("ERROR", logger="motionstreamer.serve"):
        sched.poll()
    closes = [m for s, m in out if s == "A" and isinstance(m, Close)]
    assert [(c.code, c.reason) for c in closes] == [(INTERNAL, "internal error: RuntimeError")]
    assert any(r.getMessage() == "command PushPrompt failed" for r in caplog.records)
    assert a not in sched._live and b in sched._live and not [m for s, m in out if s == "B"]


def test_rotations_chunk_by_chunk_equal_the_whole_clip(models):
    """RotationTracker's per-chunk quaternions (w, x, y, z) equal recover_rotations over the whole clip,
    read through scipy (scalar last) as the reference conversion."""
    sched, engine, clock, out = scheduler(models, max_streams=1)
    key = sched.open("A", StreamOptions(seed=1, features=True, rotations=True))
    sched.push(key, "a person turns around")
    for _ in range(200):
        sched.poll()
        clock.t += 0.01
    frames = messages(out, "A", "frames")
    feats = np.concatenate([decode_array(m["features"], (4, 272)) for m in frames])
    quats = np.concatenate([decode_array(m["rotations"], (4, 22, 4)) for m in frames]).reshape(-1, 4)
    want, _ = recover_rotations(torch.from_numpy(feats).double())
    got = Rotation.from_quat(quats[:, [1, 2, 3, 0]]).as_matrix().reshape(len(feats), 22, 3, 3)
    assert len(frames) >= 12
    np.testing.assert_allclose(got, want.numpy(), atol=2e-4)
    tracker = RotationTracker()
    tracker(torch.from_numpy(feats[:4]))
    assert torch.allclose(tracker.heading @ tracker.heading.T, torch.eye(3), atol=1e-6)   # stays orthonormal


def test_failing_step_closes_with_1011_and_fails_the_job(models):
    sched, engine, clock, out = scheduler(models, max_streams=1)
    key = sched.open("A", StreamOptions(seed=0))
    sched.push(key, "a person walks")
    fut = sched.generate("a person jumps", 1.0, seed=0)
    engine.step = lambda ids=None: (_ for _ in ()).throw(RuntimeError("boom"))
    sched.poll()
    closes = [m for s, m in out if s == "A" and isinstance(m, Close)]
    assert [(c.code, c.reason) for c in closes] == [(INTERNAL, "engine step failed: RuntimeError")]
    with pytest.raises(RuntimeError, match="boom"):
        fut.result(timeout=0)
    assert sched.n_jobs == 0 and sched.stats["step_errors"] == 1 and key not in sched._live


def test_job_length_is_exact_and_stats_count_every_latent(models):
    sched, engine, clock, out = scheduler(models, max_streams=1)
    fut = sched.generate("a person jumps", 0.8, seed=0)            # 6 latents
    for _ in range(20):
        sched.poll()
    feats, joints = fut.result(timeout=0)
    assert feats.shape == (24, 272) and joints.shape == (24, 22, 3)
    assert sched.stats["latents"] == 6 and sched.stats["steps"] == 6 and sched.stats["batch_ema"] == 1.0


# ----------------------------------------------------------------------------- over the wire: literal close codes
@pytest.fixture(scope="module")
def server():
    limits = ServeLimits(max_streams=2, max_message_bytes=100, max_generate_jobs=1)
    with ServerThread(create_app(sampling_steps=2, limits=limits)) as s:
        yield s


def ping_of(n_bytes: int, pad: str = "x") -> str:
    """A ping message of exactly n_bytes bytes of UTF-8 (other fields of a ping are ignored)."""
    head = '{"type": "ping", "p": "'
    room = n_bytes - len(head) - 2
    body = pad * (room // len(pad.encode())) + "x" * (room % len(pad.encode()))
    text = head + body + '"}'
    assert len(text.encode()) == n_bytes, len(text.encode())
    return text


def test_message_size_limit_on_both_sides_in_bytes(server):
    async def go():
        async with websockets.connect(server.ws) as ws:
            await recv_json(ws)
            await ws.send(ping_of(100))
            at_limit = await recv_json(ws)
            await ws.send(ping_of(101, pad="\u00e9"))                # 38 two-byte characters: 101 bytes
            return at_limit, await close_of(ws)

    at_limit, (code, reason) = run(go())
    assert at_limit["type"] == "pong"
    assert code == TOO_BIG and reason == "message too big: 101 bytes, at most 100"


def test_info_names_the_embedded_model_and_the_limits(server):
    import urllib.request

    with urllib.request.urlopen(server.http + "/v1/info", timeout=30) as r:
        info = json.loads(r.read())
    assert info["checkpoint"] == "embedded" and info["lookahead"] == 2 and info["sampling_steps"] == 2
    assert info["limits"]["max_message_bytes"] == 100 and info["limits"]["max_streams"] == 2
    assert info["close_codes"]["1009"] == "message too big" and set(info["close_codes"]) == {
        "1000", "1006", "1008", "1009", "1011", "1012", "1013"}


def test_close_codes_over_the_wire(server):
    async def go():
        out = {}
        async with websockets.connect(server.ws) as ws:
            await recv_json(ws)
            await ws.send('{"type": "close"}')
            out["close"] = await close_of(ws)
        for q in ("?seed=-1", f"?seed={2 ** 63}"):
            async with websockets.connect(server.ws + q) as ws:
                out[q] = await close_of(ws)
        async with websockets.connect(server.ws + f"?seed={2 ** 63 - 1}") as ws:
            out["max seed"] = (await recv_json(ws))["seed"]
        a = await websockets.connect(server.ws)
        b = await websockets.connect(server.ws)
        await recv_json(a), await recv_json(b)
        async with websockets.connect(server.ws) as ws:
            out["full"] = await close_of(ws)
        await a.close()
        await b.close()
        return out

    out = run(go())
    assert out["close"] == (NORMAL, "closed by client")
    assert out["?seed=-1"][0] == POLICY and "seed must be in [0, 2**63 - 1]" in out["?seed=-1"][1]
    assert out[f"?seed={2 ** 63}"][0] == POLICY
    assert out["max seed"] == 2 ** 63 - 1
    assert out["full"][0] == FULL and "2 of 2 streams" in out["full"][1]
