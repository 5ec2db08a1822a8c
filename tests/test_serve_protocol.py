"""The live service over real sockets: a uvicorn server on 127.0.0.1 (random port) around the embedded
model, WebSocket clients (the `websockets` package), and every documented answer of the protocol:
hello, contiguous paced frames, prompt changes within the look-ahead, bad and oversize messages, a
full server, tokens, origins, idle timeout, rate limit, one-shot generation."""
import asyncio
import io
import json
import time

import numpy as np
import pytest

websockets = pytest.importorskip("websockets")
pytest.importorskip("fastapi")

from _serve_testing import ServerThread, close_of, frames, http_get, http_post, recv_json, recv_until, run  # noqa: E402

from motionstreamer.serve.app import create_app  # noqa: E402
from motionstreamer.serve.protocol import (  # noqa: E402
    CLOSE_FULL,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    ServeLimits,
    decode_array,
)

MAX_STREAMS = 3
TOKEN = "test-token-0123456789"


@pytest.fixture(scope="module")
def server():
    limits = ServeLimits(max_streams=MAX_STREAMS, max_message_bytes=2048, max_generate_jobs=1,
                         messages_per_second=5.0, message_burst=8, max_prompt_chars=200)
    with ServerThread(create_app(sampling_steps=4, limits=limits)) as s:
        yield s


@pytest.fixture(scope="module")
def token_server():
    limits = ServeLimits(max_streams=2, idle_timeout_s=1.5)
    with ServerThread(create_app(sampling_steps=2, token=TOKEN, limits=limits,
                                 allowed_origins=("https://app.example",))) as s:
        yield s


def test_hello_frames_contiguous_and_paced(server):
    async def go():
        async with websockets.connect(server.ws + "?seed=3&features=1&rotations=1") as ws:
            hello = await recv_json(ws)
            assert hello["type"] == "hello" and hello["v"] == 1 and hello["seed"] == 3
            assert hello["fps"] == 30 and hello["frames_per_latent"] == 4 and hello["lookahead"] == 2
            await ws.send(json.dumps({"type": "prompt", "text": "a person   walks forward"}))
            ack = await recv_until(ws, lambda m: m["type"] == "ack")
            assert ack["text"] == "a person walks forward" and ack["queue"] == ["a person walks forward"]
            t0 = time.monotonic()
            got = await frames(ws, 16)
            elapsed = time.monotonic() - t0
            return got, elapsed

    got, elapsed = run(go())
    assert [m["latent"] for m in got] == list(range(16))
    assert [m["frame"] for m in got] == [4 * i for i in range(16)]
    assert got[0]["events"][0] == {"kind": "prompt_change", "latent": 0, "prompt": "a person walks forward"}
    assert got[0]["queue"] == []
    for m in got:
        j = decode_array(m["joints"], (4, 22, 3))
        assert np.isfinite(j).all() and 0.3 < j[:, 0, 1].mean() < 1.5        # pelvis height in metres
        f = decode_array(m["features"], (4, 272))
        assert np.isfinite(f).all()
        q = decode_array(m["rotations"], (4, 22, 4))
        np.testing.assert_allclose(np.linalg.norm(q, axis=-1), 1.0, atol=1e-4)
        assert m["prompt"] == "a person walks forward"
    # the first latent anchors the clock (never late); the count only grows, one per late latent at most
    under = [m["underruns"] for m in got]
    assert under[0] == 0 and under == sorted(under) and all(b - a <= 1 for a, b in zip(under, under[1:]))
    # frames move: the pelvis travels while walking
    p0, p1 = decode_array(got[0]["joints"], (4, 22, 3))[0, 0], decode_array(got[-1]["joints"], (4, 22, 3))[-1, 0]
    assert np.linalg.norm((p1 - p0)[[0, 2]]) > 0.1
    # paced in real time: never more than the look-ahead (+1 in flight) ahead of a 7.5 latent/s clock
    assert 16 <= elapsed * 7.5 + 2 + 1, f"16 latents in {elapsed:.2f} s: faster than real time"


