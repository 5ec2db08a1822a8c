"""What one instance of the service owns: its config, the models and the engine (through the scheduler),
the access policy, and the WebSocket connections, one stream each."""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import os
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np
import torch

from motionstreamer import FPS, FRAMES_PER_LATENT
from motionstreamer.checkpoints import BundleConfig, read_bundle_config
from motionstreamer.data.synth import ACTIONS, sample_params, verb_phrases
from motionstreamer.io.bvh import JOINT_ORDER, hierarchy_text
from motionstreamer.representation.skeleton import (
    JOINT_NAMES,
    LEFT_JOINTS,
    NUM_JOINTS,
    PARENTS,
    RIGHT_JOINTS,
    SMPL_OFFSETS_24,
)
from motionstreamer.runtime.engine import GenerationConfig, StreamingEngine, resolve_config
from motionstreamer.runtime.loading import default_model_dir, load_models, load_onnx_models
from motionstreamer.runtime.ort_backend import export_bundle_config
from motionstreamer.serve.protocol import (
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_RESTART,
    CLOSE_TOO_BIG,
    ENCODING,
    PROTOCOL_VERSION,
    ClearGoalMessage,
    Close,
    CloseMessage,
    GoalMessage,
    GoalState,
    Hello,
    PingMessage,
    Pong,
    PromptMessage,
    ProtocolError,
    ServeLimits,
    StreamOptions,
    error,
    parse_client_message,
)
from motionstreamer.serve.scheduler import StreamScheduler

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
# sampling steps of the teacher head unless told (docs/serve.md: why 10; the original's 50 is --sampling-steps 50)
SERVICE_TEACHER_STEPS = 10


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class ServeConfig:
    checkpoint: str | None = None         # model bundle directory; None = the embedded default model
    onnx: str | None = None               # an export-onnx folder instead: the model calls in onnxruntime (CPU)
    device: str = "cpu"
    dtype: str | None = None
    # the sampler (GenerationConfig's names); sampling_steps None: SERVICE_TEACHER_STEPS for the teacher,
    # a student's default count; head None: the bundle's choice
    sampling_steps: int | None = None
    head: str | None = None
    cfg_scale: float = GenerationConfig.cfg_scale
    on_action_end: str = "continue"       # an action that ends with nothing queued: repeat it, or "stop"
    lookahead: int = 2                    # latents generated ahead of each stream's playback clock
    token: str | None = None              # required on /v1/* when set (Authorization: Bearer, or ?token=)
    allowed_origins: tuple = ()           # browser Origins allowed besides the page's own ("*": any)
    limits: ServeLimits = field(default_factory=ServeLimits)
    threads: int | None = None            # torch CPU threads (None: 1 on CPU)

    # what a user may still pass under the names before the one sampler vocabulary (create_app, Ray args)
    LEGACY_KEYS = {"steps": "sampling_steps", "on_end": "on_action_end"}

    def validate(self) -> None:
        self.limits.validate()
        steps = self.sampling_steps
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 1000):
            raise ValueError(f"sampling_steps must be an integer in [1, 1000], got {steps!r}")
        if isinstance(self.lookahead, bool) or not isinstance(self.lookahead, int) or not 1 <= self.lookahead <= 32:
            raise ValueError(f"lookahead must be an integer in [1, 32] latents, got {self.lookahead!r}")
        if self.onnx is not None and (self.checkpoint is not None or self.dtype is not None or self.device != "cpu"):
            raise ValueError("onnx takes the models from the export and runs them on the CPU: leave out checkpoint, "
                             "dtype and device")
        if self.token is not None and len(self.token) < 8:
            raise ValueError("token must be at least 8 characters")
        self.generation_config().validate()     # the head, the guidance scale and the sampler, before the model loads

    def bundle_config(self) -> BundleConfig:
        """The served model's config (the bundle's, or the export's manifest's); read without loading it."""
        if self.onnx is not None:
            return export_bundle_config(self.onnx)
        return read_bundle_config(self.checkpoint or default_model_dir())

    def generation_config(self, bundle_config: BundleConfig | None = None) -> GenerationConfig:
        """The engine's settings; with the bundle's config they are resolved against it (its default head,
        a student's step counts: ValueError naming them)."""
        head = self.head or (bundle_config.sampler.head if bundle_config is not None else None) or "teacher"
        steps = self.sampling_steps
        if steps is None and head == "teacher":
            steps = SERVICE_TEACHER_STEPS
        gen = GenerationConfig(sampling_steps=steps, head=self.head, cfg_scale=self.cfg_scale,
                               on_action_end=self.on_action_end, max_latents=10**9)
        return gen if bundle_config is None else resolve_config(gen, bundle_config)


