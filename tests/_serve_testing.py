"""Shared by the serve tests: a real uvicorn server on 127.0.0.1 and a random port, in a thread of the
test process (the app is `create_app(...)`, as a user would mount it), and small WebSocket helpers."""
from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import urllib.request

import torch


class ServerThread:
    def __init__(self, app, ws_max_size: int = 65536):
        import uvicorn

        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    ws_max_size=ws_max_size, lifespan="on"))
        self.port = None
        self._threads = torch.get_num_threads()

    def __enter__(self) -> "ServerThread":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 180
        while not self.server.started:
            if not self.thread.is_alive() or time.time() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        torch.set_num_threads(self._threads)      # the service sets 1 thread for the process

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/stream"

    @property
    def service(self):
        return self.app.state.service


def http_get(url: str, headers: dict | None = None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def http_post(url: str, body: bytes, headers: dict | None = None):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})},
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


async def recv_json(ws, timeout: float = 30.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_until(ws, pred, timeout: float = 60.0, keep=None) -> dict:
    """Messages until pred(msg) is true (returns that message); keep collects every message seen."""
    deadline = time.monotonic() + timeout
    while True:
        m = await recv_json(ws, max(0.1, deadline - time.monotonic()))
        if keep is not None:
            keep.append(m)
        if pred(m):
            return m


async def frames(ws, n: int, timeout: float = 60.0, keep=None) -> list[dict]:
    out = []
    while len(out) < n:
        m = await recv_until(ws, lambda m: m["type"] == "frames", timeout, keep)
        out.append(m)
    return out


def run(coro):
    return asyncio.run(coro)


async def close_of(ws, timeout=30.0):
    """Read until the server closes; returns (code, reason), (None, "") when no close frame came."""
    import websockets

    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except websockets.ConnectionClosed as e:
        return (e.rcvd.code, e.rcvd.reason) if e.rcvd else (None, "")


class FakeClock:
    """The scheduler's clock, moved by hand."""

    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self):
        return self.t


@contextlib.contextmanager
def single_threaded_models():
    """The embedded model and text encoder with one torch thread, as the service runs (small per-latent
    ops; more threads spin-wait); the thread count is restored afterwards."""
    from motionstreamer.runtime.loading import load_models

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield load_models(None, device="cpu")[:2]
    finally:
        torch.set_num_threads(threads)