def test_prompt_change_within_lookahead(server):
    async def go():
        async with websockets.connect(server.ws + "?seed=1") as ws:
            await recv_json(ws)
            await ws.send(json.dumps({"type": "prompt", "text": "a person walks forward"}))
            last = (await frames(ws, 6))[-1]["latent"]
            await ws.send(json.dumps({"type": "prompt", "text": "a person jumps up"}))
            seen = []
            m = await recv_until(ws, lambda m: m["type"] == "frames" and m["prompt"] == "a person jumps up",
                                 keep=seen)
            return last, m, seen

    last, m, seen = run(go())
    ack = next(x for x in seen if x["type"] == "ack")
    assert ack["queue"] == ["a person jumps up"]
    # at most `lookahead` latents were generated ahead of what the client had when it sent the prompt
    assert m["latent"] <= last + 2 + 1, (last, m["latent"])
    assert {"kind": "prompt_change", "latent": m["latent"], "prompt": "a person jumps up"} in m["events"]
    assert m["queue"] == []
    before = [x for x in seen if x["type"] == "frames" and x["latent"] < m["latent"]]
    assert all(x["prompt"] == "a person walks forward" for x in before)


def test_seconds_and_after_current_queue(server):
    async def go():
        async with websockets.connect(server.ws + "?seed=2") as ws:
            await recv_json(ws)
            await ws.send(json.dumps({"type": "prompt", "text": "a person walks forward", "seconds": 0.8}))
            await ws.send(json.dumps({"type": "prompt", "text": "a person waves with the right hand",
                                      "seconds": 0.8, "after_current": True}))
            seen = []
            await recv_until(ws, lambda m: m["type"] == "events" and
                             any(e["kind"] == "finished" for e in m["events"]), keep=seen)
            return [m for m in seen if m["type"] == "frames"]

    got = run(go())
    prompts = [m["prompt"] for m in got]
    n1 = prompts.count("a person walks forward")
    assert n1 >= 1 and prompts[n1:] == ["a person waves with the right hand"] * (len(got) - n1)
    assert [m["latent"] for m in got] == list(range(len(got)))
    if not any(e["kind"] == "action_end" for m in got for e in m["events"]):
        assert n1 == 6 and len(got) == 12          # 0.8 s = 6 latents each (an early end would restart it)


def test_bad_messages_get_errors_and_the_stream_keeps_running(server):
    bad = ["not json", "[1, 2]", '{"type": "dance"}', '{"type": "prompt", "text": ""}',
           '{"type": "prompt", "text": "' + "x" * 300 + '"}', '{"type": "prompt", "text": "walk", "seconds": -1}',
           '{"type": "prompt", "text": "walk", "seconds": NaN}', '{"type": "prompt", "text": 5}',
           '{"type": "prompt", "text": "walk", "after_current": "yes"}', '{"type": "prompt", "text": "w", "x": 1}']

    async def go():
        async with websockets.connect(server.ws) as ws:
            await recv_json(ws)
            await ws.send(json.dumps({"type": "prompt", "text": "a person jogs forward"}))
            await frames(ws, 2)
            errors = []
            for i, b in enumerate(bad + [b"\x00\x01binary"]):
                if i and i % 5 == 0:
                    await asyncio.sleep(1.2)                   # stay under the rate limit
                await ws.send(b)
                errors.append(await recv_until(ws, lambda m: m["type"] == "error"))
            more = await frames(ws, 3)
            await ws.send(json.dumps({"type": "prompt", "text": "a person turns to the left"}))
            m = await recv_until(ws, lambda m: m["type"] == "frames" and m["prompt"] == "a person turns to the left")
            return errors, more, m

    errors, more, m = run(go())
    codes = [e["code"] for e in errors]
    assert codes == ["bad_message"] * 3 + ["bad_prompt"] * 5 + ["bad_message"] * 3, codes
    assert "too long" in errors[4]["message"] and "binary" in errors[-1]["message"]
    assert all(x["prompt"] == "a person jogs forward" for x in more)
    assert m["latent"] > more[-1]["latent"]


def test_prompts_with_control_characters_are_refused_never_echoed(server):
    """A NUL, a terminal escape sequence or a C1 control in a prompt: a bad_prompt error naming it, nothing
    echoed back (no ack, no event, no frames with it), the stream goes on; POST /v1/generate: 400."""
    bad = ["a person\x00 walks", "a person \x1b[31mwalks\x1b[0m", "a person \x9b2J walks"]

    async def go():
        async with websockets.connect(server.ws + "?seed=4") as ws:
            await recv_json(ws)
            await ws.send(json.dumps({"type": "prompt", "text": "a person jogs forward"}))
            await frames(ws, 1)
            seen, errors = [], []
            for b in bad:
                await ws.send(json.dumps({"type": "prompt", "text": b}))
                errors.append(await recv_until(ws, lambda m: m["type"] == "error", keep=seen))
            seen += await frames(ws, 3)
            return errors, seen

    errors, seen = run(go())
    assert [e["code"] for e in errors] == ["bad_prompt"] * 3
    assert all("control character" in e["message"] for e in errors)
    raw = json.dumps(seen)
    assert not any(x in raw for x in ("\\u0000", "\\u001b", "\\u009b")) and "ack" not in {m["type"] for m in seen}
    assert {m["prompt"] for m in seen if m["type"] == "frames"} == {"a person jogs forward"}
    for b in bad:
        st, body, _ = http_post(server.http + "/v1/generate", json.dumps({"text": b, "seconds": 1}).encode())
        assert st == 400 and b"control character" in body


