"""The live service as an ASGI app: `create_app(...)` -> FastAPI, around ONE StreamingEngine.

Routes (on `router`, a module-level APIRouter; every /v1 route goes through the one `access` check):
  GET  /                 the browser app (static/, three.js vendored: works offline)
  GET  /health           liveness and load (no token needed)
  GET  /v1/info          model, fps, skeleton (names, parents, sides, BVH hierarchy), limits, example prompts
  POST /v1/generate      one-shot: {"text", "seconds", "format": npy|bvh|json, "seed"} -> file
  WS   /v1/stream        one stream per connection (protocol.py; docs/serve.md "Streaming protocol")
  GET  /v1/stream        (plain HTTP) 503 when full, else 426: a capacity probe for load balancers

Run it with `motionstreamer serve` (uvicorn), mount it in another ASGI app, or deploy it on Ray Serve
(serve/ray_app.py). Models load at startup (lifespan), so creating the app is cheap.
"""
from __future__ import annotations

import asyncio
import dataclasses
import io
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request, WebSocket
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.requests import HTTPConnection

from motionstreamer import FPS
from motionstreamer.config import current_keys
from motionstreamer.io.bvh import bvh_text
from motionstreamer.representation.features import recover_rotations
from motionstreamer.serve.protocol import (
    CLOSE_CODES,
    CLOSE_FULL,
    CLOSE_POLICY,
    PROTOCOL_VERSION,
    Close,
    ProtocolError,
    parse_generate_request,
    parse_stream_options,
)
from motionstreamer.serve.scheduler import ServerFull
from motionstreamer.serve.service import SERVICE_TEACHER_STEPS, Connection, ServeConfig, Service, close_quietly

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_GENERATE_BODY = 16 * 1024
__all__ = ["SERVICE_TEACHER_STEPS", "ServeConfig", "create_app", "router"]


class Refused(Exception):
    """The access check said no: HTTP `status` with {"error": reason}; a WebSocket closes 1008 with it."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def access(conn: HTTPConnection) -> Service:
    """The one access check of /v1 (HTTP and WebSocket): the Host (loopback only without a token), the
    token, and a browser's Origin on the WebSocket. Returns the app's Service."""
    service = conn.app.state.service
    why = service.refusal(conn.headers, conn.query_params, websocket=conn.scope["type"] == "websocket")
    if why is not None:
        raise Refused(403 if why.startswith("Host") else 401, why)
    return service


async def refused(conn: HTTPConnection, exc: Refused):
    if isinstance(conn, WebSocket):
        await conn.accept()     # accepted first, so the client reads the reason in the close frame
        await close_quietly(conn, Close(CLOSE_POLICY, exc.reason))
        return None
    return JSONResponse({"error": exc.reason}, status_code=exc.status)


Allowed = Annotated[Service, Depends(access)]
router = APIRouter()


@router.get("/", include_in_schema=False)
async def index():
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/health")
async def health(request: Request):
    service = request.app.state.service
    s = service.scheduler
    alive = s is not None and s.alive
    body = {"status": "ok" if alive else "engine not running", "server": service.server_id,
            "streams": s.n_streams if s else 0, "max_streams": service.limits.max_streams,
            "generate_jobs": s.n_jobs if s else 0, "uptime_s": round(time.time() - service.started, 1),
            **({"engine": {k: round(v, 2) if isinstance(v, float) else v for k, v in s.stats.items()}} if s else {})}
    return JSONResponse(body, status_code=200 if alive else 503)


@router.get("/v1/info")
async def info(service: Allowed):
    return {**service.info, "server": service.server_id, "streams": service.scheduler.n_streams,
            "close_codes": {str(k): v for k, v in CLOSE_CODES.items()}}


@router.get("/v1/stream")
async def stream_probe(service: Allowed):
    s, limit = service.scheduler, service.limits.max_streams
    if s.n_streams >= limit:
        return JSONResponse({"error": f"server full: {s.n_streams} of {limit} streams"},
                            status_code=503, headers={"Retry-After": "5"})
    return JSONResponse({"error": "this is a WebSocket endpoint (ws://.../v1/stream)",
                         "streams": s.n_streams, "max_streams": limit}, status_code=426)


@router.post("/v1/generate")
async def generate(request: Request, service: Allowed):
    body = b""
    async for part in request.stream():
        body += part
        if len(body) > MAX_GENERATE_BODY:
            return JSONResponse({"error": f"request body over {MAX_GENERATE_BODY} bytes"}, status_code=413)
    try:
        req = parse_generate_request(body, service.limits)
    except ProtocolError as e:
        return JSONResponse({"error": str(e)}, status_code=400)
    try:
        fut = service.scheduler.generate(req.text, req.seconds, req.seed)
    except ServerFull as e:
        return JSONResponse({"error": str(e)}, status_code=503, headers={"Retry-After": "2"})
    try:
        features, joints = await asyncio.wrap_future(fut)
    except Exception as e:
        return JSONResponse({"error": f"generation failed: {e}"}, status_code=500)
    return await asyncio.to_thread(_generate_response, req.format, req.text, features, joints)


def _generate_response(fmt: str, text: str, features: np.ndarray, joints: np.ndarray) -> Response:
    if fmt == "npy":
        buf = io.BytesIO()
        np.save(buf, features.astype(np.float32), allow_pickle=False)
        return Response(buf.getvalue(), media_type="application/octet-stream",
                        headers={"Content-Disposition": 'attachment; filename="motion.npy"'})
    if fmt == "bvh":
        rotations, translation = recover_rotations(features.astype(np.float64))
        return Response(bvh_text(rotations, translation, fps=FPS), media_type="text/plain",
                        headers={"Content-Disposition": 'attachment; filename="motion.bvh"'})
    return JSONResponse({"prompt": text, "fps": FPS, "frames": int(len(joints)),
                         "joints": np.round(joints, 5).tolist()})


@router.websocket("/v1/stream")
async def stream(ws: WebSocket, service: Allowed):
    await ws.accept()
    try:
        options = parse_stream_options(ws.query_params)
    except ProtocolError as e:
        await close_quietly(ws, Close(CLOSE_POLICY, str(e)))
        return
    try:
        await Connection(ws, service).run(options)
    except ServerFull as e:
        await close_quietly(ws, Close(CLOSE_FULL, str(e)))


def create_app(config: ServeConfig | None = None, **overrides) -> FastAPI:
    """The ASGI app. create_app(sampling_steps=10, token="...", limits=ServeLimits(max_streams=64), ...)."""
    overrides = current_keys(overrides, ServeConfig.LEGACY_KEYS, "create_app", note=True)
    config = dataclasses.replace(config, **overrides) if config is not None else ServeConfig(**overrides)
    config.validate()
    service = Service(config)

    @asynccontextmanager
    async def lifespan(app):
        await service.start()
        yield
        await service.shutdown()

    app = FastAPI(title="motionstreamer", version=str(PROTOCOL_VERSION), lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url="/v1/openapi.json")
    app.state.service = service
    app.add_middleware(GZipMiddleware, minimum_size=2048)
    app.add_exception_handler(Refused, refused)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(router)
    return app