def example_prompts(bundle_config: BundleConfig, embedded: bool) -> list[str]:
    """Prompts the loaded model knows: the bundle's own list, else the synthetic action vocabulary
    for the embedded model (data/synth.py, one canonical caption per action), else common
    HumanML3D-style prompts."""
    if bundle_config.example_prompts:
        return [str(p) for p in bundle_config.example_prompts][:32]
    if embedded or "synthetic" in bundle_config.description:
        rng = np.random.default_rng(0)
        out = []
        for action in ACTIONS:
            p = sample_params(action, rng, 4.0)
            p.update(speed=0.5, curve=0.0, jumps=1, reps=1, jump_forward=0.0)   # plain wording
            out.append(f"a person {verb_phrases(action, p, rng)[0]}")
        return out
    return ["a person walks forward", "a person jogs in a circle", "a person waves with the right hand",
            "a person jumps up", "a person turns around", "a person sits down", "a person kicks with the left leg",
            "a person walks backwards", "a person raises both arms", "a person does a squat"]


class TokenBucket:
    def __init__(self, rate: float, burst: int):
        self.rate, self.burst, self.tokens, self.t = rate, burst, float(burst), time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Service:
    """What one app instance owns: the models, the engine, the scheduler thread, the connections."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.limits = config.limits
        self.scheduler: StreamScheduler | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.connections: set[Connection] = set()
        self.server_id = f"{socket.gethostname()}-{os.getpid()}"
        self.started = time.time()
        self.info: dict = {}

    # -------------------------------------------------------------- lifecycle
    def load(self) -> None:
        c = self.config
        if c.threads is not None or c.device == "cpu":
            torch.set_num_threads(c.threads or 1)
        capacity = self.limits.max_streams + self.limits.max_generate_jobs
        if c.onnx is not None:   # the same engine, its model calls in the export's onnxruntime sessions
            gen = c.generation_config(c.bundle_config())
            bundle, text_encoder, desc, backend = load_onnx_models(c.onnx, gen, capacity=capacity,
                                                                   threads=c.threads or 1)
        else:
            bundle, text_encoder, desc = load_models(c.checkpoint, c.device, c.dtype)
            gen, backend = c.generation_config(bundle.config), None
        engine = StreamingEngine(bundle, text_encoder, capacity=capacity, config=gen, device=c.device, backend=backend)
        text_encoder.encode([""])      # warm the encoder and the empty-prompt cache
        self.scheduler = StreamScheduler(engine, self._deliver, self.limits.max_streams,
                                         self.limits.max_generate_jobs, lookahead=c.lookahead,
                                         max_queued=self.limits.max_queued_prompts)
        self.info = {
            "protocol": PROTOCOL_VERSION, "encoding": ENCODING,
            "model": desc, "checkpoint": c.onnx or c.checkpoint or "embedded",
            "runtime": "onnxruntime" if c.onnx is not None else "torch",
            "fps": FPS, "frames_per_latent": FRAMES_PER_LATENT,
            "sampling_steps": engine.config.sampling_steps, "head": engine.config.head,
            "cfg_scale": engine.config.cfg_scale, "lookahead": c.lookahead,
            "device": str(engine.device),
            "skeleton": {"joint_names": list(JOINT_NAMES[:NUM_JOINTS]), "parents": list(PARENTS),
                         "rest_offsets": SMPL_OFFSETS_24[:NUM_JOINTS].round(6).tolist(),
                         "left_joints": list(LEFT_JOINTS), "right_joints": list(RIGHT_JOINTS),
                         "bvh_hierarchy": hierarchy_text(), "bvh_joint_order": list(JOINT_ORDER),
                         "bvh_joint_names": list(JOINT_NAMES)},
            "limits": self.limits.as_dict(),
            "example_prompts": example_prompts(bundle.config, c.checkpoint is None and c.onnx is None),
            # goals beside text (the "goal" message; docs/goals.md): steered for any model, seen by a
            # goal-trained one (goal_model)
            "goals": engine.goals_supported, "goal_model": engine.goal_model,
            "goal_steering": engine.config.goal_steering, "goal_tolerance": engine.config.goal_tolerance,
        }

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        if self.scheduler is None:      # `motionstreamer serve` loads before binding (cmd_serve)
            await asyncio.to_thread(self.load)
        self.scheduler.start()

    async def shutdown(self) -> None:
        for conn in list(self.connections):
            conn.post(Close(CLOSE_RESTART, "server shutting down; reconnect"))
        if self.scheduler is not None:
            await asyncio.to_thread(self.scheduler.stop)

    def _deliver(self, batch: list) -> None:
        """Engine thread -> event loop, once per step."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._dispatch, batch)

    @staticmethod
    def _dispatch(batch: list) -> None:
        for conn, msg in batch:
            conn.post(msg)

    # -------------------------------------------------------------- access
    def token_ok(self, headers, query) -> bool:
        token = self.config.token
        if not token:
            return True
        auth = headers.get("authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else query.get("token", "")
        return hmac.compare_digest(given.encode(), token.encode())

    def host_ok(self, headers) -> bool:
        """Without a token the service is loopback-only: a Host naming anything else is a DNS-rebinding
        page talking to us, refused."""
        if self.config.token:
            return True
        host = urlsplit("//" + headers.get("host", "")).hostname or ""
        return is_loopback(host)

    def origin_ok(self, headers) -> bool:
        origin = headers.get("origin")
        if origin is None:                          # not a browser: the token (if any) decides
            return True
        allowed = self.config.allowed_origins
        if "*" in allowed or origin in allowed:
            return True
        return urlsplit(origin).netloc == headers.get("host", "")   # the page's own origin

    def refusal(self, headers, query, websocket: bool) -> str | None:
        if not self.host_ok(headers):
            return "Host not allowed: this server answers on loopback only (start it with --token to serve others)"
        if not self.token_ok(headers, query):
            return "missing or wrong token (Authorization: Bearer TOKEN, or ?token=TOKEN)"
        if websocket and not self.origin_ok(headers):
            return f"Origin {headers.get('origin')[:60]!r} not allowed"
        return None


async def close_quietly(ws, close: Close, timeout: float = 2.0) -> None:
    """Close with a code and reason; a client that already left (or stopped reading) is let go."""
    try:
        await asyncio.wait_for(ws.close(close.code, close.reason), timeout)
    except Exception:
        pass


class Connection:
    """One WebSocket = one stream. A sender task drains a bounded queue; a receiver task reads client
    messages and hands each to its handler (one per ClientMessage type); the engine thread posts into
    the queue through the event loop."""

    def __init__(self, ws, service: Service):
        self.ws, self.service = ws, service
        self.limits = service.limits
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=self.limits.max_backlog)
        self.close_with: Close | None = None
        self.done = asyncio.Event()
        self.client_gone = False
        self.key: int | None = None
        self.handlers = {PromptMessage: self._on_prompt, GoalMessage: self._on_goal, ClearGoalMessage: self._on_goal,
                         PingMessage: self._on_ping, CloseMessage: self._on_close}

    def post(self, item) -> None:
        """Event-loop thread. A full queue means the client does not read fast enough: drop it."""
        if self.done.is_set():
            return
        if isinstance(item, Close):
            self._abort(item)
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self._abort(Close(CLOSE_POLICY, f"client too slow: more than {self.limits.max_backlog} messages "
                                            "waiting; dropped"))

    def _abort(self, close: Close) -> None:
        if self.close_with is None:
            self.close_with = close
        self.done.set()

    async def run(self, options: StreamOptions) -> None:
        sched = self.service.scheduler
        self.key = sched.open(self, options)         # ServerFull propagates to the caller
        self.service.connections.add(self)
        try:
            try:
                await self.ws.send_text(Hello(
                    stream=self.key, seed=options.seed, fps=FPS, frames_per_latent=FRAMES_PER_LATENT,
                    lookahead=sched.lookahead, features=options.features, rotations=options.rotations,
                    server=self.service.server_id, limits=self.limits.as_dict()).to_json())
            except Exception:                        # the client left before its hello
                return
            tasks = [asyncio.create_task(self._sender()), asyncio.create_task(self._receiver()),
                     asyncio.create_task(self.done.wait())]
            _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for t in tasks:
                if t.done() and not t.cancelled() and t.exception() is not None:
                    self.client_gone = True           # a send or receive failed: the socket is gone
            if self.close_with is not None and not self.client_gone:
                await close_quietly(self.ws, self.close_with)
        finally:
            self.done.set()
            self.service.connections.discard(self)
            sched.close(self.key)

    async def _sender(self) -> None:
        while True:
            item = await self.queue.get()
            await self.ws.send_text(item)

    async def _receiver(self) -> None:
        limits = self.limits
        bucket = TokenBucket(limits.messages_per_second, limits.message_burst)
        while not self.done.is_set():
            try:
                msg = await asyncio.wait_for(self.ws.receive(), timeout=limits.idle_timeout_s)
            except asyncio.TimeoutError:
                self._abort(Close(CLOSE_NORMAL, f"idle timeout: no message for {limits.idle_timeout_s:g} s"))
                return
            if msg["type"] == "websocket.disconnect":
                self.client_gone = True
                return
            data = msg.get("text")
            size = len(data.encode("utf-8", "surrogatepass")) if data is not None else len(msg.get("bytes") or b"")
            if size > limits.max_message_bytes:
                self._abort(Close(CLOSE_TOO_BIG, f"message too big: {size} bytes, at most {limits.max_message_bytes}"))
                return
            if not bucket.take():
                self.post(error("rate_limited", f"more than {limits.messages_per_second:g} messages per second; "
                                                "message ignored"))
                continue
            if data is None:
                self.post(error("bad_message", "binary messages are not supported; send JSON text"))
                continue
            try:
                m = parse_client_message(data, limits)
            except ProtocolError as e:
                self.post(error(e.code, str(e)))
                continue
            self.handlers[type(m)](m)

    def _on_prompt(self, m: PromptMessage) -> None:
        self.service.scheduler.push(self.key, m.text, m.seconds, m.after_current)

    def _on_goal(self, m: GoalMessage | ClearGoalMessage) -> None:
        goal = GoalState(x=m.x, z=m.z, heading=m.heading, seconds=m.seconds) if isinstance(m, GoalMessage) else None
        self.service.scheduler.set_goal(self.key, goal)

    def _on_ping(self, m: PingMessage) -> None:
        self.post(Pong(t=round(time.time(), 4)).to_json())

    def _on_close(self, m: CloseMessage) -> None:
        self._abort(Close(CLOSE_NORMAL, "closed by client"))