def test_rate_limit_answers_and_keeps_the_connection(server):
    async def go():
        async with websockets.connect(server.ws) as ws:
            await recv_json(ws)
            for _ in range(30):
                await ws.send('{"type": "ping"}')
            answers = [await recv_json(ws) for _ in range(30)]
            await asyncio.sleep(0.5)
            await ws.send('{"type": "ping"}')
            last = await recv_until(ws, lambda m: m["type"] in ("pong", "error"))
            return answers, last

    answers, last = run(go())
    kinds = [a.get("code", a["type"]) for a in answers]
    assert kinds.count("pong") >= 8 and kinds.count("rate_limited") >= 10, kinds
    assert last["type"] == "pong"


def test_oversize_message_closes_1009(server):
    async def go():
        async with websockets.connect(server.ws) as ws:
            await recv_json(ws)
            await ws.send(json.dumps({"type": "prompt", "text": "y" * 5000}))
            return await close_of(ws)

    code, reason = run(go())
    assert code == CLOSE_TOO_BIG and "too big" in reason


def test_full_server_closes_1013_and_http_503(server):
    async def go():
        conns = []
        for _ in range(MAX_STREAMS):
            ws = await websockets.connect(server.ws)
            assert (await recv_json(ws))["type"] == "hello"
            conns.append(ws)
        status_full = http_get(server.http + "/v1/stream")[0]
        async with websockets.connect(server.ws) as extra:
            code, reason = await close_of(extra)
        await conns[0].close()
        await asyncio.sleep(0.3)
        async with websockets.connect(server.ws) as again:
            hello = await recv_json(again)
        for ws in conns[1:]:
            await ws.close()
        await asyncio.sleep(0.3)
        return status_full, code, reason, hello

    status_full, code, reason, hello = run(go())
    assert status_full == 503
    assert code == CLOSE_FULL and "full" in reason
    assert hello["type"] == "hello"
    assert http_get(server.http + "/v1/stream")[0] == 426       # not full: "use a WebSocket"


def test_client_close_message(server):
    async def go():
        async with websockets.connect(server.ws) as ws:
            await recv_json(ws)
            await ws.send('{"type": "close"}')
            return await close_of(ws)

    assert run(go()) == (CLOSE_NORMAL, "closed by client")


def test_info_and_health(server):
    status, body, _ = http_get(server.http + "/v1/info")
    info = json.loads(body)
    assert status == 200 and info["protocol"] == 1 and info["fps"] == 30 and info["sampling_steps"] == 4
    sk = info["skeleton"]
    assert len(sk["joint_names"]) == 22 and sk["parents"][:4] == [-1, 0, 0, 0] and len(sk["rest_offsets"]) == 22
    assert sk["bvh_hierarchy"].startswith("HIERARCHY") and len(sk["bvh_joint_order"]) == 24
    assert info["limits"]["max_streams"] == MAX_STREAMS
    assert "a person walks forward" in info["example_prompts"] and len(info["example_prompts"]) >= 10
    assert info["close_codes"]["1013"].startswith("server full")
    status, body, _ = http_get(server.http + "/health")
    h = json.loads(body)
    assert status == 200 and h["status"] == "ok" and h["max_streams"] == MAX_STREAMS
    status, body, _ = http_get(server.http + "/")
    assert status == 200 and b"three.module.js" in body
    assert http_get(server.http + "/static/vendor/three/LICENSE")[0] == 200


