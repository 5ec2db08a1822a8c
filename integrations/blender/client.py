"""A client of `motionstreamer serve` with the standard library only (Blender's Python has no
`websockets` or `requests`): POST /v1/generate over urllib, and /v1/stream over a minimal RFC 6455
WebSocket client (text frames, masking, fragmentation, ping/pong, close), run in a background thread
whose frames the add-on applies on Blender's main thread."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import socket
import ssl
import struct
import threading
import urllib.error
import urllib.parse
import urllib.request

import numpy as np

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_MESSAGE = 1 << 20          # a frames message is ~4 KB; anything near this is not the protocol


class ServerError(Exception):
    """A one-line, user-facing reason (server down, token refused, bad prompt, ...)."""


def _check_url(url: str) -> urllib.parse.SplitResult:
    u = urllib.parse.urlsplit(url.strip())
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ServerError(f"server URL must look like http://127.0.0.1:8000, got {url!r}")
    return u


def _headers(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _http_reason(e: urllib.error.HTTPError) -> str:
    try:
        detail = json.loads(e.read().decode("utf-8", "replace")).get("error", "")
    except Exception:
        detail = ""
    if e.code == 401:
        return "the server refused the token (set the token the server was started with)"
    if e.code == 403:
        return f"the server refused this client ({detail or 'forbidden'})"
    if e.code == 503:
        return f"the server is busy ({detail or 'try again'})"
    return f"the server answered {e.code}: {detail or e.reason}"


def generate(url: str, token: str, text: str, seconds: float, seed: int, timeout: float = 300.0) -> np.ndarray:
    """POST /v1/generate {"format": "json"} -> joints (T, 22, 3), metres, Y up."""
    u = _check_url(url)
    body = json.dumps({"text": text, "seconds": float(seconds), "seed": int(seed), "format": "json"}).encode()
    req = urllib.request.Request(urllib.parse.urlunsplit((u.scheme, u.netloc, "/v1/generate", "", "")), data=body,
                                 headers={"Content-Type": "application/json", **_headers(token)}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            reply = json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise ServerError(_http_reason(e)) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ServerError(f"cannot reach the motionstreamer server at {url} ({reason}); is `motionstreamer serve` "
                          "running?") from None
    except ValueError:
        raise ServerError("the server's answer is not JSON; is that a motionstreamer server?") from None
    joints = np.asarray(reply.get("joints", []), dtype=np.float64)
    if joints.ndim != 3 or joints.shape[1:] != (22, 3) or not len(joints) or not np.all(np.isfinite(joints)):
        raise ServerError(f"the server sent no usable joints (shape {joints.shape})")
    return joints


class WebSocket:
    """A blocking RFC 6455 client connection (text messages only)."""

    def __init__(self, url: str, headers: dict | None = None, timeout: float = 10.0):
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("ws", "wss") or not u.hostname:
            raise ServerError(f"bad WebSocket URL {url!r}")
        port = u.port or (443 if u.scheme == "wss" else 80)
        try:
            sock = socket.create_connection((u.hostname, port), timeout=timeout)
            if u.scheme == "wss":
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=u.hostname)
        except OSError as e:
            raise ServerError(f"cannot reach the motionstreamer server at {u.hostname}:{port} ({e})") from None
        self.sock = sock
        self._buf = b""
        key = base64.b64encode(os.urandom(16)).decode()
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        lines = [f"GET {path} HTTP/1.1", f"Host: {u.netloc}", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = self._read_until(b"\r\n\r\n", 16384).decode("latin-1")
        status = head.split("\r\n", 1)[0]
        fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in head.split("\r\n")[1:])}
        if " 101 " not in status + " ":
            code = status.split(" ")[1] if len(status.split(" ")) > 1 else "?"
            raise ServerError("the server refused the token" if code in ("401", "403")
                              else f"the server did not accept the WebSocket ({status})")
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        if fields.get("sec-websocket-accept") != accept:
            raise ServerError("the server's WebSocket handshake is wrong (Sec-WebSocket-Accept)")
        self.close_code, self.close_reason = None, ""

    def _read_until(self, marker: bytes, limit: int) -> bytes:
        while marker not in self._buf:
            chunk = self.sock.recv(4096)
            if not chunk or len(self._buf) > limit:
                raise ServerError("the server closed the connection during the WebSocket handshake")
            self._buf += chunk
        head, _, self._buf = self._buf.partition(marker)
        return head

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        masked = (np.frombuffer(payload, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)).tobytes()
        self.sock.sendall(head + mask + masked)

    def send(self, text: str) -> None:
        self._send_frame(0x1, text.encode("utf-8"))

    def recv(self) -> str | None:
        """The next text message; None once the server closed (close_code / close_reason set)."""
        parts, opcode = [], None
        while True:
            b0, b1 = self._read(2)
            op, fin, n = b0 & 0x0F, b0 & 0x80, b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            if n > MAX_MESSAGE:
                raise ConnectionError(f"a {n}-byte WebSocket frame: not the motionstreamer protocol")
            mask = self._read(4) if b1 & 0x80 else None
            data = self._read(n)
            if mask:
                data = (np.frombuffer(data, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)).tobytes()
            if op == 0x8:                                    # close: answer it and stop
                self.close_code = struct.unpack(">H", data[:2])[0] if len(data) >= 2 else 1005
                self.close_reason = data[2:].decode("utf-8", "replace")
                try:
                    self._send_frame(0x8, data[:2])
                except OSError:
                    pass
                return None
            if op == 0x9:
                self._send_frame(0xA, data)
                continue
            if op == 0xA:
                continue
            if op in (0x1, 0x2):
                opcode, parts = op, [data]
            elif op == 0x0:
                parts.append(data)
            if fin and opcode is not None:
                return b"".join(parts).decode("utf-8", "replace")

    def close(self, code: int = 1000) -> None:
        try:
            self._send_frame(0x8, struct.pack(">H", code))
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


def _array(s: str, shape) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), "<f4").reshape(shape).astype(np.float64)


class LiveStream:
    """/v1/stream in a background thread: `chunks` receives (joints (4, 22, 3), rotations (4, 22, 4)
    w,x,y,z local, prompt) per latent; `prompt(text)` queues a prompt; `error` holds a one-line reason
    when the stream ended badly."""

    def __init__(self, url: str, token: str, seed: int):
        u = _check_url(url)
        scheme = "wss" if u.scheme == "https" else "ws"
        query = urllib.parse.urlencode({"seed": int(seed), "rotations": 1})
        self.url = urllib.parse.urlunsplit((scheme, u.netloc, "/v1/stream", query, ""))
        self.headers = _headers(token)
        self.chunks: queue.Queue = queue.Queue()
        self.error: str | None = None
        self.hello: dict = {}
        self._outbox: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self.ws = WebSocket(self.url, self.headers)      # connect now: a refused token is reported at once
        first = self.ws.recv()
        if first is None:
            raise ServerError(f"the server closed the stream: {self.ws.close_reason or self.ws.close_code}")
        self.hello = json.loads(first)
        self._reader = threading.Thread(target=self._read_loop, daemon=True, name="motionstreamer-live")
        self._reader.start()

    def prompt(self, text: str, seconds: float | None = None) -> None:
        msg = {"type": "prompt", "text": text}
        if seconds:
            msg["seconds"] = float(seconds)
        self.ws.send(json.dumps(msg))

    def _read_loop(self) -> None:
        try:
            while not self._stop.is_set():
                raw = self.ws.recv()
                if raw is None:
                    if self.ws.close_code not in (1000, 1001, None) and not self._stop.is_set():
                        self.error = f"the server closed the stream ({self.ws.close_code}: {self.ws.close_reason})"
                    return
                m = json.loads(raw)
                if m.get("type") == "frames":
                    self.chunks.put((_array(m["joints"], (-1, 22, 3)), _array(m["rotations"], (-1, 22, 4)),
                                     m.get("prompt", "")))
                elif m.get("type") == "error":
                    self.error = f"the server says: {m.get('message', m)}"
        except (OSError, ConnectionError, ValueError) as e:
            if not self._stop.is_set():
                self.error = f"the stream broke ({e})"

    def close(self) -> None:
        self._stop.set()
        try:
            self.ws.send(json.dumps({"type": "close"}))
        except OSError:
            pass
        self._reader.join(5.0)
        self.ws.close()