def test_generate_npy_bvh_json(server, tmp_path):
    import bvh as bvh_parser  # an independent BVH parser

    st, body, hdr = http_post(server.http + "/v1/generate",
                              json.dumps({"text": "a person walks forward", "seconds": 2, "format": "npy",
                                          "seed": 0}).encode())
    assert st == 200, body
    feats = np.load(io.BytesIO(body), allow_pickle=False)
    assert feats.shape == (60, 272) and np.isfinite(feats).all()
    st, body, _ = http_post(server.http + "/v1/generate",
                            json.dumps({"text": "a person walks forward", "seconds": 2, "format": "bvh",
                                        "seed": 0}).encode())
    assert st == 200
    mocap = bvh_parser.Bvh(body.decode())
    assert mocap.nframes == 60 and len(mocap.get_joints_names()) == 24
    st, body, _ = http_post(server.http + "/v1/generate",
                            json.dumps({"text": "a person walks forward", "seconds": 2, "seed": 0}).encode())
    j = json.loads(body)
    assert st == 200 and j["frames"] == 60 and np.array(j["joints"]).shape == (60, 22, 3)
    for bad in ({"text": ""}, {"text": "walk", "seconds": 0}, {"text": "walk", "seconds": 1e9},
                {"text": "walk", "format": "mp4"}, {"text": "walk", "seed": -1}, {"txt": "walk"}, [1]):
        st, body, _ = http_post(server.http + "/v1/generate", json.dumps(bad).encode())
        assert st == 400, (bad, body)
    assert http_post(server.http + "/v1/generate", b"{not json")[0] == 400


def test_generate_busy_503(server):
    async def go():
        body = json.dumps({"text": "a person runs forward", "seconds": 25, "format": "json"}).encode()
        return await asyncio.gather(*[asyncio.to_thread(http_post, server.http + "/v1/generate", body)
                                      for _ in range(2)])

    statuses = sorted(r[0] for r in run(go()))
    assert statuses == [200, 503]


# ---------------------------------------------------------------------------------- token, origin, idle
def test_token_required(token_server):
    s = token_server

    async def go():
        out = []
        for url, headers in ((s.ws, {}), (s.ws + "?token=wrong-token-xxxx", {}),
                             (s.ws, {"Authorization": "Bearer nope-nope-nope"})):
            async with websockets.connect(url, additional_headers=headers) as ws:
                out.append(await close_of(ws))
        for url, headers in ((s.ws + "?token=" + TOKEN, {}), (s.ws, {"Authorization": f"Bearer {TOKEN}"})):
            async with websockets.connect(url, additional_headers=headers) as ws:
                out.append((await recv_json(ws))["type"])
        return out

    out = run(go())
    assert all(code == CLOSE_POLICY and "token" in reason for code, reason in out[:3]), out
    assert out[3:] == ["hello", "hello"]
    assert http_get(s.http + "/v1/info")[0] == 401
    assert http_get(s.http + "/v1/info", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert http_post(s.http + "/v1/generate", b'{"text": "walk"}')[0] == 401
    assert http_get(s.http + "/health")[0] == 200


def test_origin_check(token_server):
    s = token_server
    url = s.ws + "?token=" + TOKEN

    async def go():
        out = []
        for origin in ("https://evil.example", f"http://127.0.0.1:{s.port}", "https://app.example"):
            async with websockets.connect(url, origin=origin) as ws:
                try:
                    m = await recv_json(ws)
                    out.append(m["type"])
                except websockets.ConnectionClosed as e:
                    out.append((e.rcvd.code, e.rcvd.reason))
        return out

    out = run(go())
    assert out[0][0] == CLOSE_POLICY and "Origin" in out[0][1]
    assert out[1:] == ["hello", "hello"]


def test_loopback_only_without_token(server):
    """Without a token, a Host header naming another machine (DNS rebinding) is refused."""
    assert http_get(server.http + "/v1/info", {"Host": "evil.example:80"})[0] == 403

    async def go():
        # TCP to 127.0.0.1, but the URI (and so the Host header) names another machine
        async with websockets.connect(f"ws://evil.example:{server.port}/v1/stream", host="127.0.0.1",
                                      port=server.port) as ws:
            return await close_of(ws)

    code, reason = run(go())
    assert code == CLOSE_POLICY and "Host" in reason


def test_idle_timeout(token_server):
    async def go():
        async with websockets.connect(token_server.ws + "?token=" + TOKEN) as ws:
            await recv_json(ws)
            t = time.monotonic()
            code, reason = await close_of(ws)
            return code, reason, time.monotonic() - t

    code, reason, waited = run(go())
    assert code == CLOSE_NORMAL and "idle" in reason and waited >= 1.0


def test_bad_query_parameter(server):
    async def go():
        out = []
        for q in ("?seed=abc", "?features=maybe", "?colour=red"):
            async with websockets.connect(server.ws + q) as ws:
                out.append(await close_of(ws))
        return out

    for code, reason in run(go()):
        assert code == CLOSE_POLICY and reason


def test_slow_client_is_dropped_with_a_reason():
    """The bound on what a client that does not read can make the server hold: a Connection whose socket
    never drains is dropped (1008, reason) once its queue holds max_backlog messages."""
    from motionstreamer.serve.service import Connection, ServeConfig, Service

    service = Service(ServeConfig(limits=ServeLimits(max_backlog=4)))

    async def go():
        conn = Connection(ws=None, service=service)
        for i in range(4):
            conn.post(f"message {i}")
        assert conn.close_with is None and conn.queue.qsize() == 4
        conn.post("one too many")
        return conn

    conn = run(go())
    assert conn.done.is_set() and conn.close_with.code == CLOSE_POLICY and "too slow" in conn.close_with.reason


@pytest.fixture(scope="module")
def goal_server():
    """A server on the embedded model (goals steer any model: runtime/steering.py); the goal messages,
    their checks and the reached test do not depend on how well it steers."""
    limits = ServeLimits(max_streams=MAX_STREAMS, max_message_bytes=2048, max_generate_jobs=1,
                         messages_per_second=5.0, message_burst=8, max_prompt_chars=200)
    with ServerThread(create_app(sampling_steps=4, limits=limits)) as s:
        yield s


def test_goal_messages(goal_server):
    """goal / clear_goal: acknowledged; bad values (NaN, strings,
    booleans, missing x, seconds out of range, unknown fields, one bad field among good ones) are a
    "bad_goal" error naming the field, and the stream keeps running; a goal at the character's feet
    is reached at once: goal_reached, then the stream stops there (the action ends at its goal)."""
    bad = ['{"type": "goal", "x": NaN, "z": 1}', '{"type": "goal", "x": 1, "z": Infinity}',
           '{"type": "goal", "x": "1", "z": 2}', '{"type": "goal", "x": true, "z": 2}', '{"type": "goal", "z": 2}',
           '{"type": "goal", "x": 1, "z": 2, "seconds": 0}', '{"type": "goal", "x": 1, "z": 2, "heading": -Infinity}',
           '{"type": "goal", "x": 1, "z": 2, "seconds": 3, "heading": 0.5, "speed": 1}']
    named = ["x", "z", "x", "x", "x", "seconds", "heading", "speed"]

    async def go():
        async with websockets.connect(goal_server.ws + "?seed=4") as ws:
            await recv_json(ws)
            await ws.send(json.dumps({"type": "prompt", "text": "a person waves with the right hand"}))
            got = await frames(ws, 2)
            errors = []
            for i, b in enumerate(bad):
                if i and i % 4 == 0:
                    await asyncio.sleep(1.2)                   # stay under the rate limit
                await ws.send(b)
                errors.append(await recv_until(ws, lambda m: m["type"] == "error"))
            await asyncio.sleep(1.2)
            await ws.send(json.dumps({"type": "goal", "x": 30.0, "z": 40.0, "seconds": 20}))
            ack = await recv_until(ws, lambda m: m["type"] == "goal_ack")
            await ws.send(json.dumps({"type": "clear_goal"}))
            cleared = await recv_until(ws, lambda m: m["type"] == "goal_ack")
            pelvis = decode_array(got[-1]["joints"], (4, 22, 3))[-1, 0]
            more = await frames(ws, 2)
            pelvis = decode_array(more[-1]["joints"], (4, 22, 3))[-1, 0]
            await ws.send(json.dumps({"type": "goal", "x": float(pelvis[0]), "z": float(pelvis[2])}))
            seen = []
            await recv_until(ws, lambda m: m["type"] in ("frames", "events") and
                             any(e["kind"] == "finished" for e in m["events"]), keep=seen)
            return errors, ack, cleared, seen

    errors, ack, cleared, seen = run(go())
    assert [e["code"] for e in errors] == ["bad_message" if n == "speed" else "bad_goal" for n in named], errors
    for e, n in zip(errors, named):
        assert n in e["message"], (n, e)
    assert ack["goal"] == {"x": 30.0, "z": 40.0, "seconds": 20.0} and "goal" not in cleared
    kinds = [e["kind"] for m in seen if m["type"] in ("frames", "events") for e in m["events"]]
    assert "goal_reached" in kinds and kinds[-1] == "finished", kinds
